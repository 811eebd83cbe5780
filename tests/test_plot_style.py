"""One visual identity per method across every figure (issue 20), checked from matplotlib's layout, not pixels.

Every figure the report and `lychee-bench plot` draw from small record sets (every builder draws at least one) is
caught as it is saved, and checked: no legend's window extent overlaps any axes' data area, no two methods share
a colour, a method's variants share its colour, the context axis is labelled in K, and every saved PNG decodes.
The layout each figure keeps (what the HTML report embeds) says the same.
"""

from __future__ import annotations

import io

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from lychee_bench.harness.plot_style import EXTRA_COLOURS, context_label, figure_styles, method_of, method_styles  # noqa: E402
from lychee_bench.harness.records import RecordWriter  # noqa: E402
from lychee_bench.regress.sources import load_results  # noqa: E402
from lychee_bench.report.figures import write_figures  # noqa: E402
from lychee_bench.report.plots import BUILDERS, build_plots, pareto_front  # noqa: E402
from tests.test_html_report import synthetic_results  # noqa: E402

METHODS = ["full", "lychee", "lychee[granularity=block]", "lychee[roles=uniform:3]", "tidal", "kascade", "quest",
           "duo", "streaming", "transformers", "myplugin[k=2]", "myplugin"]  # fmt: skip
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)


def write_latency_records(folder) -> None:
    """End-to-end latency records as `lychee-bench bench` writes them (the fields the plots read)."""
    writer = RecordWriter(folder)
    for batch in (1, 4):
        for ctx in CONTEXTS:
            for rank, method in enumerate(METHODS):
                ms = ctx / 1e4 if method in ("full", "transformers") else 0.5 + rank * 0.1 + ctx / 1e5
                writer.append(
                    {
                        "kind": "latency", "task": "latency", "model": "llama3-8b-synthetic", "method": method,
                        "method_config": {"name": method_of(method), "budget": None if method == "full" else 4096},
                        "batch": batch, "ctx": ctx, "label": "synthetic weights", "device": {"name": "NVIDIA H200"},
                        "decode_ms": ms * batch, "speedup_vs_full": (ctx / 1e4) / ms, "time_over_floor": 1.5,
                        "attention_ms_per_layer": ms / 32, "attention_total_ms": ms * batch / 3,
                        "floor_ms": ms * batch / 1.5,
                    }
                )  # fmt: skip


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved while the test runs: (figure, png bytes), inspected right after it is laid out."""
    caught: list[tuple[Figure, bytes, list[str]]] = []
    original = Figure.savefig

    def savefig(self, target, *args, **kwargs):
        assert kwargs.get("bbox_inches") == "tight", "save with bbox_inches='tight' so outside legends are kept"
        buffer = io.BytesIO()
        original(self, buffer, *args, **{**kwargs, "format": "png"})
        caught.append((self, buffer.getvalue(), layout_problems(self)))
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return caught


def layout_problems(fig: Figure) -> list[str]:
    renderer = fig.canvas.get_renderer()
    problems = []
    legends = [a.get_legend() for a in fig.axes if a.get_legend()] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for axis in fig.axes:
            if box.overlaps(axis.get_window_extent(renderer)):
                problems.append(f"a legend overlaps the axes '{axis.get_title()}'")
    colours: dict[str, set] = {}
    for axis in fig.axes:
        for line in axis.get_lines():
            label = line.get_label()
            if isinstance(line, Line2D) and not label.startswith("_") and not label.startswith("full (dense)"):
                colours.setdefault(method_of(label), set()).add(matplotlib.colors.to_hex(line.get_color()))
    for method, found in colours.items():
        if len(found) != 1:
            problems.append(f"{method}'s variants are drawn in {sorted(found)}")
    owners: dict[str, list[str]] = {}
    for method, found in colours.items():
        for colour in found:
            owners.setdefault(colour, []).append(method)
    problems += [f"{methods} share {colour}" for colour, methods in owners.items() if len(methods) > 1]
    return problems


def assert_png(data: bytes) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.shape[0] > 50 and image.shape[1] > 50


def layout_overlaps(layout: dict) -> list[str]:
    """The same checks from a figure's kept layout: legend boxes against axes boxes, colours per method."""

    def overlap(a, b) -> bool:
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    problems = [f"legend {legend} overlaps axes {axes}" for legend in layout["legends"] for axes in layout["axes"]
                if overlap(legend, axes)]  # fmt: skip
    owners: dict[str, list[str]] = {}
    for method, colours in layout["colours"].items():
        if len(colours) != 1:
            problems.append(f"{method} drawn in {colours}")
        for colour in colours:
            owners.setdefault(colour, []).append(method)
    return problems + [f"{m} share {c}" for c, m in owners.items() if len(m) > 1]


