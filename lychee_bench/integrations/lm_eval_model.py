"""lychee-bench as an lm-evaluation-harness model: `lm_eval --model lychee-bench --model_args pretrained=...`.

`LycheeBenchLM` is lm-eval's own `hf` model (HFLM) with one thing replaced: generation. Everything else is HFLM's,
so a task sees exactly what `--model hf` gives it (tokenisation, BOS handling, chat templates, left truncation to
`max_length - max_gen_toks`, batching by length and generation kwargs, stop-string post-processing):

- `generate_until`: each batch HFLM builds is prefilled densely and decoded by lychee-bench's engine
  (harness/engine.py) with the chosen method's decode attention, exactly as `lychee-bench run` decodes. Generation
  stops at the model's end-of-sequence tokens or after `max_gen_toks` new tokens; the `until` strings are applied
  afterwards, where HFLM applies them (the text is cut at the first one), so the returned text is what `hf` returns
  for the same tokens, but a row decodes on past a stop string until EOS or the limit. Greedy unless the request
  samples (`do_sample`, `temperature`, `top_p`, as HF's generate reads them): the engine's sampler draws from the
  temperature-scaled, top-p-filtered distribution with a counter-based seed per row (from `seed` and the prompt),
  and has no top-k (transformers' generate applies its default top_k=50 when sampling; a request that sets top_k
  is refused).
- `loglikelihood` and `loglikelihood_rolling` are DENSE: HFLM's full-attention forward of the transformers model.
  The method is not involved (the methods accelerate decoding only; scoring a given continuation is a prefill).
  `get_model_info()` (lm-eval's results, "config") records this beside the method.

Model arguments: `pretrained` takes a lychee-bench model name (`smollm2-135m`: the embedded model, converted once,
harness/models.py), a model folder or a hub id; `method` a method name or `name[key=value;...]`; every other key
that is an option of the method goes to it (`budget=4096,roles=uniform:11`, as `run`'s `-o`); `rope_scaling`
(`yarn:2`, as `run`'s --rope-scaling), `exercise_chars` (the decode exercise: the input's last N characters are
decoded token by token through the method instead of prefilled; default as `run`: 100 for decode-only methods,
0 for full) and `seed` are lychee-bench's; the rest are HFLM's (`device`, `dtype`, `batch_size`, `max_length`,
`add_bos_token`, ...). A bad argument is refused, with every reason, before the model loads.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lychee_bench.harness import models, provenance
from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import FormattedInput
from lychee_bench.harness.runner import PlanError, build_methods, parse_method_entry
from lychee_bench.harness.sampling import row_seed
from lychee_bench.methods.base import RunShape

MODEL_NAME = "lychee-bench"
OWN_ARGS = ("pretrained", "method", "rope_scaling", "exercise_chars", "seed")
HFLM_ARGS = tuple(p for p in inspect.signature(HFLM.__init__).parameters if p not in ("self", "pretrained", "kwargs"))
# Arguments HFLM takes that change the model away from the one lychee-bench's engine runs, or split it.
REFUSED_HFLM_ARGS = ("backend", "parallelize", "tp_plan", "peft", "delta", "autogptq", "gptqmodel", "gguf_file")
SAMPLING_KWARGS = ("do_sample", "temperature", "top_p", "top_k")
DEFAULT_EXERCISE_CHARS = 100  # as `lychee-bench run --exercise-chars`
DENSE_SCORING = "dense: full-attention forward of the transformers model (HFLM); the method is not used"

log = logging.getLogger(__name__)


class LycheeBenchArgumentError(ValueError):
    """Model arguments lychee-bench cannot run; carries every reason at once."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("lychee-bench model_args:\n" + "\n".join(f"- {reason}" for reason in reasons))


