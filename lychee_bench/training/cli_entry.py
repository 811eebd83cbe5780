"""What `lychee-bench train-heads` calls: resolve and load the model, train, return the result (roles file, steps)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from lychee_bench.training.data import PasskeyConfig, PasskeyData
from lychee_bench.training.hybrid import SparseConfig
from lychee_bench.training.trainer import TrainResult

DEFAULT_CTX_MAX = 10000  # the official recipe's longest training context (tokens)


def run_train_heads_cli(
    model_name: str | None,
    retrieval_heads: int | None,
    density: float | None,
    steps: int,
    ctx_min: int,
    ctx_max: int | None,
    gate: str,
    out: str | Path,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    rope_scaling: str | None = None,
    threshold_rule: str | None = None,
    lr: float = 0.01,
    checkpoint_every: int = 50,
    prefill_chunk: int | None = None,
    sparse: SparseConfig | None = None,
    data: PasskeyConfig | None = None,
    progress: bool = True,
    time_limit: float | None = None,
    corpus: str | None = None,
    selection_scores: str | None = None,
    lambda_lr: float | None = None,
) -> TrainResult:
    """Train head roles for a model; the result's `roles_path` is the roles JSON (loadable with `roles=<path>`).

    Refuses, before loading weights, bad settings (TrainConfig's checks), a training corpus that is not installed,
    an unsupported architecture or a ctx_max past the model's context (the message names the --rope-scaling that
    fixes it). Rerunning with the same `out` resumes. `time_limit` (minutes) counts from this call's start, model
    loading included: the training stops after the step that uses it up (`stopped_by` in the result). `corpus`
    and `selection_scores` (query_head or kv_group) override those fields of `data` and `sparse`; `lambda_lr`
    (None: TrainConfig's) is the density multiplier's step size.
    """
    from lychee_bench.harness import models
    from lychee_bench.harness.paths import unwritable_reason
    from lychee_bench.training.corpus import CORPORA, CorpusError, corpus_files
    from lychee_bench.training.gates import GATES
    from lychee_bench.training.hybrid import SELECTION_SCORES
    from lychee_bench.training.trainer import TrainConfig, train_heads

    started = time.monotonic()
    problems = []  # every bad input at once, in the command's own option names
    if steps < 1:
        problems.append(f"--steps {steps}: train at least 1 step")
    if lambda_lr is not None and not lambda_lr >= 0.0:
        problems.append(f"--lambda-lr {lambda_lr}: the multiplier's step must be >= 0 (0 keeps λ fixed), e.g. 0.01")
    if (retrieval_heads is None) == (density is None):
        problems.append("give exactly one of --retrieval-heads N (layer 0's KV heads included) and --density D")
    if gate not in GATES:
        problems.append(f"--gate {gate!r} is not a gate; use one of {', '.join(sorted(GATES))}")
    if ctx_min <= 0 or (ctx_max is not None and ctx_min > ctx_max):
        problems.append(f"--ctx-min {ctx_min} and --ctx-max {ctx_max}: need 0 < ctx-min <= ctx-max")
    if time_limit is not None and not time_limit > 0:
        problems.append(f"--time-limit {time_limit}: give the minutes the command may take, > 0 (e.g. 8)")
    data = data or PasskeyConfig()
    if corpus is not None and corpus not in CORPORA:
        problems.append(f"--corpus {corpus!r}: use one of {', '.join(sorted(CORPORA))}")
    else:
        data = replace(data, corpus=corpus or data.corpus)
        try:
            corpus_files(data.corpus)
        except CorpusError as error:
            problems.append(str(error))
    if selection_scores is not None and selection_scores not in SELECTION_SCORES:
        problems.append(f"--selection-scores {selection_scores!r}: use one of {', '.join(SELECTION_SCORES)}")
    elif selection_scores is not None:
        sparse = replace(sparse or SparseConfig(), granularity=selection_scores)
    if (unwritable := unwritable_reason(out, "--out")) is not None:
        problems.append(unwritable)
    if problems:
        raise ValueError("; ".join(problems))
    source = models.resolve_model(model_name)
    config = models.load_config(source, rope_scaling)
    reasons = models.check_architecture(config)
    if ctx_max is not None:
        reasons += models.check_context(config, ctx_max, source.name)
    if reasons:
        raise models.ModelError("; ".join(reasons))
    tokenizer = models.load_tokenizer(source)
    # The answer segment follows the context: its positions must fit too (a 25% margin over one sample's).
    probe = PasskeyData(tokenizer, replace(data, ctx_min=1, ctx_max=1))
    segment = int(1.25 * len(probe.segment_ids(0)))
    if ctx_max is None:  # the recipe's 10000, or what the model holds beside the answer segment
        ctx_max = min(DEFAULT_CTX_MAX, models.context_limit(config) - segment)
        if ctx_max < DEFAULT_CTX_MAX:
            limit = models.context_limit(config)
            print(f"--ctx-max {ctx_max}: {source.name} holds {limit} tokens, the answer segment included")
        if ctx_min > ctx_max:
            raise ValueError(
                f"--ctx-min {ctx_min} is above the longest context {source.name} holds ({ctx_max}): give "
                f"--ctx-min {ctx_max} or less, or extend the context with --rope-scaling"
            )
    longest = ctx_max + segment
    reasons = models.check_context(config, longest, source.name)
    if reasons:
        raise models.ModelError(f"context {ctx_max} plus the answer segment: " + "; ".join(reasons))
    try:  # the shortest context must hold the passkeys: refused here, before the weights load or a log is written
        PasskeyData(tokenizer, replace(data, ctx_min=ctx_min, ctx_max=ctx_min)).sample(0)
    except ValueError as error:
        raise ValueError(f"--ctx-min {ctx_min}: {error}") from None
    info = {"name": source.name, "fingerprint": source.fingerprint}
    if rope_scaling:
        info["rope_scaling"] = rope_scaling
    settings = TrainConfig(
        out_dir=Path(out),
        num_retrieval_heads=retrieval_heads,
        target_density=density,
        steps=steps,
        ctx_min=ctx_min,
        ctx_max=ctx_max,
        gate=gate,
        threshold_rule=threshold_rule,
        lr=lr,
        **({} if lambda_lr is None else {"lambda_lr": lambda_lr}),
        seed=seed,
        checkpoint_every=checkpoint_every,
        device=device,
        data=data,
        sparse=sparse,
        prefill_chunk=prefill_chunk,
        model_info=info,
        progress=progress,
        time_limit=time_limit,
    )
    model = models.load_model(source, config, device, dtype)
    if time_limit is not None:  # the minutes left once the model is loaded (at least a moment: one step is made)
        left = max(time_limit - (time.monotonic() - started) / 60.0, 1e-3)
        settings = replace(settings, time_limit=left)
    result = train_heads(model, tokenizer, settings)
    assert result.roles_path is not None  # a full run (no stop_after) or a timed-out one writes the roles
    return result
