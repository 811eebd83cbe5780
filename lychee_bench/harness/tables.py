"""Turning summary rows into tables a person reads (pandas)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _cell(value: float, stderr: float) -> str:
    if math.isnan(stderr):
        return f"{value:.1f}"
    return f"{value:.1f} ± {stderr:.1f}"


def score_table(rows: list[dict[str, Any]]) -> str:
    """Subtasks down, methods across, one block per (task, ctx, model); the average row last."""
    if not rows:
        return "(no results)"
    frame = pd.DataFrame(rows)
    frame["batch"] = frame.get("batch")
    blocks = []
    for (task, ctx, model), group in frame.groupby(["task", "ctx", "model"], sort=True):
        group = group.assign(cell=[_cell(v, e) for v, e in zip(group["value"], group["stderr"], strict=True)])
        # Several batch sizes of the same sample set are one score; keep the row with most samples.
        group = group.sort_values("samples").drop_duplicates(["method", "subtask"], keep="last")
        table = group.pivot(index="subtask", columns="method", values="cell")
        order = sorted(i for i in table.index if i != "average") + (["average"] if "average" in table.index else [])
        table = table.loc[order]
        counts = group.groupby("subtask")["samples"].max()
        table.insert(0, "n", counts.loc[order].astype(int))
        blocks.append(f"{task} · ctx {ctx} · {model}\n{table.to_string()}")
    return "\n\n".join(blocks)
