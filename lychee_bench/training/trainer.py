"""Learn LycheeDecode's head roles (arXiv 2602.04541 §3): gates on KV heads, distillation, a density constraint.

One step: draw a passkey sample; prefill its context densely (no grad, the engine's chunked prefill); run the
answer segment through the frozen model with full attention (teacher) and through the hybrid forward with one gate
sample z (student);
loss = distill + λ·c with c = relu(density - target). Only the gate parameters train (AdamW, batch 1).

Choices recorded in every roles file (`training` block):
- Layer 0 is always full and always retrieval, so its gates are left out of the density: density is the mean
  of P(z != 0) over layers 1..L-1, and N requested retrieval heads (layer 0's H included) map to the target
  (N - H) / ((L - 1) H): the expected count of learned retrieval heads is then N - H. (The paper's targets,
  0.09375 for Llama-3-8B and 0.08333 for Qwen3-8B, equal 24 / (L H): its density averages over all layers,
  layer 0's gates included, which then sink freely; ours keeps them out.)
- λ is updated from the current c before it weights the loss (as the public code does), multiplicatively:
  λ <- clip(λ exp(η c), 1e-12, 20); the public code's moving average of c is not used.
- lr: linear warm-up over the first fifth, constant, linear decay over the last fifth, never below
  `min_lr_ratio` (0.1, the public code's floor) of the peak.
- The final roles: the gate's threshold rule (score > 0.5), layer 0 forced. When N was requested and the
  threshold gives another count, the top N - H heads of layers 1.. by the same score are taken, and that is
  recorded (`selection: "top-n"`).
- `time_limit` (minutes, `--time-limit`): a call stops before a step that would end past it (judged by the step
  before), checkpoints, and writes roles.json from the gates as they stand, recording `steps_completed` and
  `stopped_by: "time_limit"`; rerunning the same command continues from the checkpoint. Every call runs at least
  one step. The schedule (warm-up, decay) is that of `steps`, so a run cut short has not decayed its lr.
- SDPA runs without its cuDNN backend (`sdpa_backends`): every step has new shapes (a new context length), and
  cuDNN builds an execution plan for each new shape. On the H200 that made a step 4.4x slower (0.93 against
  4.09 steps/s for SmolLM2-135M at 1000-7000 tokens, `results/training/h200-step`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from lychee_bench.harness.provenance import collect
from lychee_bench.methods.roles import roles_to_json
from lychee_bench.training.data import PasskeyConfig, PasskeyData
from lychee_bench.training.gates import GATES, Gate, make_gate
from lychee_bench.training.hybrid import HybridState, SparseConfig, distillation_loss, prefill, segment_hidden
from lychee_bench.training.plot import plot_training

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
ROLES = "roles.json"
PLOT = "training.png"
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 20.0
# SDPA's backends a step may use: all but cuDNN, which plans anew for every new shape (see the module text).
TRAINING_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
# What each threshold rule means, in the roles file.
RULE_TEXT = {
    "kuma_mean": "E[x] > 0.5 of the un-stretched Kumaraswamy (public LycheeDecode code)",
    "p_one": "P(z = 1) > 0.5",
    "expected_z": "E[z] > 0.5 of the rectified gate",
    "test_gate": "Louizos test-time gate clamp(1.2 sigmoid(log_alpha) - 0.1, 0, 1) > 0.5",
    "round": "sigmoid gate > 0.5 (rounded after training)",
}


@dataclass
class TrainResult:
    roles_path: Path | None  # None while the run is unfinished (stop_after); written when time_limit stops it
    log_path: Path
    plot_path: Path
    checkpoint_path: Path
    retrieval: torch.Tensor  # [L, H] bool
    final_density: float
    steps: int
    stopped_by: str | None = None  # "time_limit" when the time limit ended the call before `steps`
    warning: str | None = None  # top_n_warning's, when the kept heads were a near-tie


@dataclass(frozen=True)
class TrainConfig:
    """Everything a `train_heads` run is told, checked once when built, so a bad value fails before any weights
    load or any step runs.

    Give `num_retrieval_heads` (N, layer 0's heads included; the roles file then has exactly N) or
    `target_density` (over layers 1..; the roles are then whatever the threshold gives). `data` overrides the
    passkey settings (its ctx_min/ctx_max are replaced by `ctx_min`/`ctx_max`); `sparse` the training-time sparse
    heads. `stop_after` ends a call after that many steps (checkpointed), for preemptible jobs; `time_limit`
    (minutes) ends it when the time is up (checkpointed, roles written; see the module text). `sdpa_backends`
    are the SDPA backends the forwards may use. `device` None keeps the model where it is; `model_info` names the
    model in the roles file (default: its config's name).
    """

    out_dir: Path
    num_retrieval_heads: int | None = None
    target_density: float | None = None
    steps: int = 3000
    ctx_min: int = 1000
    ctx_max: int = 10000
    gate: str = "hardkuma"
    threshold_rule: str | None = None  # None: the gate's own rule
    lr: float = 0.01
    min_lr_ratio: float = 0.1
    lambda_init: float = 2.0
    lambda_lr: float = 0.001
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 50
    device: str | torch.device | None = None
    data: PasskeyConfig | None = None  # normalised to the PasskeyConfig used, ctx_min/ctx_max in it
    sparse: SparseConfig | None = None  # normalised to the SparseConfig used
    prefill_chunk: int | None = None
    model_info: dict[str, Any] | None = None
    stop_after: int | None = None
    time_limit: float | None = None  # minutes for this call's steps; None: no limit
    progress: bool = True
    sdpa_backends: tuple[SDPBackend, ...] = TRAINING_SDPA_BACKENDS

    def __post_init__(self) -> None:
        if (self.num_retrieval_heads is None) == (self.target_density is None):
            raise ValueError(
                f"num_retrieval_heads={self.num_retrieval_heads} and target_density={self.target_density}: give "
                "exactly one of num_retrieval_heads (N) and target_density (N: retrieval KV heads in total, layer "
                "0's included; or the density over layers 1.., in [0, 1])"
            )
        if self.num_retrieval_heads is not None and self.num_retrieval_heads < 1:
            raise ValueError(
                f"num_retrieval_heads={self.num_retrieval_heads}: the count includes layer 0's KV heads, so give at "
                "least the model's KV-head count"
            )
        if self.target_density is not None and not 0.0 <= self.target_density <= 1.0:
            raise ValueError(
                f"target_density={self.target_density} must be in [0, 1]: it is the fraction of the KV heads of "
                "layers 1.. that stay retrieval heads, e.g. 0.1"
            )
        _at_least("steps", self.steps, 1)
        _at_least("log_every", self.log_every, 1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        if self.stop_after is not None:
            _at_least("stop_after", self.stop_after, 1, "or None to run to the end")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(
                f"time_limit={self.time_limit}: give the minutes this call may train, > 0 (e.g. 8), or None for no "
                "limit"
            )
        if self.prefill_chunk is not None:
            _at_least("prefill_chunk", self.prefill_chunk, 1, "or None for the engine's chunk")
        if self.gate not in GATES:
            raise ValueError(f"gate={self.gate!r} is not a gate; use one of {', '.join(sorted(GATES))}")
        rules = GATES[self.gate].rules
        if self.threshold_rule is not None and self.threshold_rule not in rules:
            raise ValueError(
                f"threshold_rule={self.threshold_rule!r} is not defined for the {self.gate} gate; use one of "
                f"{', '.join(rules)}, or None for the gate's own ({GATES[self.gate].default_rule})"
            )
        if not self.lr > 0.0:
            raise ValueError(f"lr={self.lr}: the peak learning rate must be > 0, e.g. 0.01")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio}: the floor is a fraction of lr; use [0, 1], e.g. 0.1")
        if not LAMBDA_MIN <= self.lambda_init <= LAMBDA_MAX:
            raise ValueError(
                f"lambda_init={self.lambda_init} is outside [{LAMBDA_MIN}, {LAMBDA_MAX}], the range λ is clipped "
                "to; use e.g. 2.0"
            )
        if not self.lambda_lr >= 0.0:
            raise ValueError(f"lambda_lr={self.lambda_lr}: λ's step size must be >= 0 (0 keeps λ fixed), e.g. 0.001")
        if not self.sdpa_backends:
            raise ValueError(
                "sdpa_backends=(): the forwards need at least one SDPA backend; use TRAINING_SDPA_BACKENDS"
            )
        # The passkey settings with this run's context range (PasskeyConfig checks the range), and the sparse
        # heads' defaults: stored as used, so the config says what the run does.
        data = PasskeyConfig(
            **{**asdict(self.data or PasskeyConfig()), "ctx_min": self.ctx_min, "ctx_max": self.ctx_max}
        )
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "sparse", self.sparse or SparseConfig())
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "sdpa_backends", tuple(self.sdpa_backends))

    @property
    def rule(self) -> str:
        """The threshold rule the final roles use: the one asked for, or the gate's own."""
        return self.threshold_rule or GATES[self.gate].default_rule


def _at_least(name: str, value: int, least: int, alternative: str = "") -> None:
    if value < least:
        fix = f"pass {name} >= {least}" + (f" {alternative}" if alternative else "")
        raise ValueError(f"{name}={value}: need at least {least}; {fix}")


@dataclass
class _RunState:
    """What a run carries from one step to the next; all of it goes into the checkpoint, so a resumed run
    continues exactly where the interrupted one stopped."""

    gates: Gate
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    lam: float
    step: int = 0  # steps done
    elapsed: float = 0.0  # seconds spent in steps, over every call of the run


@dataclass
class _StepOutcome:
    """One step's tensors (still on the device: reading them back is the logging's job) and host facts."""

    loss: torch.Tensor
    distill: torch.Tensor
    constraint: torch.Tensor
    density: torch.Tensor
    z: torch.Tensor
    kept_fraction: float
    context_tokens: int
    segment_tokens: int


def density_target(num_retrieval_heads: int, num_layers: int, num_kv_heads: int) -> float:
    """The density over layers 1.. whose expected retrieval-head count, plus layer 0's heads, is N."""
    if not num_kv_heads <= num_retrieval_heads <= num_layers * num_kv_heads:
        raise ValueError(
            f"retrieval heads {num_retrieval_heads} impossible for {num_layers} layers x {num_kv_heads} KV heads: "
            f"the count includes layer 0's {num_kv_heads}, so use {num_kv_heads}..{num_layers * num_kv_heads}"
        )
    return (num_retrieval_heads - num_kv_heads) / ((num_layers - 1) * num_kv_heads)


def lr_factor(step: int, steps: int, min_ratio: float) -> float:
    """Warm-up over the first fifth, constant, linear decay over the last fifth; floored at min_ratio."""
    phase = max(1, steps // 5)
    return max(min_ratio, min(1.0, (step + 1) / phase, (steps - step) / phase))


THRESHOLD = 0.5  # every rule's scores are in [0, 1] and a head above this is a retrieval head (RULE_TEXT)


def final_roles(scores: torch.Tensor, num_retrieval_heads: int | None) -> tuple[torch.Tensor, str, int]:
    """(roles, selection, threshold count): score > THRESHOLD with layer 0 forced; top-N by score when N is asked."""
    table = scores > THRESHOLD
    table[0] = True
    counted = int(table.sum())
    if num_retrieval_heads is None or counted == num_retrieval_heads:
        return table, "threshold", counted
    num_kv_heads = scores.shape[1]
    top = torch.topk(scores[1:].flatten(), num_retrieval_heads - num_kv_heads).indices
    table = torch.zeros_like(table)
    table[0] = True
    table[1:].view(-1)[top] = True
    return table, "top-n", counted


TIE_MARGIN = 0.05  # kept and left-out gate scores closer than this: training did not choose between them


def top_n_warning(scores: torch.Tensor, table: torch.Tensor, final_density: float, target: float) -> str | None:
    """A message when top-n had to choose among more heads above the threshold than it keeps and the last kept
    head scores within TIE_MARGIN of the first left out: then training did not settle which heads are retrieval
    heads (measured on Qwen2.5-Coder-0.5B: ten heads at 0.94-0.98 for four places, and which four decided RULER
    between 12.7 and 55.9; results/qwen2.5-coder-0.5b/NOTES.md)."""
    learned, kept = scores[1:], table[1:]
    above = int((learned > THRESHOLD).sum())
    places = int(kept.sum())
    if above <= places or places == 0:
        return None
    lowest_kept = float(learned[kept].min())
    highest_dropped = float(learned[~kept].max())
    if lowest_kept - highest_dropped >= TIE_MARGIN:
        return None
    return (
        f"the gates did not separate the heads: {above} heads of layers 1.. are above the threshold for {places} "
        f"places, and the last kept scores {lowest_kept:.3f} against {highest_dropped:.3f} for the first left out, "
        f"so training did not choose which are kept. The density constraint did not bind (final density "
        f"{final_density:.3f}, target {target:.3f}): train longer, or raise --lambda-lr so λ grows faster."
    )


def train_heads(
    model: torch.nn.Module,
    tokenizer: Any,
    config: TrainConfig,
    *,
    on_phase: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train per-KV-head gates and write roles.json, train_log.jsonl, training.png and checkpoint.pt to
    `config.out_dir`.

    Rerunning with the same out_dir resumes from checkpoint.pt (the settings must match; only the threshold rule
    may differ, which re-thresholds a finished run without new steps). `on_phase` is called with the name of
    each phase of a step as it begins ("sample", "prefill", "teacher", "student", "backward", "logging") and with
    "end" after it (tools/training_step.py times the phases with it).
    """
    began = time.monotonic()
    num_layers, num_kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    if config.num_retrieval_heads is not None:
        target = density_target(config.num_retrieval_heads, num_layers, num_kv_heads)
    else:
        target = float(config.target_density)
    device = _place(model, config.device)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    info = dict(config.model_info or {"name": getattr(model.config, "name_or_path", None) or model.config.model_type})
    run = _run_settings(config, target, {**info, "num_layers": num_layers, "num_kv_heads": num_kv_heads})
    state = _fresh_state(config, num_layers, num_kv_heads, device)
    checkpoint_path, log_path = out / CHECKPOINT, out / LOG
    if checkpoint_path.exists():
        _resume(state, run, checkpoint_path)
    records = _read_log(log_path, state.step)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in records))  # drop steps past the checkpoint
    end = config.steps if config.stop_after is None else min(config.steps, state.step + config.stop_after)
    samples = PasskeyData(tokenizer, config.data)
    deadline = None if config.time_limit is None else began + 60.0 * config.time_limit
    with _frozen(model):
        done = _train_steps(
            model, samples, config, state, run, target, end, records, on_phase or _no_phase, device, deadline
        )
    stopped_by = "time_limit" if done < end else None
    return _finish(model, config, state, run, info, records, done, device, stopped_by)


def _place(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Moves the model to `device` (None: where it is) in eval mode; returns the device it is on."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    return device


def _run_settings(config: TrainConfig, target: float, model: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint records and a resumed run must match (the threshold rule excepted)."""
    return {
        "gate": config.gate,
        "threshold_rule": config.rule,
        "steps": config.steps,
        "retrieval_heads": config.num_retrieval_heads,
        "target_density": target,
        "lr": config.lr,
        "min_lr_ratio": config.min_lr_ratio,
        "lambda_init": config.lambda_init,
        "lambda_lr": config.lambda_lr,
        "seed": config.seed,
        "data": config.data.describe(),
        "sparse": config.sparse.describe(),
        "model": model,
    }


def _fresh_state(config: TrainConfig, num_layers: int, num_kv_heads: int, device: torch.device) -> _RunState:
    gates = make_gate(config.gate, num_layers, num_kv_heads).to(device)
    optimizer = torch.optim.AdamW(gates.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    return _RunState(gates, optimizer, generator, config.lambda_init)


def _resume(state: _RunState, run: dict[str, Any], path: Path) -> None:
    """Loads the checkpoint at `path` into `state`, after checking it comes from a run with these settings."""
    try:  # weights_only: tensors and plain containers only, so a crafted file cannot run code while loading
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"run", "gates", "optimizer", "generator", "step"} <= saved.keys():
            raise ValueError("it lacks the parts a train-heads checkpoint has (run, gates, optimizer, generator, step)")
    except Exception as error:  # any unreadable file gets the same clear refusal
        raise ValueError(
            f"{path} is not a train-heads checkpoint this code can resume ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass another out folder, or move the file "
            "aside to start over (it was not changed)"
        ) from None
    _check_settings(saved["run"], run, path)
    state.gates.load_state_dict(saved["gates"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["generator"])
    state.lam, state.step, state.elapsed = saved["lambda"], saved["step"], saved["elapsed"]


def _check_settings(saved: dict[str, Any], run: dict[str, Any], path: Path) -> None:
    """Refuses to continue a checkpoint written with other settings: the run would silently mix two."""
    # The threshold rule only reads the gates: a finished run may be re-thresholded with another one.
    changed = sorted(k for k in run if k != "threshold_rule" and saved.get(k) != run[k])
    if changed:
        raise ValueError(
            f"{path} is from a run with other settings ({', '.join(changed)} differ); use another out_dir, or "
            "delete the checkpoint to start over"
        )


def _save_checkpoint(state: _RunState, run: dict[str, Any], path: Path) -> None:
    checkpoint = {
        "run": run,
        "step": state.step,
        "gates": state.gates.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "elapsed": state.elapsed,
        "lambda": state.lam,
    }
    _atomic_save(checkpoint, path)


def _atomic_save(obj: Any, path: Path) -> None:
    staging = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, staging)
    os.replace(staging, path)


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's weights without gradients while the gates train; their own flags back afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        yield
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])


def _train_steps(
    model: torch.nn.Module,
    samples: PasskeyData,
    config: TrainConfig,
    state: _RunState,
    run: dict[str, Any],
    target: float,
    end: int,
    records: list[dict[str, Any]],
    phase: Callable[[str], None],
    device: torch.device,
    deadline: float | None = None,
) -> int:
    """Steps state.step..end-1: each step trains, then logs (every log_every and the last) and checkpoints (every
    checkpoint_every and the last). With a `deadline` (time.monotonic), the loop ends after the first step whose
    successor, as long as it, would end past the deadline; that step is logged and checkpointed. Returns the
    steps done."""
    out = config.out_dir
    bar = tqdm(
        range(state.step, end), initial=state.step, total=config.steps, disable=not config.progress, desc="train-heads"
    )
    try:
        for step in bar:
            began = time.perf_counter()
            outcome = _train_step(model, samples, config, state, target, step, phase, device)
            phase("logging")
            done = step + 1
            # With a deadline every step reads back (a sync), so its time includes the device's work.
            read = config.progress or deadline is not None or done % config.log_every == 0 or done == end
            values = _read_back(outcome, state.gates, config.rule) if read else []
            if values:
                bar.set_postfix(distill=f"{values[1]:.4g}", density=f"{values[3]:.3f}", lam=f"{state.lam:.3g}")
            seconds = time.perf_counter() - began  # after the read-back: the device's work included when logged
            state.elapsed += seconds
            state.step = done
            # Out of time: another step as long as this one would end past the deadline.
            stop = deadline is not None and done < end and time.monotonic() + seconds > deadline
            last = done == end or stop
            if done % config.log_every == 0 or last:
                record = _log_record(done, values, outcome, state, target, seconds)
                records.append(record)
                with open(out / LOG, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if done % config.checkpoint_every == 0 or last:
                _save_checkpoint(state, run, out / CHECKPOINT)
            phase("end")
            if stop:
                return done
    finally:
        bar.close()
    return end


def _train_step(
    model: torch.nn.Module,
    samples: PasskeyData,
    config: TrainConfig,
    state: _RunState,
    target: float,
    step: int,
    phase: Callable[[str], None],
    device: torch.device,
) -> _StepOutcome:
    """One optimiser step of the gates: sample, dense prefill, teacher and student forwards, loss, backward."""
    phase("sample")
    sample = samples.sample(config.seed * 1_000_003 + step)
    context = sample.context_ids[None].to(device)
    segment = sample.segment_ids[None].to(device)
    answers = sample.loss_mask.nonzero()[:, 0].to(device)
    # Everything that reads the device back (λ needs c) or copies to it (z's uniforms) happens here, before the
    # forwards are queued: the only other sync of a step is the logging read-back.
    gates = state.gates
    z = gates.sample(state.generator)
    density = gates.prob_nonzero()[1:].mean()
    constraint = torch.relu(density - target)
    lam = state.lam * math.exp(config.lambda_lr * float(constraint.detach()))
    state.lam = min(LAMBDA_MAX, max(LAMBDA_MIN, lam))
    with sdpa_kernel(list(config.sdpa_backends)):
        phase("prefill")
        cache = prefill(model, context, config.prefill_chunk)
        phase("teacher")
        teacher = segment_hidden(model, cache, segment, None)
        phase("student")
        hybrid = HybridState(z, config.sparse)
        student = segment_hidden(model, cache, segment, hybrid)
        del cache
        phase("backward")
        distill = distillation_loss(student, teacher, answers)
        loss = distill + state.lam * constraint
        for group in state.optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config.steps, config.min_lr_ratio)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    return _StepOutcome(
        loss, distill, constraint, density, z, hybrid.kept_fraction, sample.context_length, int(segment.shape[1])
    )


def _read_back(outcome: _StepOutcome, gates: Gate, rule: str) -> list[float]:
    """One device read-back for every number logged or shown: the five scalars (loss, distill, constraint,
    density, mean z of layers 1..), then the flat score table, then the flat P(z != 0) table."""
    with torch.no_grad():
        scalars = torch.stack(
            [outcome.loss, outcome.distill, outcome.constraint, outcome.density, outcome.z[1:].mean()]
        )
        return torch.cat([scalars, gates.score(rule).flatten(), gates.prob_nonzero().flatten()]).tolist()


def _log_record(
    done: int,
    values: list[float],
    outcome: _StepOutcome,
    state: _RunState,
    target: float,
    seconds: float,
) -> dict[str, Any]:
    """One train_log.jsonl line (plot.py and the roles file's distill_last_tenth read it)."""
    loss, distill, constraint, density, z_mean = values[:5]
    num_layers = state.gates.num_layers
    tables = _table(values[5:], state.gates.num_kv_heads)  # the score rows, then the p_nonzero rows
    return {
        "step": done,
        "loss": loss,
        "distill": distill,
        "constraint": constraint,
        "density": density,
        "target": target,
        "lambda": state.lam,
        "lr": state.optimizer.param_groups[0]["lr"],
        "z_mean": z_mean,
        "kept_fraction": outcome.kept_fraction,
        "context_tokens": outcome.context_tokens,
        "segment_tokens": outcome.segment_tokens,
        "seconds": round(seconds, 4),
        "elapsed": round(state.elapsed, 2),
        "score": tables[:num_layers],
        "p_nonzero": tables[num_layers:],
    }


def _table(values: list[float], width: int) -> list[list[float]]:
    """A flat [L * H] list as L rows of H values rounded for the log."""
    return [[round(v, 5) for v in values[i : i + width]] for i in range(0, len(values), width)]


def _no_phase(name: str) -> None:
    pass


def _read_log(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= upto_step]


def _finish(
    model: torch.nn.Module,
    config: TrainConfig,
    state: _RunState,
    run: dict[str, Any],
    info: dict[str, Any],
    records: list[dict[str, Any]],
    completed: int,
    device: torch.device,
    stopped_by: str | None = None,
) -> TrainResult:
    """The roles from the gates as they stand; roles.json when every step is done or the time limit stopped the
    call (recorded as `stopped_by`), the plot whenever the log has records."""
    with torch.no_grad():
        scores = state.gates.score(config.rule).detach().cpu()
        final_density = float(state.gates.prob_nonzero()[1:].mean())
    roles, selection, threshold_count = final_roles(scores, config.num_retrieval_heads)
    warning = top_n_warning(scores, roles, final_density, run["target_density"])  # None unless top-n chose
    last = records[-max(1, len(records) // 10) :] if records else []
    training = {
        **{k: v for k, v in run.items() if k not in ("model", "threshold_rule")},
        "steps_completed": completed,
        "stopped_by": stopped_by,
        "final_density": final_density,
        "density_over": "layers 1.. (layer 0 is forced retrieval and left out)",
        "selection": selection,
        "threshold_count": threshold_count,
        "warning": warning,
        "distill_last_tenth": sum(r["distill"] for r in last) / len(last) if last else None,
        "scores": [[round(float(v), 5) for v in row] for row in scores],
        "elapsed_seconds": round(state.elapsed, 1),
        "sdpa_backends": [backend.name.lower() for backend in config.sdpa_backends],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "provenance": collect(str(device)),
    }
    rule = config.rule
    threshold_rule = {"name": rule, "gate": config.gate, "text": RULE_TEXT[rule], "layer0": "forced retrieval"}
    out = config.out_dir
    roles_path = out / ROLES if completed == config.steps or stopped_by else None
    if roles_path is not None:
        document = roles_to_json(roles, info, threshold_rule=threshold_rule, training=training)
        roles_path.write_text(json.dumps(document, indent=1) + "\n")
    plot_path = plot_training(records, roles, rule, out / PLOT) if records else out / PLOT
    return TrainResult(
        roles_path, out / LOG, plot_path, out / CHECKPOINT, roles, final_density, completed, stopped_by, warning
    )
