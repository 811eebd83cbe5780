"""The figures of `lychee-bench plot` and of the HTML report, each from result sets (committed records).

Each builder returns its figures, or none with the reason its data are absent:
- latency, speedup over full and time over the byte floor vs context, one panel per batch: from kernel-bench
  sets (one decode layer) and run folders with end-to-end latency records (one decode step), each when it times
  at least two contexts. Stock transformers (`transformers`, timed by `bench` beside the engine) is drawn as a
  second reference where the run timed it;
- the decode-step breakdown at a run's largest context: attention (all layers) and the rest of the step per
  method, with the byte floor marked;
- quality vs budget: run sets whose sparse methods record a numeric `budget` in their method config (the dense
  baseline of the same set, context and model is drawn as the reference line);
- quality vs speed, the Pareto view: a method's mean score and its decode step at the same context and model,
  joined across result sets (a quality run and a latency run may come from different folders);
- per-subtask bars (RULER's subtasks, LongBench's datasets): one group per subtask, one bar per method.

Every figure keeps its layout as matplotlib laid it out (axes' data areas, legend boxes, each method's colours)
so tests and the report's checks read overlaps and colours from the layout, not from pixels.
"""

from __future__ import annotations

import base64
import io
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lychee_bench.harness.plot_style import (
    FIRST_CLASS,
    VARIANT_LINESTYLES,
    context_axis,
    context_label,
    figure_styles,
    legend_outside,
    method_of,
    records_title,
)
from lychee_bench.harness.records import is_number
from lychee_bench.regress.compare import metric_kind
from lychee_bench.regress.sources import ResultSet


@dataclass
class Plot:
    name: str  # file stem for `lychee-bench plot`, unique among one call's figures
    kind: str  # the builder that drew it (see BUILDERS)
    title: str
    caption: str
    sources: list[str]
    png: bytes
    layout: dict[str, Any] = field(default_factory=dict)

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


