"""What `lychee-bench calibrate` calls: resolve and load the model, build the calibration set, run the dense
pass, choose the method's layers, write the artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lychee_bench.calibration.collect import collect_statistics
from lychee_bench.calibration.data import CalibrationSet, calibration_prompts
from lychee_bench.harness.paths import unwritable_reason
from lychee_bench.methods.artifacts import write_json
from lychee_bench.methods.base import Calibration, CalibrationRequest, Method
from lychee_bench.methods.kascade import KascadeConfig


def calibrated_methods() -> list[str]:
    """The registered methods that declare a calibration (`Method.calibration`)."""
    from lychee_bench.harness.catalog import METHODS

    return [name for name in METHODS.names() if METHODS.get(name).calibration is not None]


def calibration_of(method: str) -> tuple[type[Method], Calibration]:
    """The method's class and its calibration; ValueError naming the methods that have one."""
    from lychee_bench.harness.catalog import METHODS

    cls = METHODS.get(method) if method in METHODS else None
    if cls is None or cls.calibration is None:
        raise ValueError(f"calibrate supports --method {' or '.join(calibrated_methods())}, not {method!r}")
    return cls, cls.calibration


def calibration_summary(method: str, path: Path, data: dict[str, Any]) -> list[str]:
    """What `lychee-bench calibrate` prints: the choice, and how to use the artifact."""
    cls, spec = calibration_of(method)
    method = cls.name
    chosen = f"{spec.shown} {data.get(spec.shown)}"
    use = spec.use.format(path=path, **{k: v for k, v in data.items() if k != "path"})
    return [
        f"{method}: {chosen} ({data['calibration']['seconds']} s); artifact: {path}",
        f"use it with {use}, or ship it as lychee_bench/artifacts/{method}/<model>.json",
    ]


def default_out(method: str, model_name: str) -> Path:
    return Path("runs") / "calibrate" / method / f"{Path(model_name).name}.json"


def run_calibrate(
    method: str,
    model_name: str | None,
    spec: CalibrationSet,
    out: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    num_anchors: int | None = None,
    selection_layer: int = 2,
    importance: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Calibrate `method` for a model; returns the artifact's path and its JSON content. The method's class says
    how (`Method.calibration`, `calibration_refusals`, `calibration_artifact`)."""
    from lychee_bench.harness import models

    cls, calibration_spec = calibration_of(method)
    method = cls.name  # an alias is followed
    source = models.resolve_model(model_name)
    config = models.load_config(source)
    request = CalibrationRequest(
        num_layers=config.num_hidden_layers,
        num_kv_heads=config.num_key_value_heads,
        num_anchors=num_anchors,
        selection_layer=selection_layer,
        importance=importance,
    )
    reasons = models.check_architecture(config) + models.check_context(config, spec.ctx, source.name)
    if num_anchors is not None and not 1 <= num_anchors <= config.num_hidden_layers:
        reasons.append(f"--anchors {num_anchors} must lie in 1..{config.num_hidden_layers} (the model's layers)")
    if importance and "importance" not in calibration_spec.options:
        reasons.append(f"--importance weights Kascade's anchor choice; it does not apply to --method {method}")
    reasons += cls.calibration_refusals(request)
    target = out or default_out(method, source.name)
    if (unwritable := unwritable_reason(target, "--out", kind="file")) is not None:
        reasons.append(unwritable)
    if reasons:
        raise models.ModelError("; ".join(reasons))
    tokenizer = models.load_tokenizer(source)
    prompts = calibration_prompts(tokenizer, spec)
    model = models.load_model(source, config, device, dtype)
    started = time.perf_counter()
    k = KascadeConfig().tokens_for(spec.ctx)  # Kascade's default k, used for every method's sets
    stats = collect_statistics(model, prompts, spec.queries, k, progress=progress)
    calibration = {
        "command": f"lychee-bench calibrate --method {method} --model {source.name} --ctx {spec.ctx} "
        f"--samples {spec.samples} --seed {spec.seed}",
        "data": spec.describe(),
        "topk": k,
        "topk_rule": KascadeConfig().budget_rule(),
        "similarity": "attention-mass recall of a top-k set, relative to the layer's own top-k "
        + calibration_spec.sets,
        "device": device,
        "dtype": dtype,
    }
    model_block = {  # the identity the artifact's seal covers (methods/artifacts.py)
        "name": source.name,
        "fingerprint": source.fingerprint,
        "model_type": config.model_type,
        "num_heads": config.num_attention_heads,
    }
    data = cls.calibration_artifact(stats, request, model_block, calibration)
    calibration["seconds"] = round(time.perf_counter() - started, 1)  # the artifact holds this dict
    path = write_json(target, data)
    return path, data
