"""Turning summary rows into tables a person reads (pandas)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _cell(value: float, stderr: float) -> str:
    if math.isnan(stderr):
        return f"{value:.1f}"
    return f"{value:.1f} ± {stderr:.1f}"


def _score_blocks(rows: list[dict[str, Any]]) -> list[tuple[str, pd.DataFrame]]:
    """One (title, table) per (task, ctx, model): subtasks down, methods across, a sample-count column `n`
    first and the average row last."""
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
        blocks.append((f"{task} · ctx {ctx} · {model}", table))
    return blocks


def score_table(rows: list[dict[str, Any]]) -> str:
    """Subtasks down, methods across, one block per (task, ctx, model); the average row last."""
    if not rows:
        return "(no results)"
    return "\n\n".join(f"{title}\n{table.to_string()}" for title, table in _score_blocks(rows))


def score_markdown(rows: list[dict[str, Any]]) -> str:
    """The same scores as Markdown tables, methods down and subtasks across (the average last), so that many
    methods stay readable in a results note."""
    if not rows:
        return "(no results)"
    parts = []
    for title, table in _score_blocks(rows):
        counts = table["n"]
        flipped = table.drop(columns="n").T
        header = ["method", *(f"{name} (n={counts[name]})" for name in flipped.columns)]
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for method, cells in flipped.iterrows():
            lines.append(
                "| " + " | ".join([f"`{method}`", *(str(c) if isinstance(c, str) else "-" for c in cells)]) + " |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
