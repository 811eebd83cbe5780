"""What `lychee-bench calibrate` calls: resolve and load the model, build the calibration set, run the dense
pass, choose the method's layers, write the artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lychee_bench.calibration.collect import collect_statistics
from lychee_bench.calibration.data import CalibrationSet, calibration_prompts
from lychee_bench.calibration.kascade import calibrate_kascade
from lychee_bench.calibration.tidal import choose_reselect_layer
from lychee_bench.methods.artifacts import kascade_to_json, tidal_to_json, write_json
from lychee_bench.methods.kascade import KascadeConfig

METHODS = ("kascade", "tidal")
KASCADE_SETS = "(per KV head, probabilities summed over the group, min over queries, mean over prompts)"
TIDAL_SETS = "(per query head against the same head, mean over queries, heads and prompts)"


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
    """Calibrate `method` for a model; returns the artifact's path and its JSON content."""
    from lychee_bench.harness import models

    if method not in METHODS:
        raise ValueError(f"calibrate supports --method {' or '.join(METHODS)}, not {method!r}")
    source = models.resolve_model(model_name)
    config = models.load_config(source)
    reasons = models.check_architecture(config) + models.check_context(config, spec.ctx, source.name)
    if num_anchors is not None and not 1 <= num_anchors <= config.num_hidden_layers:
        reasons.append(f"--anchors {num_anchors} must lie in 1..{config.num_hidden_layers} (the model's layers)")
    if importance and method != "kascade":
        reasons.append("--importance weights Kascade's anchor choice; it does not apply to --method tidal")
    if method == "tidal" and selection_layer + 1 >= config.num_hidden_layers:
        reasons.append(f"TidalDecode's selection layer {selection_layer} leaves no later layer to re-select at")
    if reasons:
        raise models.ModelError("; ".join(reasons))
    tokenizer = models.load_tokenizer(source)
    prompts = calibration_prompts(tokenizer, spec)
    model = models.load_model(source, config, device, dtype)
    started = time.perf_counter()
    k = KascadeConfig().tokens_for(spec.ctx)  # Kascade's default k, used for both methods' sets
    stats = collect_statistics(model, prompts, spec.queries, k, progress=progress)
    calibration = {
        "command": f"lychee-bench calibrate --method {method} --model {source.name} --ctx {spec.ctx} "
        f"--samples {spec.samples} --seed {spec.seed}",
        "data": spec.describe(),
        "topk": k,
        "topk_rule": KascadeConfig().budget_rule(),
        "similarity": "attention-mass recall of a top-k set, relative to the layer's own top-k "
        + (KASCADE_SETS if method == "kascade" else TIDAL_SETS),
        "device": device,
        "dtype": dtype,
    }
    model_block = {"name": source.name, "fingerprint": source.fingerprint}
    num_layers, num_kv_heads = config.num_hidden_layers, config.num_key_value_heads
    if method == "kascade":
        anchors, head_map, info = calibrate_kascade(stats, num_anchors, importance)
        calibration.update(info, seconds=round(time.perf_counter() - started, 1))
        data = kascade_to_json(anchors, head_map, model_block, calibration)
    else:
        reselect, info = choose_reselect_layer(stats.recall_query_heads, selection_layer)
        calibration.update(info, seconds=round(time.perf_counter() - started, 1))
        data = tidal_to_json(selection_layer, reselect, num_layers, num_kv_heads, model_block, calibration)
    path = write_json(out or default_out(method, source.name), data)
    return path, data
