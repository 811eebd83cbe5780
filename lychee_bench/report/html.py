"""`lychee-bench report --html OUT`: one self-contained page (no scripts, no external resources).

The page holds a table per result set, the plots whose data exist (and a list of those that could not be
drawn, with the reason), and a provenance section per result set. Every table and plot names its sources
(S1, S2, ...), which link to their provenance: commit, packages, device, model and fingerprint, method
configs and the path (reference or Triton) that ran, seeds, and the file it came from.
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lychee_bench.harness.task import SummaryTable
from lychee_bench.regress.sources import KERNEL_BENCH_TASK, ResultSet
from lychee_bench.report.figures import load_sets
from lychee_bench.report.headline import (
    headline_rows,
    headline_text,
    quality_tables,
    records_file,
    relative_link,
    speed_tables,
)
from lychee_bench.report.plots import Plot, build_plots
from lychee_bench.report.summaries import covered, task_blocks

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
figure { margin: 1em 0 2em; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.absent { color: #8a4b00; }
table.summary td:first-child { text-align: left; }
ul.notes { font-size: 0.8em; color: #555; margin-top: -1em; }
table.headline td:first-child { font-weight: 600; }
p.note { font-size: 0.85em; color: #555; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _link(label: str) -> str:
    return f'<a href="#prov-{label}">{label}</a>'


def _number(value: float) -> str:
    # Scores read best with one decimal; small numbers (errors, seconds) need their significant digits.
    return f"{value:.1f}" if value == 0 or abs(value) >= 0.1 else f"{value:.3g}"


def _cell(value: float, stderr: float, samples: Any) -> str:
    text = _number(value)
    if not math.isnan(stderr):
        text += f" ± {_number(stderr)}"
    return f"{text} (n={samples})"


def score_tables(result_set: ResultSet, skip: set[tuple] | frozenset = frozenset()) -> str:
    """Subtasks down, methods across; one table per (task, ctx, model, metric) of a run set, but for the (task,
    ctx, model) groups in `skip` (those a task's own tables show)."""
    import pandas as pd

    if not result_set.rows:
        return ""
    frame = pd.DataFrame(result_set.rows)
    parts = []
    for (task, ctx, model, metric), group in frame.groupby(["task", "ctx", "model", "metric"], sort=True, dropna=False):
        if (task, ctx, model) in skip:
            continue
        group = group.sort_values("samples").drop_duplicates(["method", "subtask"], keep="last")
        cells = group.assign(
            cell=[_cell(v, e, n) for v, e, n in zip(group["value"], group["stderr"], group["samples"], strict=True)]
        )
        table = cells.pivot(index="subtask", columns="method", values="cell")
        if group["subtask"].nunique() > 1 and group.groupby("method")["subtask"].nunique().min() > 1:
            means = group.groupby("method")["value"].mean()
            table.loc["mean of subtasks"] = [_number(means[m]) if m in means else "" for m in table.columns]
        caption = f"{task} · ctx {ctx} · {model} · {metric} — source {_link(result_set.label)}"
        parts.append(_table_html(table, caption))
    return "\n".join(parts)


def bench_tables(result_set: ResultSet) -> str:
    """Median ms per (context, batch), one column per timed kind (and retrieval-head count)."""
    import pandas as pd

    rows = [r for r in result_set.rows if r["metric"] == "median_ms"]
    speed = {(r["method"], r["subtask"], r["ctx"], r["batch"]): r["value"] for r in result_set.rows}
    if not rows:
        return ""
    frame = pd.DataFrame(rows)
    frame["column"] = [m if s == "-" else f"{m} {s}" for m, s in zip(frame["method"], frame["subtask"], strict=True)]
    frame["cell"] = [
        f"{v:.4f}" + (f" ({speed[(m, s, c, b)]:.2f}×)" if (m, s, c, b) in speed and m.startswith("lychee") else "")
        for v, m, s, c, b in zip(
            frame["value"], frame["method"], frame["subtask"], frame["ctx"], frame["batch"], strict=True
        )
    ]
    frame = frame[[not str(m).startswith("step:") for m in frame["method"]]]
    table = frame.pivot_table(index=["ctx", "batch"], columns="column", values="cell", aggfunc="first")
    caption = (
        f"{KERNEL_BENCH_TASK}: median ms per decode layer (speedup vs SDPA) · {result_set.rows[0]['model']} — "
        f"source {_link(result_set.label)}"
    )
    return _table_html(table, caption)


def run_tables(result_set: ResultSet) -> str:
    """A run set's tables: each task's own (AIME pass@1 and per problem, LongBench averages and length buckets,
    report/summaries.py), and the generic table for every group no task table covers."""
    blocks = task_blocks([result_set])
    parts = [score_tables(result_set, covered(blocks))]
    for block in blocks:
        if block.problem:
            parts.append(f"<p class='absent'>{_esc(block.problem)}</p>")
        parts += [summary_table_html(table, block.heading, result_set.label) for table in block.tables]
    return "\n".join(part for part in parts if part)


def summary_table_html(table: SummaryTable, heading: str, source: str) -> str:
    """A task's table: its cells as the task formatted them, its notes under it, the source linked."""
    head = "".join(f"<th>{_esc(column)}</th>" for column in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in line) + "</tr>" for line in table.cells)
    notes = "".join(f"<li>{_esc(note)}</li>" for note in table.notes)
    caption = f"{_esc(heading)} · {_esc(table.title)} — source {_link(source)}"
    return (
        f"<table class='summary'><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        f"</table>" + (f"<ul class='notes'>{notes}</ul>" if notes else "")
    )