@register_model(MODEL_NAME)
class LycheeBenchLM(HFLM):
    """lm-eval's HFLM, generating through lychee-bench's engine with a decode method; log-likelihoods dense."""

    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "full",
        rope_scaling: str | None = None,
        exercise_chars: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        setup = _check_arguments(pretrained, method, rope_scaling, exercise_chars, seed, kwargs)
        self.lychee_source, self.lychee_method = setup["source"], setup["method"]
        self.lychee_config = setup["config"]
        self.exercise_chars = setup["exercise_chars"]
        self.seed = seed
        self.rope_scaling = rope_scaling
        hflm_args = setup["hflm_args"]
        # The config (with any rope scaling) is the one the model is built with: HFLM passes extra keyword
        # arguments on to from_pretrained.
        super().__init__(pretrained=self.lychee_source.location, config=self.lychee_config, **hflm_args)
        self.lychee_method.prepare(self.model)
        self._engine: Engine | None = None
        self._seen_prompts: Counter[str] = Counter()
        self.decode_modes: Counter[str] = Counter()

    # ---- HFLM hooks ----------------------------------------------------------------------------------------
    def _get_config(self, pretrained: str, **kwargs: Any) -> None:
        """The config lychee-bench resolved (rope scaling applied), not a fresh read of the folder."""
        self._config = self.lychee_config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.model, self.tokenizer)
        return self._engine

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        """What HF's generate returns for HFLM's batch (left-padded `context` [B, W], its `attention_mask`): the
        context followed by each row's new tokens, padded after its end, [B, W + new]. The tokens come from the
        engine with the method; `stop` strings are cut by HFLM afterwards (see the module docstring)."""
        mask = generation_kwargs.pop("attention_mask", None)
        if mask is None:
            mask = torch.ones_like(context)
        settings = generation_settings(generation_kwargs, max_length - context.shape[1], self.model)
        rows = [ids[keep.bool()].tolist() for ids, keep in zip(context, mask, strict=True)]
        inputs = [FormattedInput(ids, exercise_tokens(self.tokenizer, ids, self.exercise_chars)) for ids in rows]
        seeds = []
        for ids in rows:  # a row's seed: the prompt and how often it came before (lm-eval's `repeats` differ)
            key = ",".join(map(str, ids))
            seeds.append(row_seed(self.seed, key, self._seen_prompts[key]))
            self._seen_prompts[key] += 1
        method = self.lychee_method
        generations = self.engine.generate(inputs, settings, [method], row_seeds=seeds)[method.label]
        width = context.shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        longest = max((len(g.token_ids) for g in generations), default=0)
        out = torch.full((len(rows), width + longest), pad, dtype=context.dtype, device=context.device)
        out[:, :width] = context
        for row, generation in enumerate(generations):
            out[row, width : width + len(generation.token_ids)] = torch.tensor(generation.token_ids)
            self.decode_modes[generation.decode_mode if not generation.eager_reason else generation.eager_reason] += 1
        return out

    def get_model_info(self) -> dict[str, Any]:
        """HFLM's fields (the hub revision only for a hub id) and what lychee-bench ran, for lm-eval's results."""
        source = self.lychee_source
        if source.fingerprint.startswith("hub:"):
            info = super().get_model_info()
        else:
            info = {
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype),
                "model_revision": None,
                "model_sha": "",
            }
        info["lychee_bench"] = {
            "model": source.provenance(),
            "rope_scaling": self.rope_scaling,
            "method": self.lychee_method.describe(),
            "generate_until": "lychee-bench engine: dense prefill, then the method's decode attention at every step",
            "decode_modes": dict(self.decode_modes),
            "exercise_chars": self.exercise_chars,
            "seed": self.seed,
            "stop_strings": "applied after generation (cut at the first); decoding stops at EOS or max_gen_toks",
            "loglikelihood": DENSE_SCORING,
            "loglikelihood_rolling": DENSE_SCORING,
            "provenance": provenance.collect(str(self.device)),
        }
        return info


