"""The report's headline: per method, its quality at each context and budget, and its speed at the longest context
timed (speedup over full, time over the byte floor, the step itself). One source of numbers for the HTML page's
headline tables and `report --format json` (rows with `"summary": "headline"`), so the two always agree.

Which numbers stand:
- Result sets tagged for the appendix (sources.APPENDIX_TAGS: tuning, superseded, check, ablation) are left out.
- Quality: the unweighted mean over subtasks of the per-subtask mean score, per (model, task, context, budget,
  method). A method configuration that runs named differently (an artifact by its file or by its shipped name, a
  default spelled out or left out) is one row, under its shortest label (`configuration_key`). Where two sets hold
  the same entry, the one with more samples stands (a tie: the later path).
- Speed: per model one latency set, the one that times the most (method, batch) points at its longest context
  (then: more contexts, then the later path), so every speedup in a row comes from one run on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lychee_bench.harness import records
from lychee_bench.harness.plot_style import context_label, method_of
from lychee_bench.harness.records import config_hash, is_number
from lychee_bench.regress.sources import ResultSet
from lychee_bench.report.plots import budget_of, dense_baseline, label_of, subtask_means, without_budget

SPEED_METRICS = (
    ("speedup_vs_full", "× full"),
    ("time_over_floor", "× floor"),
    ("decode_ms", "step ms"),
)


def records_file(result_set: ResultSet) -> Path:
    """The file a result set's numbers come from: its (first) records file, or the kernel-bench JSON."""
    if result_set.kind == "run":
        files = records.run_files(result_set.path)
        return files[0] if files else result_set.path
    return result_set.path


def _row(part: str, result_set: ResultSet, **fields: Any) -> dict[str, Any]:
    row = {"summary": "headline", "part": part, **fields, "source": result_set.label,
           "records": str(records_file(result_set))}  # fmt: skip
    keys = ("part", "model", "task", "ctx", "budget", "batch", "method", "metric")
    row["id"] = "|".join(str(row.get(key, "")) for key in keys)
    return row


def configuration_key(sample: dict[str, Any]) -> str | None:
    """Which configuration a sample ran, whatever its label called the artifacts: the method, the options its label
    gives (the budget left out: it has its own column), and for each option the record resolved to an artifact
    (`roles_used`, `anchors_used`, `reselect_layer_used`) the artifact's checksum or value instead of how the
    label named it. So `duo`, `duo[roles=<a file>]` and `duo[roles=<shipped name>]` over the same roles are one
    configuration. None for records without a config."""
    config = sample.get("method_config")
    if not isinstance(config, dict):
        return None
    name, _, rest = without_budget(label_of(sample)).partition("[")
    options = dict(item.split("=", 1) for item in rest.rstrip("]").split(";") if "=" in item)
    resolved = {}
    for key, value in config.items():
        if key.endswith("_used"):
            option = key.removesuffix("_used")
            options.pop(option, None)
            resolved[option] = value.get("sha256", value) if isinstance(value, dict) else value
    return config_hash([name, options, resolved])


def display_labels(sets: list[ResultSet]) -> dict[int, str]:
    """The method label the headline shows each sample of the run sets under (keyed by the sample's `id`; budget
    left out): per configuration (`configuration_key`), one of its labels that names no file if it has one, the
    shortest of those; a sample without a config keeps its own label."""
    keyed = [
        (sample, configuration_key(sample), without_budget(label_of(sample)))
        for result_set in sets
        if result_set.kind == "run"
        for sample in result_set.samples
    ]
    best: dict[str, str] = {}
    for _, config, label in keyed:
        if config is not None:
            best[config] = min(best.get(config, label), label, key=_label_preference)
    return {id(sample): best.get(config, label) for sample, config, label in keyed}


def _label_preference(label: str) -> tuple:
    """A label without a file path first (a shipped name reads the same on every machine), then the shortest."""
    return ("/" in label, len(label), label)


def quality_rows(sets: list[ResultSet]) -> list[dict[str, Any]]:
    best: dict[tuple, dict[str, Any]] = {}
    labels = display_labels(sets)  # the budget has its own column
    for result_set in sets:
        if result_set.kind != "run":
            continue
        means = subtask_means(
            result_set.samples,
            lambda s: (str(s.get("model")), str(s.get("task")), s.get("ctx"), budget_of(s), labels[id(s)]),
        )
        for (model, task, ctx, budget, method), (value, count) in means.items():
            key = (model, task, ctx, budget, method)
            if key in best and count < best[key]["samples"]:
                continue
            best[key] = _row("quality", result_set, model=model, task=task, subtask="mean over subtasks", ctx=ctx,
                             budget=budget, method=method, metric="mean score over subtasks", value=value,
                             samples=count)  # fmt: skip
    return sorted(best.values(), key=lambda r: (r["model"], r["task"], r["ctx"], _order(r["method"]), str(r["budget"])))


def speed_set(sets: list[ResultSet], model: str) -> ResultSet | None:
    """The latency set that stands for `model`'s speed (see the module note)."""
    scored = []
    for result_set in sets:
        mine = [t for t in result_set.timings if str(t.get("model")) == model and is_number(t.get("decode_ms"))]
        if not mine:
            continue
        longest = max(t["ctx"] for t in mine)
        points = {(t["method"], t["batch"]) for t in mine if t["ctx"] == longest}
        scored.append(((len(points), len({t["ctx"] for t in mine}), str(result_set.path)), result_set))
    return max(scored, key=lambda item: item[0])[1] if scored else None


