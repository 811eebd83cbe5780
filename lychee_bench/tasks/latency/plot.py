"""Latency records as a table (what `bench` and `report` print); their figures are report/plots.py's."""

from __future__ import annotations

from typing import Any

from lychee_bench.harness.records import is_number


def latest_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of every (model, method, batch, ctx) among the latency records."""
    latest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == "latency":
            latest[(record.get("model"), record["method"], record["batch"], record["ctx"])] = record
    return sorted(latest.values(), key=lambda r: (str(r.get("model")), r["method"], r["batch"], r["ctx"]))


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
            row.append("-" if value is None else format(value, spec) if is_number(value) or spec == "s" else str(value))
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