def test_every_figure_keeps_one_identity_per_method(tmp_path, saved_figures):
    write_latency_records(tmp_path / "results" / "latency")
    synthetic_results(tmp_path / "results" / "synthetic")
    plots, absent = build_plots(load_results(tmp_path / "results"))
    kinds = {plot.kind for plot in plots}
    assert kinds == {"latency", "speedup", "floor", "breakdown", "quality-budget", "quality-speed", "subtasks"}, absent
    assert len(BUILDERS) == 7 and not absent
    assert len(saved_figures) == len(plots)
    for (_, png, problems), plot in zip(saved_figures, plots, strict=True):
        assert problems == [], (plot.title, problems)
        assert layout_overlaps(plot.layout) == [], (plot.title, plot.layout)
        assert plot.layout["legends"], plot.title  # every figure says what its marks are
        assert_png(png)
        assert_png(plot.png)
    speedup = next(fig for (fig, _, _), plot in zip(saved_figures, plots, strict=True) if plot.kind == "speedup")
    ticks = [t.get_text() for t in speedup.axes[0].get_xticklabels()]
    assert ticks == ["4K", "8K", "16K", "32K", "64K", "128K"]
    title = speedup.texts[0].get_text()
    for needle in ("llama3-8b-synthetic", "batch 1, 4", "budget 4096", "NVIDIA H200"):
        assert needle in title, title
    lychee = next(line for line in speedup.axes[0].get_lines() if line.get_label() == "lychee")
    others = [line for line in speedup.axes[0].get_lines() if method_of(line.get_label()) != "lychee"]
    assert all(lychee.get_linewidth() > o.get_linewidth() and lychee.get_zorder() > o.get_zorder() for o in others)


def test_plot_command_writes_every_figure_with_its_index(tmp_path, saved_figures):
    import json

    from typer.testing import CliRunner

    from lychee_bench.cli import app

    write_latency_records(tmp_path / "latency")
    writer = RecordWriter(tmp_path / "quality")  # scores of the latency run's model at one of its contexts
    for method, score in (("full", 70.0), ("lychee", 65.0), ("tidal", 40.0)):
        for subtask in ("niah_single_1", "vt"):
            writer.append({"kind": "sample", "run_key": method, "method": method, "task": "ruler", "subtask": subtask,
                           "ctx": 131072, "batch": 1, "model": "llama3-8b-synthetic", "index": 0,
                           "metric": "string_match_all", "value": score})  # fmt: skip
    done = CliRunner().invoke(app, ["plot", str(tmp_path / "latency"), str(tmp_path / "quality"), "--out",
                                    str(tmp_path / "figures")])  # fmt: skip
    assert done.exit_code == 0, done.output
    written = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    index = json.loads((tmp_path / "figures" / "figures.json").read_text())
    assert sorted(entry["file"] for entry in index) == written and len(written) == len(saved_figures)
    # quality from one folder, speed from the other: the Pareto view joins them
    joined = next(entry for entry in index if entry["kind"] == "quality-speed")
    assert set(joined["sources"].values()) == {str(tmp_path / "latency"), str(tmp_path / "quality")}
    assert set(joined["layout"]["colours"]) == {"full", "lychee", "tidal"}
    again, _ = write_figures([tmp_path / "latency"], tmp_path / "figures")  # a second call overwrites its own
    assert all(path.exists() for path in again) and (tmp_path / "figures" / "figures.json").exists()


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(9.0, 90.0), (4.0, 60.0), (5.0, 80.0), (3.0, 30.0), (6.0, 70.0), (4.0, 50.0)]
    assert pareto_front(points) == [(3.0, 30.0), (4.0, 60.0), (5.0, 80.0), (9.0, 90.0)]


