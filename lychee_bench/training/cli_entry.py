"""What `lychee-bench train-heads` calls: resolve and load the model, train, return the roles file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lychee_bench.training.data import PasskeyConfig, PasskeyData
from lychee_bench.training.hybrid import SparseConfig


def run_train_heads_cli(
    model_name: str | None,
    retrieval_heads: int | None,
    density: float | None,
    steps: int,
    ctx_min: int,
    ctx_max: int,
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
) -> Path:
    """Train head roles for a model and return the path of the roles JSON (loadable with `roles=<path>`).

    Refuses, before loading weights, bad settings (TrainConfig's checks), an unsupported architecture or a
    ctx_max past the model's context (the message names the --rope-scaling that fixes it). Rerunning with the
    same `out` resumes.
    """
    from lychee_bench.harness import models
    from lychee_bench.training.gates import GATES
    from lychee_bench.training.trainer import TrainConfig, train_heads

    problems = []  # every bad input at once, in the command's own option names
    if steps < 1:
        problems.append(f"--steps {steps}: train at least 1 step")
    if (retrieval_heads is None) == (density is None):
        problems.append("give exactly one of --retrieval-heads N (layer 0's KV heads included) and --density D")
    if gate not in GATES:
        problems.append(f"--gate {gate!r} is not a gate; use one of {', '.join(sorted(GATES))}")
    if not 0 < ctx_min <= ctx_max:
        problems.append(f"--ctx-min {ctx_min} and --ctx-max {ctx_max}: need 0 < ctx-min <= ctx-max")
    if problems:
        raise ValueError("; ".join(problems))
    source = models.resolve_model(model_name)
    config = models.load_config(source, rope_scaling)
    reasons = models.check_architecture(config) + models.check_context(config, ctx_max, source.name)
    if reasons:
        raise models.ModelError("; ".join(reasons))
    tokenizer = models.load_tokenizer(source)
    # The answer segment follows the context: its positions must fit too (a 25% margin over one sample's).
    probe = PasskeyData(tokenizer, PasskeyConfig(**{**asdict(data or PasskeyConfig()), "ctx_min": 1, "ctx_max": 1}))
    longest = ctx_max + int(1.25 * len(probe.segment_ids(0)))
    reasons = models.check_context(config, longest, source.name)
    if reasons:
        raise models.ModelError(f"context {ctx_max} plus the answer segment: " + "; ".join(reasons))
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
        seed=seed,
        checkpoint_every=checkpoint_every,
        device=device,
        data=data,
        sparse=sparse,
        prefill_chunk=prefill_chunk,
        model_info=info,
        progress=progress,
    )
    model = models.load_model(source, config, device, dtype)
    result = train_heads(model, tokenizer, settings)
    assert result.roles_path is not None  # a full run (no stop_after) always writes the roles
    return result.roles_path
