"""The report's figures. Each builder returns a Figure, or None with the reason its data is absent.

- latency vs context and speedup: from kernel-bench sets (one decode layer) and run folders with end-to-end
  latency records (one decode step), each when it times at least two contexts;
- quality vs budget: from run sets whose sparse methods record a numeric `budget` in their method config
  (the `full` method of the same set, context and model is drawn as the reference line);
- quality vs speed: from run sets that hold a per-method latency metric (e.g. a latency task) for a method,
  context and model that also has scores. `elapsed_s` in RULER sample records is not used: the runner times
  all methods of a batch together, so it is the same number for every method.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lychee_bench.harness.plot_style import (
    METHOD_STYLES,
    context_axis,
    context_label,
    figure_styles,
    legend_outside,
    records_title,
)
from lychee_bench.regress.compare import metric_kind
from lychee_bench.regress.sources import ResultSet


@dataclass
class Plot:
    title: str
    caption: str
    sources: list[str]
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


def _figure(columns: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 3.4), squeeze=False)
    return fig, axes[0]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# Per result-set kind: the latency metric and the speedup metric that the two timing plots draw.
TIMING_METRICS = {"kernel-bench": ("median_ms", "speedup_vs_sdpa"), "run": ("decode_ms", "speedup_vs_full")}
TIMING_WHAT = {
    "kernel-bench": ("One decode layer (kernel bench)", "SDPA median time / LycheeDecode layer median time"),
    "run": ("One whole decode step (end-to-end bench)", "full's decode step / the method's, same run"),
}


def _timing_rows(result_set: ResultSet, which: int) -> list[dict[str, Any]]:
    metric = TIMING_METRICS[result_set.kind][which]
    rows = [r for r in result_set.rows if r["metric"] == metric and not str(r["method"]).startswith("step:")]
    return rows if len({r["ctx"] for r in rows}) >= 2 else []


def _timing_plot(result_set: ResultSet, rows: list[dict[str, Any]], which: int) -> Plot:
    batches = sorted({r["batch"] for r in rows}, key=str)
    fig, axes = _figure(len(batches))

    def label(row: dict[str, Any]) -> str:
        return str(row["method"]) + ("" if row["subtask"] == "-" else f" ({row['subtask']})")

    styles = figure_styles(label(row) for row in rows)
    for axis, batch in zip(axes, batches, strict=True):
        lines = defaultdict(list)
        for row in rows:
            if row["batch"] == batch:
                lines[label(row)].append((row["ctx"], row["value"]))
        for name, points in sorted(lines.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], **styles[name])
        context_axis(axis, [row["ctx"] for row in rows])
        if which == 0:
            axis.set(yscale="log", ylabel=f"{rows[0]['metric']} (median)")
        else:
            axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            axis.set(ylabel=f"{rows[0]['metric']} (×)")
        axis.set(title=f"batch {batch}")
        axis.grid(alpha=0.3)
    legend_outside(fig, list(axes))
    what = TIMING_WHAT[result_set.kind][which]
    models = ", ".join(sorted({str(r["model"]) for r in rows}))
    title = ("Latency vs context" if which == 0 else "Speedup vs context") + f" ({result_set.label})"
    # Run folders: model, batch, budget and hardware from the latency records; the kernel bench's model name
    # already states its device, shape and budget.
    timed = [t for t in result_set.timings if t.get("method") in {r["method"] for r in rows}]
    fig.suptitle(records_title(what, timed) if timed else f"{what}: {models}", fontsize=8)
    return Plot(title, f"{what}; {models}.", [result_set.label], _png(fig))


def latency_vs_context(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    plots = [_timing_plot(s, rows, 0) for s in sets if (rows := _timing_rows(s, 0))]
    if not plots:
        return [], "no kernel-bench or end-to-end latency result set times two or more contexts"
    return plots, None


def speedup(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    plots = [_timing_plot(s, rows, 1) for s in sets if (rows := _timing_rows(s, 1))]
    if not plots:
        return [], "no kernel-bench or end-to-end latency result set has a speedup at two or more contexts"
    return plots, None


def _subtask_means(samples: list[dict[str, Any]], key) -> dict[tuple, float]:
    """Mean over subtasks of the per-subtask mean score, per key(sample) (None keys are skipped)."""
    per_subtask: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        group = key(sample)
        if group is not None and metric_kind(sample.get("metric", "")) == "quality":
            per_subtask[group][str(sample.get("subtask"))].append(float(sample["value"]))
    return {g: sum(sum(v) / len(v) for v in subs.values()) / len(subs) for g, subs in per_subtask.items()}


def _budget(sample: dict[str, Any]) -> float | None:
    budget = (sample.get("method_config") or {}).get("budget")
    return float(budget) if isinstance(budget, int | float) and not isinstance(budget, bool) else None


def _dense_baseline(method: Any) -> bool:
    """Whether a record's method is the dense reference (its class says so: `Method.is_dense_baseline`)."""
    from lychee_bench.harness.catalog import METHODS

    try:
        return method in METHODS and bool(getattr(METHODS.get(method), "is_dense_baseline", False))
    except ImportError:  # a plugin that no longer loads: not the baseline
        return False