def speed_rows(sets: list[ResultSet]) -> list[dict[str, Any]]:
    from lychee_bench.tasks.latency.plot import latest_points

    rows = []
    runs = [s for s in sets if s.kind == "run"]
    for model in sorted({str(t.get("model")) for s in runs for t in s.timings}):
        chosen = speed_set(runs, model)
        if chosen is None:
            continue
        timed = latest_points(chosen.timings)
        mine = [t for t in timed if str(t.get("model")) == model and is_number(t.get("decode_ms"))]
        longest = max(t["ctx"] for t in mine)
        for point in sorted((t for t in mine if t["ctx"] == longest), key=lambda t: (_order(t["method"]), t["batch"])):
            for metric, _ in SPEED_METRICS:
                if is_number(point.get(metric)):
                    rows.append(_row("speed", chosen, model=model, task="latency", subtask="-", ctx=longest,
                                     batch=point["batch"], method=point["method"], metric=metric,
                                     value=float(point[metric])))  # fmt: skip
    return rows


def headline_rows(sets: list[ResultSet]) -> list[dict[str, Any]]:
    """Every headline number, as rows shaped like `report`'s others (method, task, subtask, ctx, model, metric,
    value) plus `summary: headline`, `part`, `budget` or `batch`, `source`, `records` and an `id`; JSON-ready."""
    main = [s for s in sets if not s.appendix]
    return quality_rows(main) + speed_rows(main)


def _order(method: str) -> tuple:
    """The dense baseline first, then lychee's entries, then the others by name."""
    return (not dense_baseline(method_of(method)), method_of(method) != "lychee", method)


def headline_text(row: dict[str, Any]) -> str:
    """A headline number as the page shows it: scores to 0.1, speed ratios and milliseconds to 0.01."""
    return f"{row['value']:.1f}" if row["part"] == "quality" else f"{row['value']:.2f}"


# ---- as tables --------------------------------------------------------------------------------------------------


def _columns(rows: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(ctx, budget) columns of one quality table; a dense method's value appears under every budget of its ctx."""
    columns = {(r["ctx"], r["budget"]) for r in rows if not dense_baseline(method_of(r["method"]))}
    for row in rows:
        if not any(c == row["ctx"] for c, _ in columns):
            columns.add((row["ctx"], row["budget"]))
    return sorted(columns, key=lambda c: (c[0], -1 if c[1] is None else c[1]))


def column_heading(ctx: Any, budget: Any) -> str:
    text = context_label(ctx) if is_number(ctx) else str(ctx)
    return f"{text} · budget {budget:g}" if budget is not None else f"{text} · no budget"


def quality_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[tuple[str, list[Any]]]]]:
    """(title, column headings, [(method, [row or None per column])]) per (model, task)."""
    tables = []
    quality = [r for r in rows if r["part"] == "quality"]
    for model, task in sorted({(r["model"], r["task"]) for r in quality}):
        mine = [r for r in quality if (r["model"], r["task"]) == (model, task)]
        columns = _columns(mine)
        body = []
        for method in sorted({r["method"] for r in mine}, key=_order):
            cells: list[Any] = []
            for ctx, budget in columns:
                found = [r for r in mine if r["method"] == method and r["ctx"] == ctx]
                exact = [r for r in found if r["budget"] == budget]
                dense = dense_baseline(method_of(method)) and len(found) == 1
                cells.append(exact[0] if exact else found[0] if dense else None)
            body.append((method, cells))
        title = f"{task} on {model}: mean score over subtasks (0-100), by context and budget"
        tables.append((title, [column_heading(*c) for c in columns], body))
    return tables


def speed_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[tuple[str, list[Any]]]]]:
    """Per model: methods down; per batch, the speedup over full, time over floor and step ms across."""
    tables = []
    speed = [r for r in rows if r["part"] == "speed"]
    for model in sorted({r["model"] for r in speed}):
        mine = [r for r in speed if r["model"] == model]
        batches = sorted({r["batch"] for r in mine})
        columns = [(b, metric) for b in batches for metric, _ in SPEED_METRICS]
        headings = [f"b{b} {dict(SPEED_METRICS)[metric]}" for b, metric in columns]
        body = []
        for method in sorted({r["method"] for r in mine}, key=_order):
            found = {(r["batch"], r["metric"]): r for r in mine if r["method"] == method}
            body.append((method, [found.get(column) for column in columns]))
        ctx = mine[0]["ctx"]
        title = (f"decode speed on {model} at {context_label(ctx)} (source {mine[0]['source']}): speedup over full, "
                 "time over the byte floor, decode step ms")  # fmt: skip
        tables.append((title, headings, body))
    return tables


def relative_link(path: str, page_dir: Path | None) -> str:
    """A link from the page to a records file: relative to the page's folder, else a file URI."""
    target = Path(path).resolve()
    if page_dir is None:
        return target.as_uri()
    return Path(os.path.relpath(target, page_dir.resolve())).as_posix()


def headline_tables_text(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The headline tables for `report`'s text and markdown output, when the rows come from two or more result
    sets (for one run the tables below say the same); empty otherwise."""
    if len({row["source"] for row in rows}) < 2:
        return ""
    from lychee_bench.harness.task import SummaryTable
    from lychee_bench.report.summaries import table_markdown, table_text

    parts = []
    for title, headings, body in quality_tables(rows) + speed_tables(rows):
        cells = [[method, *(headline_text(c) if c else "" for c in line)] for method, line in body]
        table = SummaryTable(name="headline", title=title, columns=["method", *headings], cells=cells, rows=[])
        parts.append((table_markdown if markdown else table_text)(table, "headline"))
    return "\n\n".join(parts)
