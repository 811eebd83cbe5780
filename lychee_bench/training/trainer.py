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
- SDPA runs without its cuDNN backend (`sdpa_backends`): every step has new shapes (a new context length), and
  cuDNN builds an execution plan for each new shape. On the H200 that made a step 4.4x slower (0.93 against
  4.09 steps/s for SmolLM2-135M at 1000-7000 tokens, `results/training/h200-step`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from lychee_bench.harness.provenance import collect
from lychee_bench.methods.roles import roles_to_json
from lychee_bench.training.data import PasskeyConfig, PasskeyData
from lychee_bench.training.gates import make_gate
from lychee_bench.training.hybrid import HybridState, SparseConfig, distillation_loss, prefill, segment_hidden
from lychee_bench.training.plot import plot_training

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
ROLES = "roles.json"
PLOT = "training.png"
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 20.0
# SDPA's backends a step may use: all but cuDNN, which plans anew for every new shape (see the module text).
TRAINING_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


@dataclass
class TrainResult:
    roles_path: Path | None  # None while the run is unfinished (stop_after)
    log_path: Path
    plot_path: Path
    checkpoint_path: Path
    retrieval: torch.Tensor  # [L, H] bool
    final_density: float
    steps: int


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


def final_roles(scores: torch.Tensor, num_retrieval_heads: int | None) -> tuple[torch.Tensor, str, int]:
    """(roles, selection, threshold count): score > 0.5 with layer 0 forced; top-N by score when N is asked."""
    table = scores > 0.5
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


def _atomic_save(obj: Any, path: Path) -> None:
    staging = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, staging)
    os.replace(staging, path)


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


