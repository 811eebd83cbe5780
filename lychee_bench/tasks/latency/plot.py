"""Plots and a table of latency records: latency, speedup over full, and time over the byte floor vs context."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lychee_bench.harness.plot_style import context_axis, figure_styles, legend_outside, records_title
from lychee_bench.harness.records import read_records

PLOTS = {
    "latency_vs_context.png": ("decode_ms", "decode step (ms, median)"),
    "speedup_vs_context.png": ("speedup_vs_full", "speedup over full (same run)"),
    "floor_ratio_vs_context.png": ("time_over_floor", "time / byte floor (1 = copy bandwidth)"),
}


def latest_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of every (model, method, batch, ctx) among the latency records."""
    latest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == "latency":
            latest[(record.get("model"), record["method"], record["batch"], record["ctx"])] = record
    return sorted(latest.values(), key=lambda r: (str(r.get("model")), r["method"], r["batch"], r["ctx"]))


def plot_latency(records_path: Path | str, out_dir: Path | str) -> list[Path]:
    """Write the three PNGs (one panel per batch size, one line per method) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = latest_points(read_records(Path(records_path)))
    if not points:
        raise ValueError(f"no latency records under {records_path}; run `lychee-bench bench` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batches = sorted({p["batch"] for p in points})
    methods = sorted({p["method"] for p in points}, key=lambda m: (m != "full", m))
    labels = sorted({str(p.get("label", "")) for p in points})
    styles = figure_styles(methods)
    written = []
    for filename, (field, ylabel) in PLOTS.items():
        fig, axes = plt.subplots(1, len(batches), figsize=(4.6 * len(batches), 3.8), squeeze=False)
        for axis, batch in zip(axes[0], batches, strict=True):
            for method in methods:
                series = [p for p in points if p["batch"] == batch and p["method"] == method and _ok(p.get(field))]
                if series:
                    axis.plot([p["ctx"] for p in series], [p[field] for p in series], **styles[method])
            if field != "decode_ms":
                axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            context_axis(axis, [p["ctx"] for p in points])
            axis.set_ylabel(ylabel)
            axis.set_title(f"batch {batch}")
            axis.grid(True, alpha=0.3)
        legend_outside(fig, list(axes[0]))
        title = records_title(ylabel.split(" (")[0], points)
        fig.suptitle(title + (f" ({'; '.join(labels)})" if any(labels) else ""), fontsize=9)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _ok(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def latency_table(records: list[dict[str, Any]]) -> str:
    """The same numbers as the plots, as a text table."""
    columns = [
        ("model", "model", "s"),
        ("method", "method", "s"),
        ("batch", "B", "d"),
        ("ctx", "ctx", "d"),
        ("decode_ms", "decode ms", ".3f"),
        ("decode_p10_ms", "p10", ".3f"),
        ("decode_p90_ms", "p90", ".3f"),
        ("attention_ms_per_layer", "attn ms/layer", ".4f"),
        ("prefill_ms", "prefill ms", ".1f"),
        ("peak_memory_gib", "peak GiB", ".1f"),
        ("bytes_per_step", "GB/step", ".2f"),
        ("floor_ms", "floor ms", ".3f"),
        ("time_over_floor", "time/floor", ".2f"),
        ("speedup_vs_full", "vs full", ".2f"),
    ]
    rows = []
    for point in latest_points(records):
        row = []
        for key, _, spec in columns:
            value = point.get(key)
            if key == "bytes_per_step" and value is not None:
                value = value / 1e9
            row.append("-" if value is None else format(value, spec) if _ok(value) or spec == "s" else str(value))
        if point.get("error"):
            row[4] = "error"
        rows.append(row)
    header = [title for _, title, _ in columns]
    widths = (
        [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else [len(h) for h in header]
    )
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    labels = sorted({str(p.get("label", "")) for p in latest_points(records)})
    return "\n".join(lines + [f"({'; '.join(labels)})" if labels else ""])