def test_styles_are_fixed_by_name_and_variants_differ_by_line_style():
    styles = figure_styles(METHODS)
    declared = method_styles()  # from the method classes (Method.plot_style) and the stock reference
    assert set(declared) >= {"full", "lychee", "tidal", "kascade", "quest", "duo", "streaming", "transformers"}
    builtin = {colour for colour, _ in declared.values()}
    assert len(builtin) == len(declared) and not builtin & set(EXTRA_COLOURS)
    for name in declared:
        assert styles.get(name, figure_styles([name])[name])["color"] == declared[name][0]
    assert styles["myplugin"]["color"] not in builtin
    assert styles["myplugin"]["color"] == styles["myplugin[k=2]"]["color"] == figure_styles(["myplugin"])[
        "myplugin"]["color"]  # fmt: skip
    lychee = [styles[m]["linestyle"] for m in METHODS if method_of(m) == "lychee"]
    assert len(set(map(str, lychee))) == 3 and styles["lychee"]["linestyle"] == "-"
    assert figure_styles(["lychee", "tidal"])["lychee"] == figure_styles(["tidal", "lychee", "quest"])["lychee"]
    two = figure_styles(["plugin_a", "plugin_b", "plugin_c"])
    assert len({s["color"] for s in two.values()}) == 3
    assert [context_label(c) for c in (320, 1536, 4096, 131072)] == ["320", "1.5K", "4K", "128K"]


def test_the_layout_check_sees_a_legend_over_the_data_and_a_shared_colour():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    axis = fig.add_subplot()
    axis.plot([1, 2], [1, 2], color="red", label="duo")
    axis.plot([1, 2], [2, 1], color="red", label="streaming")
    axis.plot([1, 2], [2, 2], color="blue", label="lychee[granularity=block]")
    axis.plot([1, 2], [1, 1], color="green", label="lychee")
    axis.legend(loc="center")
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    problems = layout_problems(fig)
    assert any("legend overlaps" in p for p in problems)
    assert any("share #ff0000" in p for p in problems)
    assert any("lychee's variants" in p for p in problems)
    from lychee_bench.report.plots import figure_layout  # the layout the report keeps says the same

    kept = layout_overlaps(figure_layout(fig))
    assert any("overlaps" in p for p in kept) and any("share #ff0000" in p for p in kept)
    assert any("lychee drawn in" in p for p in kept)


def test_training_plot_keeps_its_legends_off_the_curves(tmp_path, saved_figures):
    import torch

    from lychee_bench.training.plot import plot_training

    records = [
        {"step": s, "loss": 1.0 / s, "distill": 0.5 / s, "density": 0.9 / s, "target": 0.1, "z_mean": 0.5,
         "lambda": 2.0 + s / 10, "lr": 0.01, "kept_fraction": 0.3, "score": [[0.5, 0.2], [0.1, 0.9], [0.3, 0.4]]}
        for s in range(1, 6)
    ]  # fmt: skip
    roles = torch.tensor([[True, False], [False, True], [False, False]])
    plot_training(records, roles, "kuma_mean", tmp_path / "training.png")
    ((fig, png, problems),) = saved_figures
    assert [p for p in problems if "legend overlaps" in p] == []
    assert len([a for a in fig.axes if a.get_legend()]) == 4
    assert_png(png)