def quality_vs_budget(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    plots = []
    for result_set in (s for s in sets if s.kind == "run"):
        samples = result_set.samples
        sparse = _subtask_means(
            samples,
            lambda s: (s.get("method"), s.get("ctx"), s.get("model"), _budget(s)) if _budget(s) is not None else None,
        )
        if not sparse:
            continue
        full = _subtask_means(
            samples, lambda s: (s.get("ctx"), s.get("model")) if _dense_baseline(s.get("method")) else None
        )
        panels = sorted({(ctx, model) for (_, ctx, model, _) in sparse}, key=str)
        styles = figure_styles(m for (m, _, _, _) in sparse)
        fig, axes = _figure(len(panels))
        for axis, (ctx, model) in zip(axes, panels, strict=True):
            for method in sorted({m for (m, c, mo, _) in sparse if (c, mo) == (ctx, model)}):
                points = sorted((b, v) for (m, c, mo, b), v in sparse.items() if (m, c, mo) == (method, ctx, model))
                axis.plot([p[0] for p in points], [p[1] for p in points], **styles[method])
            if (ctx, model) in full:
                colour = METHOD_STYLES["full"][0]
                axis.axhline(full[(ctx, model)], color=colour, linestyle="--", linewidth=1, label="full (dense)")
            context_axis(axis, [b for (_, c, mo, b) in sparse if (c, mo) == (ctx, model)], "budget (tokens)")
            axis.set(ylabel="mean score over subtasks", title=f"{model}, ctx {_k(ctx)}")
            axis.set_ylim(-2, 102)
            axis.grid(alpha=0.3)
        legend_outside(fig, list(axes))
        batches = sorted({s.get("batch") for s in samples if s.get("batch") is not None}, key=str)
        if batches:
            fig.suptitle("batch " + ", ".join(map(str, batches)), fontsize=8)
        plots.append(
            Plot(
                f"Quality vs budget ({result_set.label})",
                "Unweighted mean over the subtasks each method ran; budget from the method config.",
                [result_set.label],
                _png(fig),
            )
        )
    if not plots:
        return [], "no run result set has a sparse method with a numeric budget in its method config"
    return plots, None


def quality_vs_speed(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    scores: dict[tuple, tuple[float, str]] = {}
    speeds: dict[tuple, tuple[float, str, str]] = {}
    for result_set in (s for s in sets if s.kind == "run"):
        for key, value in _subtask_means(
            result_set.samples, lambda s: (s.get("method"), s.get("ctx"), s.get("model"))
        ).items():
            scores[key] = (value, result_set.label)
        for row in result_set.rows:
            key = (row["method"], row["ctx"], row["model"])
            # A whole decode step is the speed a user feels; other latency metrics stand in only without it.
            if metric_kind(row["metric"]) == "latency" and not math.isnan(row["value"]):
                if key not in speeds or row["metric"] == "decode_ms":
                    speeds[key] = (row["value"], row["metric"], result_set.label)
    joined = sorted(set(scores) & set(speeds), key=str)
    if not joined:
        return [], "no method has both quality scores and a per-method latency metric at the same context and model"
    fig, axes = _figure(1)
    styles = figure_styles(str(key[0]) for key in joined)
    for key in joined:
        latency, metric, _ = speeds[key]
        axes[0].plot([latency], [scores[key][0]], **{**styles[str(key[0])], "linestyle": "none"})
        axes[0].annotate(f"{_k(key[1])}", (latency, scores[key][0]), fontsize=6, xytext=(3, 3),
                         textcoords="offset points")  # fmt: skip
    legend_outside(fig, list(axes))
    models = sorted({str(key[2]) for key in joined})
    fig.suptitle("model " + ", ".join(models) + " · labels: context", fontsize=8)
    metrics = sorted({speeds[k][1] for k in joined})
    axes[0].set(xlabel=" / ".join(metrics) + " (lower is faster)", ylabel="mean score over subtasks")
    axes[0].grid(alpha=0.3)
    sources = sorted({scores[k][1] for k in joined} | {speeds[k][2] for k in joined})
    caption = "Each point: one method at one context and model; score and latency matched on method, ctx, model."
    return [Plot("Quality vs speed", caption, sources, _png(fig))], None


def _k(ctx: Any) -> str:
    return context_label(ctx) if isinstance(ctx, int | float) else str(ctx)


BUILDERS = (
    ("latency vs context", latency_vs_context),
    ("speedup", speedup),
    ("quality vs budget", quality_vs_budget),
    ("quality vs speed", quality_vs_speed),
)


def build_plots(sets: list[ResultSet]) -> tuple[list[Plot], list[tuple[str, str]]]:
    """All plots whose data exist, and (plot, reason) for those that could not be drawn."""
    plots, absent = [], []
    for name, builder in BUILDERS:
        made, reason = builder(sets)
        plots += made
        if reason:
            absent.append((name, reason))
    return plots, absent