def _table_html(table, caption: str) -> str:
    body = table.to_html(na_rep="", border=0, escape=True)
    return body.replace('<table class="dataframe">', f"<table><caption>{caption}</caption>", 1)


def provenance_html(result_set: ResultSet, page_dir: Path | None = None) -> str:
    """What a set's numbers rest on, with a link to its records file (the tables and plots link here)."""
    prov = result_set.provenance()
    code = prov.get("code") or (prov.get("provenance") or {}).get("code")
    packages = prov.get("packages") or (prov.get("provenance") or {}).get("packages")
    device = prov.get("device") or (prov.get("provenance") or {}).get("device")
    model = prov.get("model") or {}
    facts = [
        ("file", str(result_set.path)),
        ("kind", result_set.kind),
        ("rows", str(len(result_set.rows))),
        ("code", json.dumps(code)),
        ("packages", ", ".join(f"{k} {v}" for k, v in (packages or {}).items() if v) or "not recorded"),
        ("device", json.dumps(device)),
    ]
    if model:
        facts.append(("model", f"{model.get('name')} · {model.get('dtype')} · {model.get('fingerprint')}"))
    for name, entry in (prov.get("methods") or {}).items():
        facts.append(
            (
                f"method {name}",
                f"path {', '.join(entry['paths'])} · seeds {', '.join(entry['seeds'])} · "
                f"commits {', '.join(entry['commits'])} · model {entry.get('model_fingerprint')} · "
                f"config {json.dumps(entry['configs'])}",
            )
        )
    rest = {k: v for k, v in prov.items() if k not in ("code", "packages", "device", "model", "methods", "provenance")}
    items = "".join(f"<tr><th>{_esc(k)}</th><td style='text-align:left'>{_esc(v)}</td></tr>" for k, v in facts)
    file = str(records_file(result_set))
    link = f'<a href="{_esc(relative_link(file, page_dir))}">{_esc(file)}</a>'
    tags = f" · tags: {_esc(', '.join(result_set.tags))}" if result_set.tags else ""
    return (
        f'<section id="prov-{result_set.label}"><h3>{result_set.label}: {_esc(result_set.path)}</h3>'
        f"<p>records: {link}{tags}</p><table>{items}</table>"
        f"<details><summary>everything else recorded</summary><pre>{_esc(json.dumps(rest, indent=1, default=str))}"
        f"</pre></details></section>"
    )


def _headline_cell(row: dict[str, Any] | None, page_dir: Path | None) -> str:
    if row is None:
        return "<td></td>"
    link = relative_link(row["records"], page_dir)
    title = f"{row['source']}: {row['records']} ({row.get('samples', row.get('batch'))})"
    return (
        f'<td><a class="headline" href="{_esc(link)}" title="{_esc(title)}" data-id="{_esc(row["id"])}" '
        f'data-value="{row["value"]!r}">{headline_text(row)}</a></td>'
    )


def headline_html(rows: list[dict[str, Any]], page_dir: Path | None) -> str:
    """The headline tables: quality per (model, task), speed per model; every number links to its records."""
    parts = []
    for title, headings, body in quality_tables(rows) + speed_tables(rows):
        head = "<th>method</th>" + "".join(f"<th>{_esc(h)}</th>" for h in headings)
        lines = "".join(
            f"<tr><td>{_esc(method)}</td>" + "".join(_headline_cell(c, page_dir) for c in cells) + "</tr>"
            for method, cells in body
        )
        parts.append(f"<table class='summary headline'><caption>{_esc(title)}</caption><thead><tr>{head}</tr>"
                     f"</thead><tbody>{lines}</tbody></table>")  # fmt: skip
    return "\n".join(parts)