def train_heads(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    out_dir: str | Path,
    num_retrieval_heads: int | None = None,
    target_density: float | None = None,
    steps: int = 3000,
    ctx_min: int = 1024,
    ctx_max: int = 10240,
    gate: str = "hardkuma",
    threshold_rule: str | None = None,
    lr: float = 0.01,
    min_lr_ratio: float = 0.1,
    lambda_init: float = 2.0,
    lambda_lr: float = 0.001,
    seed: int = 0,
    log_every: int = 1,
    checkpoint_every: int = 50,
    device: str | torch.device | None = None,
    data: PasskeyConfig | None = None,
    sparse: SparseConfig | None = None,
    prefill_chunk: int | None = None,
    model_info: dict[str, Any] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    on_phase: Callable[[str], None] | None = None,
    sdpa_backends: tuple[SDPBackend, ...] = TRAINING_SDPA_BACKENDS,
) -> TrainResult:
    """Train per-KV-head gates and write roles.json, train_log.jsonl, training.png and checkpoint.pt to out_dir.

    Give `num_retrieval_heads` (N, layer 0's heads included; the roles file then has exactly N) or
    `target_density` (over layers 1..; the roles are then whatever the threshold gives). `data` overrides the
    passkey settings (its ctx_min/ctx_max are replaced by the arguments); `sparse` the training-time sparse
    heads. Rerun with the same out_dir resumes from checkpoint.pt (the settings must match). `stop_after`
    ends this call after that many steps (checkpointed), for preemptible jobs. `on_phase` is called with the
    name of each phase of a step as it begins ("sample", "prefill", "teacher", "student", "backward",
    "logging") and with "end" after it (bench_step times the phases with it). `sdpa_backends` are the SDPA
    backends the forwards may use.
    """
    config = model.config
    num_layers, num_kv_heads = config.num_hidden_layers, config.num_key_value_heads
    if (num_retrieval_heads is None) == (target_density is None):
        raise ValueError("give exactly one of num_retrieval_heads (N) and target_density")
    if num_retrieval_heads is not None:
        target = density_target(num_retrieval_heads, num_layers, num_kv_heads)
    else:
        target = float(target_density)
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target_density {target} must be in [0, 1]")
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least 1")
    data = PasskeyConfig(**{**asdict(data or PasskeyConfig()), "ctx_min": ctx_min, "ctx_max": ctx_max})
    sparse = sparse or SparseConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    gates = make_gate(gate, num_layers, num_kv_heads).to(device)
    rule = gates.check_rule(threshold_rule)
    optimizer = torch.optim.AdamW(gates.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    info = dict(model_info or {"name": getattr(config, "name_or_path", None) or config.model_type})
    run = {
        "gate": gate,
        "threshold_rule": rule,
        "steps": steps,
        "retrieval_heads": num_retrieval_heads,
        "target_density": target,
        "lr": lr,
        "min_lr_ratio": min_lr_ratio,
        "lambda_init": lambda_init,
        "lambda_lr": lambda_lr,
        "seed": seed,
        "data": data.describe(),
        "sparse": sparse.describe(),
        "model": {**info, "num_layers": num_layers, "num_kv_heads": num_kv_heads},
    }
    lam, start, elapsed = lambda_init, 0, 0.0
    checkpoint_path, log_path = out / CHECKPOINT, out / LOG
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        # The threshold rule only reads the gates: a finished run may be re-thresholded with another one.
        changed = sorted(k for k in run if k != "threshold_rule" and saved["run"].get(k) != run[k])
        if changed:
            raise ValueError(
                f"{checkpoint_path} is from a run with other settings ({', '.join(changed)} differ); use another "
                "out_dir, or delete the checkpoint to start over"
            )
        gates.load_state_dict(saved["gates"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        lam, start, elapsed = saved["lambda"], saved["step"], saved["elapsed"]
    records = _read_log(log_path, start)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in records))  # drop steps past the checkpoint

    def save_checkpoint(step: int) -> None:
        state = {"run": run, "step": step, "gates": gates.state_dict(), "optimizer": optimizer.state_dict()}
        state.update(generator=generator.get_state(), elapsed=elapsed, **{"lambda": lam})
        _atomic_save(state, checkpoint_path)

    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    samples = PasskeyData(tokenizer, data)
    phase = on_phase or _no_phase
    end = steps if stop_after is None else min(steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=steps, disable=not progress, desc="train-heads")
    try:
        for step in bar:
            began = time.perf_counter()
            phase("sample")
            sample = samples.sample(seed * 1_000_003 + step)
            context = sample.context_ids[None].to(device)
            segment = sample.segment_ids[None].to(device)
            answers = sample.loss_mask.nonzero()[:, 0].to(device)
            # Everything that reads the device back (λ needs c) or copies to it (z's uniforms) happens here,
            # before the forwards are queued: the only other sync of a step is the logging read-back.
            z = gates.sample(generator)
            density = gates.prob_nonzero()[1:].mean()
            constraint = torch.relu(density - target)
            lam = min(LAMBDA_MAX, max(LAMBDA_MIN, lam * math.exp(lambda_lr * float(constraint.detach()))))
            with sdpa_kernel(list(sdpa_backends)):
                phase("prefill")
                cache = prefill(model, context, prefill_chunk)
                phase("teacher")
                teacher = segment_hidden(model, cache, segment, None)
                phase("student")
                state = HybridState(z, sparse)
                student = segment_hidden(model, cache, segment, state)
                del cache
                phase("backward")
                distill = distillation_loss(student, teacher, answers)
                loss = distill + lam * constraint
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(step, steps, min_lr_ratio)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            phase("logging")
            done = step + 1
            logged = done % log_every == 0 or done == steps or done == end
            if logged or progress:
                with torch.no_grad():  # one device read-back for every number logged or shown
                    scalars = torch.stack([loss, distill, constraint, density, z[1:].mean()])
                    tensors = [scalars, gates.score(rule).flatten(), gates.prob_nonzero().flatten()]
                    values = torch.cat(tensors).tolist()
                loss_v, distill_v, constraint_v, density_v, z_mean = values[:5]
                tables = _table(values[5:], num_kv_heads)  # the score rows, then the p_nonzero rows
                bar.set_postfix(distill=f"{distill_v:.4g}", density=f"{density_v:.3f}", lam=f"{lam:.3g}")
            seconds = time.perf_counter() - began  # after the read-back: the device's work included when logged
            elapsed += seconds
            if logged:
                record = {
                    "step": done,
                    "loss": loss_v,
                    "distill": distill_v,
                    "constraint": constraint_v,
                    "density": density_v,
                    "target": target,
                    "lambda": lam,
                    "lr": optimizer.param_groups[0]["lr"],
                    "z_mean": z_mean,
                    "kept_fraction": state.kept_fraction,
                    "context_tokens": sample.context_length,
                    "segment_tokens": int(segment.shape[1]),
                    "seconds": round(seconds, 4),
                    "elapsed": round(elapsed, 2),
                    "score": tables[:num_layers],
                    "p_nonzero": tables[num_layers:],
                }
                records.append(record)
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if done % checkpoint_every == 0 or done == steps or done == end:
                save_checkpoint(done)
            phase("end")
    finally:
        bar.close()
        for name, param in model.named_parameters():
            param.requires_grad_(frozen[name])
    completed = end

    with torch.no_grad():
        scores = gates.score(rule).detach().cpu()
        final_density = float(gates.prob_nonzero()[1:].mean())
    roles, selection, threshold_count = final_roles(scores, num_retrieval_heads)
    last = records[-max(1, len(records) // 10) :] if records else []
    training = {
        **{k: v for k, v in run.items() if k not in ("model", "threshold_rule")},
        "steps_completed": completed,
        "final_density": final_density,
        "density_over": "layers 1.. (layer 0 is forced retrieval and left out)",
        "selection": selection,
        "threshold_count": threshold_count,
        "distill_last_tenth": sum(r["distill"] for r in last) / len(last) if last else None,
        "scores": [[round(float(v), 5) for v in row] for row in scores],
        "elapsed_seconds": round(elapsed, 1),
        "sdpa_backends": [backend.name.lower() for backend in sdpa_backends],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "provenance": collect(str(device)),
    }
    rule_text = {
        "kuma_mean": "E[x] > 0.5 of the un-stretched Kumaraswamy (public LycheeDecode code)",
        "p_one": "P(z = 1) > 0.5",
        "expected_z": "E[z] > 0.5 of the rectified gate",
        "test_gate": "Louizos test-time gate clamp(1.2 sigmoid(log_alpha) - 0.1, 0, 1) > 0.5",
        "round": "sigmoid gate > 0.5 (rounded after training)",
    }[rule]
    document = roles_to_json(
        roles,
        info,
        threshold_rule={"name": rule, "gate": gate, "text": rule_text, "layer0": "forced retrieval"},
        training=training,
    )
    roles_path = out / ROLES if completed == steps else None
    if roles_path is not None:
        roles_path.write_text(json.dumps(document, indent=1) + "\n")
    plot_path = plot_training(records, roles, rule, out / PLOT) if records else out / PLOT
    return TrainResult(roles_path, log_path, plot_path, checkpoint_path, roles, final_density, completed)