def _check_arguments(
    pretrained: str | None,
    method: str,
    rope_scaling: str | None,
    exercise_chars: int | None,
    seed: int,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Resolves the model arguments (model, config, method, HFLM's share) or raises every reason they cannot run,
    before any weights load."""
    reasons: list[str] = []
    if not isinstance(method, str) or not method.strip():
        raise LycheeBenchArgumentError([f"method={method!r}: give a method name, e.g. method=lychee"])
    try:
        name, _ = parse_method_entry(method)
    except PlanError as error:
        raise LycheeBenchArgumentError([_as_model_arg(r) for r in error.reasons]) from None
    method_fields = _method_fields(name)
    if method_fields is None:
        try:
            build_methods([method], {})
        except PlanError as error:
            raise LycheeBenchArgumentError([_as_model_arg(r) for r in error.reasons]) from None
    method_options = {k: _as_text(v) for k, v in kwargs.items() if k in (method_fields or ())}
    hflm_args = {k: v for k, v in kwargs.items() if k not in method_options}
    unknown = sorted(k for k in hflm_args if k not in HFLM_ARGS)
    if unknown:
        reasons.append(
            f"{', '.join(unknown)}: neither an option of method {name} ({', '.join(method_fields or ()) or 'none'}) "
            f"nor a lychee-bench argument ({', '.join(OWN_ARGS)}) nor an lm-eval hf argument "
            f"({', '.join(a for a in HFLM_ARGS if a not in REFUSED_HFLM_ARGS)})"
        )
    refused = sorted(k for k in hflm_args if k in REFUSED_HFLM_ARGS and hflm_args[k] not in (None, False, "default"))
    if refused:
        reasons.append(
            f"{', '.join(refused)}: lychee-bench decodes one unmodified causal model on one device with its own "
            "engine; use --model hf for these"
        )
    if pretrained is None or not isinstance(pretrained, str) or not pretrained.strip():
        reasons.append(
            f"pretrained={pretrained!r}: give a lychee-bench model name ({', '.join(models.EMBEDDED_MODELS)}), a "
            "model folder or a hub id, e.g. pretrained=smollm2-135m"
        )
    if exercise_chars is not None and (not isinstance(exercise_chars, int) or exercise_chars < 0):
        reasons.append(f"exercise_chars={exercise_chars!r}: give a number of characters >= 0 (0 turns it off)")
    if not isinstance(seed, int) or isinstance(seed, bool):
        reasons.append(f"seed={seed!r}: give an integer")
    device = _check_device(hflm_args.get("device"), reasons)
    hflm_args["device"] = device
    if reasons:
        raise LycheeBenchArgumentError(reasons)

    try:
        source = models.resolve_model(pretrained)
        if models.is_synthetic(source):
            raise models.ModelError(
                f"{pretrained} is a shape with random weights and no tokenizer; lm-eval needs a real model"
            )
        config = models.load_config(source, rope_scaling)
    except models.ModelError as error:
        raise LycheeBenchArgumentError([f"pretrained={pretrained}: {error}"]) from None
    reasons += models.check_architecture(config)
    max_length = hflm_args.get("max_length") or models.context_limit(config)
    reasons += models.check_context(config, int(max_length), source.name)
    try:
        (built,) = build_methods([method], method_options)
    except PlanError as error:
        raise LycheeBenchArgumentError(reasons + [_as_model_arg(r) for r in error.reasons]) from None
    batch = hflm_args.get("batch_size", 1)
    rows = int(batch) if str(batch).isdigit() else int(hflm_args.get("max_batch_size") or 64)
    shape = RunShape.from_config(
        config, _dtype_name(hflm_args.get("dtype", "auto"), config), device, rows, int(max_length), source.name
    )
    reasons += [f"method {built.label}: {reason}" for reason in built.check(shape)]
    if reasons:
        raise LycheeBenchArgumentError(reasons)
    if exercise_chars is None:
        exercise_chars = DEFAULT_EXERCISE_CHARS if built.decode_only else 0
    return {
        "source": source,
        "config": config,
        "method": built,
        "exercise_chars": exercise_chars,
        "hflm_args": hflm_args,
    }


def _as_model_arg(reason: str) -> str:
    """A reason `run`'s method parser words for its --method flag, worded for the model argument."""
    return "method=" + reason.removeprefix("--method ") if reason.startswith("--method ") else reason


def _method_fields(name: str) -> tuple[str, ...] | None:
    import dataclasses

    from lychee_bench.harness.catalog import METHODS

    try:
        cls = METHODS.get(name)
    except KeyError:
        return None
    return tuple(f.name for f in dataclasses.fields(cls.Config))


def _as_text(value: Any) -> str:
    """lm-eval reads model_args values as Python values ("4096" -> 4096); methods read option text."""
    return value if isinstance(value, str) else str(value)


def _check_device(device: Any, reasons: list[str]) -> str:
    """The device to run on: given, else CUDA when present, else the CPU. A CUDA device without a GPU is refused
    (HFLM would place tensors there and fail mid-run)."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    if text.startswith("cuda") and not torch.cuda.is_available():
        reasons.append(f"device={text}: no CUDA GPU is visible; pass --device cpu (lm-eval's default is cuda:0)")
    elif not (text == "cpu" or text.startswith("cuda")):
        reasons.append(f"device={text}: lychee-bench's engine runs on cpu or cuda[:N]")
    return text


def _dtype_name(dtype: Any, config: Any) -> str:
    """HFLM's dtype argument as the name methods check: "auto" is the dtype the model folder was saved in."""
    if dtype in (None, "auto"):
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def generation_settings(kwargs: dict[str, Any], max_new_tokens: int, model: torch.nn.Module) -> GenerationSettings:
    """HF generate's sampling arguments (after lm-eval's normalisation) as the engine's settings. Greedy unless
    `do_sample`; sampling takes `temperature` (> 0) and `top_p` (else the model's generation config's, as HF's
    generate does). Anything the engine cannot honour is refused, naming what it takes."""
    unknown = sorted(k for k in kwargs if k not in SAMPLING_KWARGS)
    if unknown:
        raise ValueError(
            f"lychee-bench cannot honour the generation argument(s) {', '.join(unknown)}; it takes "
            f"{', '.join(SAMPLING_KWARGS)} (top_k only when not sampling) besides until and max_gen_toks"
        )
    if max_new_tokens < 1:
        raise ValueError(f"nothing to generate: max_length leaves {max_new_tokens} new tokens")
    do_sample = kwargs.get("do_sample")
    if do_sample is None:
        do_sample = bool(getattr(model.generation_config, "do_sample", False))
    if not do_sample:
        return GenerationSettings(max_new_tokens=max_new_tokens)
    temperature = float(kwargs.get("temperature") or 0.0)
    if temperature <= 0:
        raise ValueError(f"do_sample=True needs a temperature > 0 (got {kwargs.get('temperature')!r})")
    if kwargs.get("top_k") not in (None, 0):
        raise ValueError(
            f"top_k={kwargs['top_k']}: lychee-bench's sampler has no top-k (it samples with temperature and top_p)"
        )
    top_p = kwargs.get("top_p")
    if top_p is None:
        top_p = getattr(model.generation_config, "top_p", None) or 1.0
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=float(top_p))


def exercise_tokens(tokenizer: Any, ids: list[int], chars: int) -> int:
    """How many trailing tokens of `ids` hold its last `chars` characters (the decode exercise), leaving at least
    one token to prefill; 0 when `chars` is 0."""
    if chars <= 0 or len(ids) < 2:
        return 0
    for count in range(1, len(ids)):
        if len(tokenizer.decode(ids[-count:])) >= chars:
            return count
    return len(ids) - 1