def figure_html(plot: Plot) -> str:
    sources = ", ".join(_link(s) for s in plot.sources)
    return (
        f'<figure data-kind="{_esc(plot.kind)}" data-layout="{_esc(json.dumps(plot.layout))}">'
        f'<img alt="{_esc(plot.title)}" src="{plot.data_uri()}">'
        f"<figcaption><b>{_esc(plot.title)}.</b> {_esc(plot.caption)} Sources: {sources}.</figcaption></figure>"
    )


HEADLINE_FIGURES = ("speedup", "breakdown", "quality-budget", "quality-speed")


def _is_headline_figure(plot: Plot, speed_sources: set[str]) -> bool:
    """Speed figures of the latency sets the headline table quotes; every quality-budget and quality-speed one."""
    if plot.kind in ("speedup", "breakdown"):
        return set(plot.sources) <= speed_sources
    return plot.kind in HEADLINE_FIGURES


def render(
    sets: list[ResultSet], title: str = "lychee-bench report", problems: list[str] | None = None,
    page_dir: Path | None = None,
) -> str:  # fmt: skip
    """The page: the headline (tables and figures), then the details of the main result sets, then the appendix
    (sets tagged tuning, superseded, check or ablation), then every set's provenance."""
    main = [s for s in sets if not s.appendix]
    appendix = [s for s in sets if s.appendix]
    plots, absent = build_plots(main)  # the appendix's figures are drawn from its own sets only
    tail = build_plots(appendix)[0] if appendix else []
    headline = headline_rows(sets)
    speed_sources = {r["source"] for r in headline if r["part"] == "speed"}
    top = [p for p in plots if _is_headline_figure(p, speed_sources)]
    details = [p for p in plots if p not in top]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p>Written {datetime.now(UTC).isoformat(timespec='seconds')} from {len(sets)} result set(s): "
        f"{len(main)} in the headline and details, {len(appendix)} in the appendix by the tags in their manifests. "
        "Every headline number links to its records file; every table and plot names its sources, which link "
        "to their provenance at the end.</p>",
        "<h2 id='headline'>Headline</h2>",
        "<p class='note'>Quality: the mean over subtasks of each subtask's mean score (0-100); where two result "
        "sets hold the same method, context and budget, the one with more samples stands. Speed: per model, the "
        "latency run that times the most methods at its longest context; every number of a row comes from it. "
        "A dense method's score stands under every budget of its context.</p>",
        headline_html(headline, page_dir)
        or "<p class='absent'>No result set outside the appendix has scores or decode timings.</p>",
        *(figure_html(p) for p in top),
    ]
    if problems:
        parts.append("<h2>Unreadable input</h2><ul>" + "".join(f"<li>{_esc(p)}</li>" for p in problems) + "</ul>")
    parts += _section("Details", "details", main, details)
    if absent:
        parts.append("<h3>Not drawn</h3><ul class='absent'>")
        parts += [f"<li><b>{_esc(name)}</b>: {_esc(reason)}</li>" for name, reason in absent]
        parts.append("</ul>")
    if appendix:
        parts += _section("Appendix: tuning sweeps, superseded runs, checks and ablations", "appendix", appendix, tail)
    parts.append("<h2>Provenance</h2>")
    parts += [provenance_html(s, page_dir) for s in sets]
    parts.append("</body></html>")
    return "\n".join(parts)


def _section(heading: str, anchor: str, sets: list[ResultSet], plots: list[Plot]) -> list[str]:
    parts = [f"<h2 id='{anchor}'>{_esc(heading)}</h2><ul>"]
    for s in sets:
        tags = f" · tags: {_esc(', '.join(s.tags))}" if s.tags else ""
        parts.append(f"<li>{_link(s.label)} — {s.kind}: {_esc(s.path)} ({len(s.rows)} rows){tags}</li>")
    parts.append("</ul>")
    parts += [figure_html(p) for p in plots]
    for result_set in sets:
        parts.append(run_tables(result_set) if result_set.kind == "run" else bench_tables(result_set))
    return parts


def write_page(
    sets: list[ResultSet], out: Path, title: str = "lychee-bench report", problems: list[str] | None = None
) -> tuple[Path, int]:
    """Write the page of these result sets to `out`. Returns (out, plots drawn)."""
    page = render(sets, title, problems, page_dir=out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out, page.count("<img ")


def write_html(paths: list[Path], out: Path, title: str = "lychee-bench report") -> tuple[Path, int, list[str]]:
    """Load every result set under `paths`, write the page to `out`. Returns (out, plots drawn, problems)."""
    problems: list[str] = []
    sets = load_sets(paths, problems)
    return *write_page(sets, out, title, problems), problems
