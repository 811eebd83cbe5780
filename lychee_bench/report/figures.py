"""`lychee-bench plot`: the report's figures of some result folders, written as PNG files with an index.

The figures are report/plots.py's (one code path for the HTML page and the files). `figures.json` beside them
says, per file, its title, caption, the result sets it was drawn from (label and path) and its layout as
matplotlib laid it out (axes, legend boxes, colours per method).
"""

from __future__ import annotations

import json
from pathlib import Path

from lychee_bench.regress.sources import ResultSet, load_results
from lychee_bench.report.plots import build_plots

INDEX_FILE = "figures.json"


def load_sets(paths: list[Path], problems: list[str] | None = None) -> list[ResultSet]:
    """Every result set under the paths, labelled S1, S2, ... across all of them."""
    sets: list[ResultSet] = []
    for path in paths:
        sets += load_results(path, problems, first_label=len(sets) + 1)
    return sets


def write_figures(paths: list[Path], out: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Draw every figure the results allow into `out`; returns the PNGs written and (figure, reason) for the
    figures that could not be drawn. Files of other names in `out` are left alone."""
    sets = load_sets(paths)
    plots, absent = build_plots(sets)
    if not plots:
        return [], absent
    out.mkdir(parents=True, exist_ok=True)
    where = {s.label: str(s.path) for s in sets}
    written, index = [], []
    for plot in plots:
        # one result set: no need to tell sets apart in the file names
        name = plot.name.replace(f"_{sets[0].label}", "", 1) if len(sets) == 1 else plot.name
        path = out / f"{name}.png"
        path.write_bytes(plot.png)
        written.append(path)
        index.append({"file": path.name, "kind": plot.kind, "title": plot.title, "caption": plot.caption,
                      "sources": {label: where[label] for label in plot.sources}, "layout": plot.layout})  # fmt: skip
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return written, absent