def _figure(columns: int, rows: int = 1, width: float = 4.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    return fig, [axis for row in axes for axis in row]


def figure_layout(fig) -> dict[str, Any]:
    """Where matplotlib put things, in display pixels: each axes' data area, each legend's box, and the colours
    each method is drawn in (lines and bars, by the method their label names)."""
    import matplotlib.colors

    renderer = fig.canvas.get_renderer()

    def box(artist) -> list[float]:
        return [round(float(v), 1) for v in artist.get_window_extent(renderer).bounds]  # x, y, width, height

    legends = [axis.get_legend() for axis in fig.axes if axis.get_legend()] + list(fig.legends)
    colours: dict[str, set[str]] = defaultdict(set)
    for axis in fig.axes:
        for line in axis.get_lines():
            if not str(line.get_label()).startswith("_"):
                colours[method_of(line.get_label())].add(matplotlib.colors.to_hex(line.get_color()))
        for container in axis.containers:
            label = str(container.get_label())
            if not label.startswith("_") and container.patches:
                colours[method_of(label)].add(matplotlib.colors.to_hex(container.patches[0].get_facecolor()))
    return {
        "axes": [box(axis) for axis in fig.axes if axis.get_visible()],
        "legends": [box(legend) for legend in legends],
        "colours": {method: sorted(found) for method, found in sorted(colours.items())},
    }


def _render(fig) -> tuple[bytes, dict[str, Any]]:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # tight_layout gives up on wide tick labels: the outside legend still fits
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    layout = figure_layout(fig)
    plt.close(fig)
    return buffer.getvalue(), layout


def _plot(name: str, kind: str, title: str, caption: str, sources: list[str], fig) -> Plot:
    png, layout = _render(fig)
    return Plot(re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_"), kind, title, caption, sources, png, layout)


# ---- timing against context -------------------------------------------------------------------------------------

# metric -> (kernel-bench row metric, run-folder latency record field, y label, what it is)
TIMING = {
    "latency": ("median_ms", "decode_ms", "ms (median)", "Latency vs context"),
    "speedup": ("speedup_vs_sdpa", "speedup_vs_full", "speedup (×)", "Speedup vs context"),
    "floor": (None, "time_over_floor", "time / byte floor (1 = copy bandwidth)", "Time over the floor vs context"),
}
TIMING_WHAT = {
    "kernel-bench": "One decode layer (kernel bench); speedup = SDPA median / LycheeDecode layer median",
    "run": "One whole decode step (end-to-end bench); speedup = full's step / the method's, same run",
}


def _timing_points(result_set: ResultSet, which: str) -> list[dict[str, Any]]:
    """(label, batch, ctx, value) points of one timing metric; empty unless two or more contexts are timed."""
    from lychee_bench.tasks.latency.plot import latest_points

    row_metric, record_field, _, _ = TIMING[which]
    points = []
    if result_set.kind == "kernel-bench" and row_metric:
        for row in result_set.rows:
            if row["metric"] == row_metric and not str(row["method"]).startswith("step:"):
                label = str(row["method"]) + ("" if row["subtask"] == "-" else f" ({row['subtask']})")
                points.append({"label": label, "batch": row["batch"], "ctx": row["ctx"], "value": row["value"]})
    elif result_set.kind == "run":
        for record in latest_points(result_set.timings):
            if is_number(record.get(record_field)):
                points.append({"label": str(record["method"]), "batch": record["batch"], "ctx": record["ctx"],
                               "value": float(record[record_field])})  # fmt: skip
    return points if len({p["ctx"] for p in points}) >= 2 else []


def _timing_plot(result_set: ResultSet, points: list[dict[str, Any]], which: str) -> Plot:
    _, _, ylabel, heading = TIMING[which]
    batches = sorted({p["batch"] for p in points}, key=str)
    fig, axes = _figure(len(batches))
    styles = figure_styles(p["label"] for p in points)
    for axis, batch in zip(axes, batches, strict=True):
        lines = defaultdict(list)
        for point in points:
            if point["batch"] == batch:
                lines[point["label"]].append((point["ctx"], point["value"]))
        for label, series in sorted(lines.items()):
            series.sort()
            axis.plot([p[0] for p in series], [p[1] for p in series], **styles[label])
        context_axis(axis, [p["ctx"] for p in points])
        if which == "latency":
            axis.set_yscale("log")
        else:
            axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axis.set(ylabel=ylabel, title=f"batch {batch}")
        axis.grid(alpha=0.3)
    legend_outside(fig, axes)
    what = TIMING_WHAT[result_set.kind]
    if result_set.kind == "run":
        labels = {p["label"] for p in points}
        fig.suptitle(
            records_title(tagged(what, result_set), [t for t in result_set.timings if t.get("method") in labels]),
            fontsize=8,
        )
        models = ", ".join(sorted({str(t.get("model")) for t in result_set.timings}))
    else:  # the kernel bench's model name states its device, shape and budget
        models = ", ".join(sorted({str(r["model"]) for r in result_set.rows}))
        fig.suptitle(f"{what}: {models}", fontsize=8)
    caption = f"{what}; {models}."
    if which == "speedup" and any(method_of(p["label"]) == "transformers" for p in points):
        caption += " The grey line is stock transformers (DynamicCache + SDPA, eager), timed in the same run."
    return _plot(f"{which}_vs_context_{result_set.label}", which, f"{heading} ({result_set.label})", caption,
                 [result_set.label], fig)  # fmt: skip


def _timing_builder(which: str) -> Callable[[list[ResultSet]], tuple[list[Plot], str | None]]:
    def build(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
        plots = [_timing_plot(s, points, which) for s in sets if (points := _timing_points(s, which))]
        if not plots:
            return [], f"no kernel-bench or end-to-end latency result set has {TIMING[which][1]} at two contexts"
        return plots, None

    return build


# ---- the decode step, broken down ------------------------------------------------------------------------------


def step_breakdown(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    """Per run set with latency records that time attention alone: at its largest context, per batch, each
    method's step as attention + the rest, and its byte floor."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from lychee_bench.tasks.latency.plot import latest_points

    plots = []
    for result_set in (s for s in sets if s.kind == "run" and s.timings):
        points = [
            p for p in latest_points(result_set.timings)
            if is_number(p.get("decode_ms")) and is_number(p.get("attention_total_ms"))
        ]  # fmt: skip
        if not points:
            continue
        for model in sorted({str(p.get("model")) for p in points}):
            mine = [p for p in points if str(p.get("model")) == model]
            ctx = max(p["ctx"] for p in mine)
            mine = [p for p in mine if p["ctx"] == ctx]
            batches = sorted({p["batch"] for p in mine})
            labels = sorted({p["method"] for p in mine}, key=lambda m: (m != "full", method_of(m) != "lychee", m))
            styles = figure_styles(labels)
            fig, axes = _figure(len(batches), width=4.6, height=0.45 * len(labels) + 1.4)
            for axis, batch in zip(axes, batches, strict=True):
                for row, label in enumerate(labels):
                    point = next((p for p in mine if p["method"] == label and p["batch"] == batch), None)
                    if point is None:
                        continue
                    attention = point["attention_total_ms"]
                    rest = max(point["decode_ms"] - attention, 0.0)
                    colour = styles[label]["color"]
                    axis.barh([row], [attention], color=colour, label=label)
                    axis.barh([row], [rest], left=[attention], color=colour, alpha=0.35, hatch="//",
                              edgecolor=colour, label="_rest")  # fmt: skip
                    if is_number(point.get("floor_ms")):
                        axis.plot([point["floor_ms"]], [row], marker="|", markersize=16, color="black",
                                  markeredgewidth=2, label="_floor")  # fmt: skip
                axis.set_yticks(range(len(labels)), labels, fontsize=7)
                axis.invert_yaxis()
                axis.set(xlabel="ms per decode step", title=f"batch {batch}")
                axis.grid(alpha=0.3, axis="x")
            key = [Patch(facecolor="grey", label="attention, all layers"),
                   Patch(facecolor="grey", alpha=0.35, hatch="//", label="rest of the step"),
                   Line2D([], [], color="black", marker="|", linestyle="none", markersize=12, markeredgewidth=2,
                          label="byte floor (bytes read / copy bandwidth)")]  # fmt: skip
            axes[-1].legend(handles=key, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
            fig.suptitle(records_title(f"Decode step at {context_label(ctx)}", mine), fontsize=8)
            plots.append(
                _plot(
                    f"step_breakdown_{result_set.label}_{model}",
                    "breakdown",
                    f"Decode-step breakdown ({result_set.label}, {model}, {context_label(ctx)})",
                    "Attention is all layers' attention calls timed alone (one graph); the rest is the step minus "
                    "that; the floor is the bytes the step must read over the measured copy bandwidth.",
                    [result_set.label],
                    fig,
                )
            )
    if not plots:
        return [], "no run result set has latency records that time attention alone (attention_total_ms)"
    return plots, None


# ---- quality ----------------------------------------------------------------------------------------------------


def subtask_means(samples: list[dict[str, Any]], key) -> dict[tuple, tuple[float, int]]:
    """(mean over subtasks of the per-subtask mean score, samples) per key(sample); None keys are skipped."""
    per_subtask: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        group = key(sample)
        if group is not None and metric_kind(sample.get("metric", "")) == "quality" and is_number(sample.get("value")):
            per_subtask[group][str(sample.get("subtask"))].append(float(sample["value"]))
    return {
        group: (sum(sum(v) / len(v) for v in subs.values()) / len(subs), sum(len(v) for v in subs.values()))
        for group, subs in per_subtask.items()
    }


def budget_of(sample: dict[str, Any]) -> float | None:
    budget = (sample.get("method_config") or {}).get("budget")
    return float(budget) if is_number(budget) else None


def label_of(sample: dict[str, Any]) -> str:
    return str(sample.get("label") or sample.get("method"))


def without_budget(label: str) -> str:
    """`kascade[budget=1024;anchors=x]` -> `kascade[anchors=x]`, `quest[budget=256]` -> `quest`."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label
    kept = [item for item in rest.rstrip("]").split(";") if item and not item.startswith("budget=")]
    return f"{name}[{';'.join(kept)}]" if kept else name


def dense_baseline(method: Any) -> bool:
    """Whether a record's method is the dense reference (its class says so: `Method.is_dense_baseline`)."""
    from lychee_bench.harness.catalog import METHODS

    try:
        return method in METHODS and bool(getattr(METHODS.get(method), "is_dense_baseline", False))
    except ImportError:  # a plugin that no longer loads: not the baseline
        return False


def bars_title(task: str) -> str:
    """The task's title for its per-subtask bars (its class's `bars_title`, harness/task.py)."""
    from lychee_bench.harness.catalog import TASKS

    try:
        title = getattr(TASKS.get(task), "bars_title", None) if task in TASKS else None
    except ImportError:  # a plugin task that no longer loads
        title = None
    return str(title) if title else f"{task} per subtask"


def quality_vs_budget(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    plots = []
    for result_set in (s for s in sets if s.kind == "run"):
        samples = result_set.samples
        sparse = subtask_means(
            samples,
            lambda s: (
                (without_budget(label_of(s)), s.get("ctx"), s.get("model"), budget_of(s))
                if budget_of(s) is not None
                else None
            ),
        )
        if len({b for (*_, b) in sparse}) < 2:  # one budget is a point, not a curve
            continue
        full = subtask_means(
            samples, lambda s: (s.get("ctx"), s.get("model")) if dense_baseline(s.get("method")) else None
        )
        panels = sorted({(ctx, model) for (_, ctx, model, _) in sparse}, key=str)
        styles = figure_styles(m for (m, _, _, _) in sparse)
        fig, axes = _figure(len(panels))
        for axis, (ctx, model) in zip(axes, panels, strict=True):
            for method in sorted({m for (m, c, mo, _) in sparse if (c, mo) == (ctx, model)}):
                mine = [(b, v) for (m, c, mo, b), (v, _) in sparse.items() if (m, c, mo) == (method, ctx, model)]
                points = sorted(mine)
                axis.plot([p[0] for p in points], [p[1] for p in points], **styles[method])
            if (ctx, model) in full:
                colour = figure_styles(["full"])["full"]["color"]
                axis.axhline(full[(ctx, model)][0], color=colour, linestyle="--", linewidth=1, label="full (dense)")
            context_axis(axis, [b for (_, c, mo, b) in sparse if (c, mo) == (ctx, model)], "budget (tokens)")
            axis.set(ylabel="mean score over subtasks", title=f"{model}, ctx {_k(ctx)}")
            axis.set_ylim(-2, 102)
            axis.grid(alpha=0.3)
        legend_outside(fig, axes)
        fig.suptitle(
            records_title(tagged("Quality vs budget", result_set), _with_hardware(samples, result_set)), fontsize=8
        )
        plots.append(
            _plot(
                f"quality_vs_budget_{result_set.label}",
                "quality-budget",
                f"Quality vs budget ({result_set.label})",
                "Unweighted mean over the subtasks each method ran; budget from the method config.",
                [result_set.label],
                fig,
            )
        )
    if not plots:
        return [], "no run result set has a sparse method at two or more numeric budgets"
    return plots, None


def _batch(batch: Any) -> float:
    return float(batch) if is_number(batch) else math.inf


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and score (higher), by latency."""
    front, best = [], -math.inf
    for latency, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((latency, score))
            best = score
    return front


def quality_vs_speed(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    """One panel per (model, ctx) where some method has both a score and a decode-step time; sets are joined:
    the score from the quality set with the most samples, the time from the latency set (batch 1 where timed)."""
    scores: dict[tuple, tuple[float, int, str]] = {}
    speeds: dict[tuple, tuple[float, Any, str, str]] = {}  # value, batch, source, metric
    for result_set in (s for s in sets if s.kind == "run"):
        for key, (value, count) in subtask_means(
            result_set.samples, lambda s: (label_of(s), s.get("ctx"), s.get("model"))
        ).items():
            if key not in scores or count >= scores[key][1]:
                scores[key] = (value, count, result_set.label)
        for row in result_set.rows:
            if metric_kind(row["metric"]) != "latency" or not is_number(row["value"]):
                continue
            key = (row["method"], row["ctx"], row["model"])
            # A whole decode step is the speed a user feels (other latency metrics stand in only without it);
            # of several batches, the smallest.
            rank = (row["metric"] != "decode_ms", _batch(row["batch"]))
            if key not in speeds or rank < (speeds[key][3] != "decode_ms", _batch(speeds[key][1])):
                speeds[key] = (row["value"], row["batch"], result_set.label, row["metric"])
    joined = sorted(set(scores) & set(speeds), key=str)
    if not joined:
        return [], "no method has both quality scores and a latency metric at the same context and model"
    panels = sorted({(key[2], key[1]) for key in joined}, key=str)
    fig, axes = _figure(len(panels))
    styles = figure_styles(str(key[0]) for key in joined)
    for axis, (model, ctx) in zip(axes, panels, strict=True):
        mine = [key for key in joined if (key[2], key[1]) == (model, ctx)]
        for key in mine:
            style = {**styles[str(key[0])], "linestyle": "none", "markersize": 8}
            axis.plot([speeds[key][0]], [scores[key][0]], **style)
        front = pareto_front([(speeds[k][0], scores[k][0]) for k in mine])
        axis.plot([p[0] for p in front], [p[1] for p in front], color="grey", linewidth=1, linestyle=":",
                  drawstyle="steps-post", zorder=1, label="_front")  # fmt: skip
        batches = sorted({str(speeds[k][1]) for k in mine})
        metrics = sorted({speeds[k][3] for k in mine})
        axis.set(xlabel=f"{' / '.join(metrics)}, batch {', '.join(batches)} (lower is faster)",
                 ylabel="mean score over subtasks", title=f"{model}, ctx {_k(ctx)}")  # fmt: skip
        axis.grid(alpha=0.3)
    legend_outside(fig, axes)
    fig.suptitle("Quality vs speed; the dotted line joins the Pareto-optimal methods", fontsize=8)
    sources = sorted({scores[k][2] for k in joined} | {speeds[k][2] for k in joined}, key=lambda s: int(s[1:]))
    caption = ("Each point: one method at one context and model; its mean score and its decode step matched on "
               "method, context and model, possibly from two result sets (the sources).")  # fmt: skip
    return [_plot("quality_vs_speed", "quality-speed", "Quality vs speed", caption, sources, fig)], None


MAX_BARS = 10  # bars per subtask group before a figure is split by budget
HATCHES = (None, "///", "...", "xxx", "\\\\\\", "+++", "ooo", "---")  # a method's variants, in figure_styles' order


def subtask_bars(sets: list[ResultSet]) -> tuple[list[Plot], str | None]:
    """Per run set and (task, model, ctx) with two or more subtasks: grouped bars, one per method (and budget,
    where a method ran several); split into one figure per budget when there would be too many bars."""
    plots = []
    for result_set in (s for s in sets if s.kind == "run"):
        groups: dict[tuple, dict[tuple, dict[str, list[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        for sample in result_set.samples:
            if metric_kind(sample.get("metric", "")) == "quality" and is_number(sample.get("value")):
                series = (without_budget(label_of(sample)), budget_of(sample))
                group = (str(sample.get("task")), str(sample.get("model")), sample.get("ctx"))
                groups[group][series][str(sample.get("subtask"))].append(float(sample["value"]))
        for (task, model, ctx), by_series in sorted(groups.items(), key=str):
            subtasks = sorted({sub for per in by_series.values() for sub in per})
            if len(subtasks) < 2:
                continue
            budgets = sorted({b for (_, b) in by_series if b is not None})
            splits = [None] if len(by_series) <= MAX_BARS or not budgets else budgets
            for budget in splits:
                chosen = sorted(s for s in by_series if budget is None or s[1] in (None, budget))
                plots.append(_bars(result_set, task, model, ctx, budget, subtasks, chosen, by_series))
    if not plots:
        return [], "no run result set scores two or more subtasks of a task"
    return plots, None


def _bars(result_set, task, model, ctx, budget, subtasks, chosen, by_series) -> Plot:
    def name(series: tuple) -> str:
        label, b = series
        return label if b is None or (budget is not None) or len({s[1] for s in chosen if s[0] == label}) < 2 \
            else f"{label} (budget {b:g})"  # fmt: skip

    chosen = sorted(chosen, key=lambda s: (not dense_baseline(method_of(s[0])), method_of(s[0]) != FIRST_CLASS, s))
    names = [name(s) for s in chosen]
    styles = figure_styles(names)
    width = 0.8 / max(len(chosen), 1)
    fig, axes = _figure(1, width=max(6.0, 0.32 * len(subtasks) * max(len(chosen), 2) / 2 + 2), height=3.6)
    axis = axes[0]
    for index, (series, label) in enumerate(zip(chosen, names, strict=True)):
        per = by_series[series]
        heights = [sum(per[s]) / len(per[s]) if per.get(s) else 0.0 for s in subtasks]
        positions = [i + (index - (len(chosen) - 1) / 2) * width for i in range(len(subtasks))]
        style = styles[label]
        hatch = HATCHES[VARIANT_LINESTYLES.index(style["linestyle"]) % len(HATCHES)]
        axis.bar(positions, heights, width=width, color=style["color"], label=label, hatch=hatch,
                 edgecolor="white", linewidth=0.3)  # fmt: skip
    axis.set_xticks(range(len(subtasks)), subtasks, rotation=40, ha="right", fontsize=7)
    axis.set(ylabel="score (0-100)", ylim=(0, 102))
    axis.grid(alpha=0.3, axis="y")
    legend_outside(fig, axes)
    what = bars_title(task)
    budget_text = f", budget {budget:g}" if budget is not None else ""
    first = _with_hardware(result_set.samples[:1], result_set)
    fig.suptitle(records_title(tagged(f"{what} at {_k(ctx)}{budget_text}", result_set), first), fontsize=8)
    return _plot(
        f"{task}_subtasks_{result_set.label}_{model}_{ctx}" + (f"_budget{budget:g}" if budget is not None else ""),
        "subtasks",
        f"{what} ({result_set.label}, {model}, {_k(ctx)}{budget_text})",
        "Mean score per subtask; a method's variants share its colour, each with its own hatching.",
        [result_set.label],
        fig,
    )


def tagged(what: str, result_set: ResultSet) -> str:
    """A figure's subject with the tags its run's author gave the set (`superseded`, `tuning`, ...), so a figure
    drawn from such a set says so wherever it is shown."""
    return f"{what} [tagged {', '.join(result_set.tags)}]" if result_set.tags else what


def _with_hardware(samples: list[dict[str, Any]], result_set: ResultSet) -> list[dict[str, Any]]:
    """Sample records with the device their run's manifest names (sample records do not carry it), for titles."""
    device = ((result_set.provenance().get("provenance") or {}).get("device") or {}).get("name")
    if not device:
        return samples
    return [{**sample, "device": sample.get("device") or device} for sample in samples]


def _k(ctx: Any) -> str:
    return context_label(ctx) if isinstance(ctx, int | float) else str(ctx)


BUILDERS = (
    ("latency vs context", _timing_builder("latency")),
    ("speedup", _timing_builder("speedup")),
    ("time over the floor", _timing_builder("floor")),
    ("decode-step breakdown", step_breakdown),
    ("quality vs budget", quality_vs_budget),
    ("quality vs speed", quality_vs_speed),
    ("per-subtask bars", subtask_bars),
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
