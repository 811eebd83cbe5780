"""One visual identity per method across every figure (issue 20), checked from matplotlib's layout, not pixels.

Every figure the report and the latency plot draw from small record sets is caught as it is saved, and checked:
no legend's window extent overlaps any axes' data area, no two methods share a colour, a method's variants share
its colour, the context axis is labelled in K, and every saved PNG decodes.
"""

from __future__ import annotations

import io

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from lychee_bench.harness.plot_style import METHOD_STYLES, context_label, figure_styles, method_of  # noqa: E402
from lychee_bench.harness.records import RecordWriter  # noqa: E402
from lychee_bench.regress.sources import load_results  # noqa: E402
from lychee_bench.report.plots import build_plots  # noqa: E402
from lychee_bench.tasks.latency.plot import plot_latency  # noqa: E402
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
                        "attention_ms_per_layer": ms / 32,
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


def test_latency_and_report_figures_keep_one_identity_per_method(tmp_path, saved_figures):
    run = tmp_path / "results" / "latency"
    write_latency_records(run)
    written = plot_latency(run, tmp_path / "plots")
    synthetic_results(tmp_path / "results" / "synthetic")
    plots, absent = build_plots(load_results(tmp_path / "results"))
    assert {p.title.split(" (")[0] for p in plots} >= {"Latency vs context", "Speedup vs context",
                                                       "Quality vs budget", "Quality vs speed"}, absent  # fmt: skip
    assert len(saved_figures) == len(written) + len(plots)
    for fig, png, problems in saved_figures:
        assert problems == [], (fig.texts[0].get_text() if fig.texts else "", problems)
        assert_png(png)
    for path in written:
        assert_png(path.read_bytes())
    for plot in plots:
        assert_png(plot.png)
    latency_fig = saved_figures[0][0]
    ticks = [t.get_text() for t in latency_fig.axes[0].get_xticklabels()]
    assert ticks == ["4K", "8K", "16K", "32K", "64K", "128K"]
    title = latency_fig.texts[0].get_text()
    for needle in ("llama3-8b-synthetic", "batch 1, 4", "budget 4096", "NVIDIA H200"):
        assert needle in title, title
    lychee = next(line for line in latency_fig.axes[0].get_lines() if line.get_label() == "lychee")
    others = [line for line in latency_fig.axes[0].get_lines() if method_of(line.get_label()) != "lychee"]
    assert all(lychee.get_linewidth() > o.get_linewidth() and lychee.get_zorder() > o.get_zorder() for o in others)


def test_styles_are_fixed_by_name_and_variants_differ_by_line_style():
    styles = figure_styles(METHODS)
    builtin = {colour for colour, _ in METHOD_STYLES.values()}
    assert len(builtin) == len(METHOD_STYLES)
    for name in METHOD_STYLES:
        assert styles[name]["color"] == METHOD_STYLES[name][0]
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
