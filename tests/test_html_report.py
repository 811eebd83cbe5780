"""`report --html`: a self-contained page with tables, plots and provenance, rendered in headless Chromium.

Chromium is required (never skipped): install it with `apt-get install -y chromium` (Debian/Ubuntu).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lychee_bench.harness.records import RecordWriter, write_manifest
from lychee_bench.report.html import write_html

RESULTS = Path(__file__).resolve().parents[1] / "results"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Injected into a copy of the page only (the page itself has no scripts): after load, record each image's
# decoded size where --dump-dom can see it.
PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  const out = document.createElement('pre'); out.id = 'image-probe'; out.textContent = JSON.stringify(sizes);
  document.body.appendChild(out);
});
</script>"""


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no headless Chromium found (looked for " + ", ".join(BROWSERS) + "); install it: apt-get install -y chromium"
    )


def rendered_image_sizes(page: Path, tmp_path: Path) -> list[list]:
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe_page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', done.stdout)
    assert found, f"the page did not finish loading in Chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1))


def assert_self_contained(text: str) -> None:
    assert "<script" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not load anything from outside"
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]+)"', text))


def synthetic_results(root: Path) -> Path:
    """A run folder (full + lychee at two budgets + streaming, with a latency task) and a kernel-bench file."""
    run = root / "runs" / "synthetic"
    write_manifest(
        run,
        {
            "plan": {"methods": ["full", "lychee", "streaming"]},
            "model": {"name": "tiny", "dtype": "float32", "fingerprint": "sha256:tiny"},
            "provenance": {"code": {"commit": "c0ffee", "dirty": False}, "packages": {"torch": "2.13"}},
        },
    )
    writer = RecordWriter(run)
    configs = [
        ("full", None, 90.0),
        ("lychee", 256, 60.0),
        ("lychee", 512, 80.0),
        ("streaming", 256, 30.0),
    ]
    for method, budget, score in configs:
        config = {"name": method, "path": "reference", "budget": budget}
        key = f"{method}-{budget}"
        for subtask in ("niah_single_1", "vt"):
            for index in range(3):
                writer.append(
                    {
                        "kind": "sample",
                        "run_key": key,
                        "method": method,
                        "method_config": config,
                        "path": "reference",
                        "task": "ruler",
                        "subtask": subtask,
                        "ctx": 1024,
                        "batch": 1,
                        "model": "tiny",
                        "model_fingerprint": "sha256:tiny",
                        "seed": 42,
                        "index": index,
                        "metric": "string_match_all",
                        "value": score + index,
                        "code": {"commit": "c0ffee"},
                    }
                )
    for method, ms in (("full", 9.0), ("lychee", 4.0), ("streaming", 3.0)):
        writer.append(
            {
                "kind": "sample",
                "run_key": f"lat-{method}",
                "method": method,
                "task": "latency",
                "subtask": "decode",
                "ctx": 1024,
                "batch": 1,
                "model": "tiny",
                "index": 0,
                "metric": "decode_ms_per_token",
                "value": ms,
            }
        )
    bench = root / "kernels" / "lychee_kernel_bench.json"
    bench.parent.mkdir(parents=True)
    rows = []
    for context in (8192, 16384, 32768):
        rows.append({"kind": "sdpa_enable_gqa", "context": context, "batch": 1, "median_ms": context / 1e5})
        rows.append(
            {
                "kind": "lychee_layer",
                "context": context,
                "batch": 1,
                "retrieval_heads": 1,
                "median_ms": 0.05,
                "speedup_vs_sdpa": context / 1e5 / 0.05,
            }
        )
    bench.write_text(
        json.dumps(
            {
                "kind": "lychee-kernel-bench",
                "device_name": "GPU",
                "shape": {"hq": 32, "hkv": 8, "head_dim": 128, "dtype": "torch.bfloat16", "budget_tokens": 4096},
                "provenance": {"code": {"commit": "beef"}, "packages": {"triton": "3"}, "device": {"name": "GPU"}},
                "rows": rows,
            }
        )
    )
    return root


def test_synthetic_report_draws_every_figure_and_renders(tmp_path):
    root = synthetic_results(tmp_path / "results")
    out, images, problems = write_html([root], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert not problems
    kinds = set(re.findall(r'<figure data-kind="([^"]+)"', text))
    assert kinds == {"latency", "speedup", "quality-budget", "quality-speed", "subtasks"}, kinds
    for title in ("Latency vs context", "Speedup vs context", "Quality vs budget", "Quality vs speed", "RULER per"):
        assert title in text
    assert_self_contained(text)
    # provenance of every number: each set has a section; commits, fingerprints, method configs are shown
    for needle in ('id="prov-S1"', 'id="prov-S2"', "c0ffee", "beef", "sha256:tiny", "&quot;budget&quot;: 512"):
        assert needle in text, needle
    sizes = rendered_image_sizes(out, tmp_path)
    assert len(sizes) == images
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes


def headline_json(path: Path) -> dict[str, dict]:
    """`report --format json`'s headline rows, by id."""
    from typer.testing import CliRunner

    from lychee_bench.cli import app

    done = CliRunner().invoke(app, ["report", str(path), "--format", "json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout[done.stdout.index("[") :])
    return {row["id"]: row for row in rows if row.get("summary") == "headline"}


def check_rendered_page(page: Path, json_rows: dict[str, dict], tmp_path: Path) -> str:
    """Render the page in Chromium; check every figure's layout, every image, every headline number and link."""
    from tests.test_plot_style import layout_overlaps

    for folder in ("dom", "probe"):
        (tmp_path / folder).mkdir(exist_ok=True)
    dom = rendered_dom(page, tmp_path / "dom")
    figures = re.findall(r'<figure data-kind="([^"]+)" data-layout="([^"]+)">', dom)
    assert figures, "no figure on the page"
    for kind, layout in figures:
        layout = json.loads(html.unescape(layout))
        assert layout_overlaps(layout) == [], (kind, layout)  # no legend over data, one colour per method
    sizes = rendered_image_sizes(page, tmp_path / "probe")
    assert len(sizes) == len(figures)
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes
    cells = re.findall(r'<a class="headline" href="([^"]+)" title="[^"]*" data-id="([^"]+)" data-value="([^"]+)">'
                       r"([^<]+)</a>", dom)  # fmt: skip
    assert cells, "no headline number on the page"
    seen = set()
    for href, key, value, shown in cells:
        key = html.unescape(key)
        row = json_rows[key]  # every number on the page is a row of `report --format json`
        seen.add(key)
        assert float(value) == row["value"], key
        digits = 1 if row["part"] == "quality" else 2
        assert shown == f"{row['value']:.{digits}f}", (key, shown, row["value"])
        target = (page.parent / html.unescape(href)).resolve()
        assert target.is_file() and target == Path(row["records"]).resolve(), (href, row["records"])
    assert seen == set(json_rows), set(json_rows) - seen  # and every row of the JSON is on the page
    # every table and figure names its sources; each source's provenance links to its records file
    records = re.findall(r'<p>records: <a href="([^"]+)">', dom)
    assert len(records) == dom.count('<section id="prov-S')
    assert all((page.parent / html.unescape(href)).resolve().is_file() for href in records)
    return dom


@pytest.mark.slow  # Chromium three times: about 10 s
def test_report_leads_with_the_headline_and_sends_tagged_sets_to_the_appendix(tmp_path):
    from tests.test_plot_style import write_latency_records

    root = synthetic_results(tmp_path / "results")
    write_latency_records(root / "latency")  # eight methods, two batches, 4K-128K: the headline's speed table
    write_manifest(root / "latency", {"plan": {"methods": ["full"]}})
    tuning = root / "tuning"  # the same records again, tagged: they must not reach the headline
    shutil.copytree(root / "latency", tuning)
    manifest = json.loads((tuning / "manifest.json").read_text())
    (tuning / "manifest.json").write_text(json.dumps({**manifest, "tags": ["tuning"]}))
    page = tmp_path / "site" / "report.html"
    out, _, problems = write_html([root], page)
    assert not problems
    rows = headline_json(root)
    assert {row["part"] for row in rows.values()} == {"quality", "speed"}
    assert all(not row["records"].startswith(str(tuning)) for row in rows.values())
    speed = [row for row in rows.values() if row["part"] == "speed"]
    assert {row["ctx"] for row in speed} == {131072} and {row["batch"] for row in speed} == {1, 4}
    quality = {(row["method"], row["budget"]): row["value"] for row in rows.values() if row["part"] == "quality"}
    assert quality[("lychee", 512.0)] == pytest.approx(81.0) and quality[("full", None)] == pytest.approx(91.0)
    dom = check_rendered_page(out, rows, tmp_path)
    from typer.testing import CliRunner

    from lychee_bench.cli import app

    printed = CliRunner().invoke(app, ["report", str(root)]).stdout  # the terminal report leads with it too
    assert printed.startswith("headline · ruler on tiny") and "decode speed on llama3-8b-synthetic" in printed
    assert printed.index("headline ·") < printed.index("ruler · ctx 1024")
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    order = [text.index(heading) for heading in ("Headline", "Details", "Appendix", "Provenance")]
    assert order == sorted(order)
    appendix = text[text.index("Appendix") : text.index("Provenance")]
    assert str(tuning) in appendix and "tags: tuning" in appendix
    top = dom[: dom.index('id="details"')]
    assert re.findall(r'<figure data-kind="([^"]+)"', top)[:2] == ["speedup", "breakdown"]


@pytest.mark.slow  # the whole results folder: about a minute
def test_report_of_committed_results_leads_with_the_headline(tmp_path):
    out, images, _ = write_html([RESULTS], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert images >= 10
    # The engine's latency runs (results/engine/h200) time the default model's decode step at contexts where
    # RULER ran on it, so quality and speed of one method at one context meet in the committed results.
    assert "Quality vs speed" in text and "<b>quality vs speed</b>" not in text
    dom = check_rendered_page(out, headline_json(RESULTS), tmp_path)
    top = dom[: dom.index('id="details"')]
    assert "ruler on qwen2.5-coder-0.5b" in top and "decode speed on llama3-8b-synthetic at 128K" in top
    assert "h200-tuning" not in top and "h200-first" not in top  # tagged tuning / superseded


def test_report_with_no_plot_data_lists_every_plot_as_absent(tmp_path):
    writer = RecordWriter(tmp_path / "run")
    writer.append({"kind": "sample", "run_key": "k", "method": "full", "task": "ruler", "subtask": "vt", "ctx": 1,
                   "batch": 1, "model": "m", "index": 0, "metric": "string_match_all", "value": 50.0})  # fmt: skip
    out, images, _ = write_html([tmp_path / "run"], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert images == 0
    from lychee_bench.report.plots import BUILDERS

    for name, _ in BUILDERS:
        assert f"<b>{name}</b>" in text


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after Chromium has loaded and laid it out."""
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "</table>" in done.stdout, f"Chromium did not render it (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def table_cells(dom: str, caption_part: str) -> list[list[str]]:
    """The rows (header included) of the rendered table whose caption contains `caption_part`."""
    for table in re.findall(r"<table[^>]*>(.*?)</table>", dom, flags=re.S):
        caption = re.search(r"<caption>(.*?)</caption>", table, flags=re.S)
        if caption and caption_part in html.unescape(re.sub(r"<[^>]+>", "", caption.group(1))):
            rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
            return [[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row, flags=re.S)] for row in rows]
    raise AssertionError(f"no rendered table captioned {caption_part!r}")


@pytest.mark.slow  # Chromium: about 6 s
def test_aime_records_render_pass_at_1_and_the_per_problem_table(tmp_path):
    from tests.test_task_summaries import aime_folder, needs_aime

    if needs_aime.args[0]:
        pytest.skip(needs_aime.kwargs["reason"])
    folder = aime_folder(tmp_path / "runs" / "aime")
    out, _, problems = write_html([folder], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert not problems
    assert_self_contained(text)
    dom = rendered_dom(out, tmp_path)
    passes = table_cells(dom, "pass@1, avg@8")
    assert passes[0][:3] == ["method", "pass@1", "± se"]
    assert ["full", "50.00", "28.87"] == passes[1][:3] and ["lychee", "37.50", "19.09"] == passes[2][:3]
    per_problem = table_cells(dom, "per problem: right draws out of 8")
    assert per_problem[0] == ["problem", "answer", "full", "lychee"]
    assert per_problem[1] == ["2024-I-1", "204", "8/8", "6/8"] and len(per_problem) == 4
    assert "source S1" in html.unescape(re.sub(r"<[^>]+>", "", dom))
    assert "boxed_integer_match" not in text  # the generic per-metric table is replaced by the task's


@pytest.mark.slow  # Chromium: about 6 s
def test_longbench_records_render_datasets_averages_and_buckets(tmp_path):
    from tests.test_task_summaries import longbench_folder

    folder = longbench_folder(tmp_path / "longbench")
    out, _, problems = write_html([folder], tmp_path / "report.html")
    assert not problems
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert '<figure data-kind="subtasks"' in text and "LongBench per task" in text  # one bar group per dataset
    dom = rendered_dom(out, tmp_path)
    datasets = table_cells(dom, "per dataset (eval.py")
    assert datasets[0] == ["dataset", "category", "metric", "n", "full", "lychee"]
    assert ["lcc", "Code Completion", "code_sim_score (Edit Sim)", "2", "50.00 ± 50.00", "100.00 ± 0.00"] in datasets
    averages = {row[0]: row[1:] for row in table_cells(dom, "averages")[1:]}
    assert averages["English Avg"] == ["50.00", "58.33"] and averages["8-task average"] == ["50.00", "50.00"]
    buckets = table_cells(dom, "LongBench-E by length")
    assert buckets[0][3:6] == ["full 0-4k", "full 4-8k", "full 8k+"]
    assert ["hotpotqa_e", "qa_f1_score (F1)", "2/2/0", "50.00", "100.00", "-", "50.00", "100.00", "-"] in buckets


def test_headline_shows_one_configuration_once_however_its_runs_named_the_artifacts(tmp_path):
    """`duo` (its default roles) and `duo[roles=<file>]` over the same roles are one row, under the label that
    names no file; other roles, or another option, stay rows of their own."""
    from lychee_bench.regress.sources import ResultSet
    from lychee_bench.report.headline import quality_rows

    def sample(label, roles_sha, budget, value):
        config = {
            "name": "duo",
            "budget": budget,
            "recent": budget - 128,
            "roles_used": {"source": "x", "sha256": roles_sha},
        }
        return {"kind": "sample", "method": "duo", "label": label, "task": "ruler", "subtask": "vt", "ctx": 8192,
                "model": "m", "metric": "string_match_all", "value": value, "method_config": config}  # fmt: skip

    first = [
        sample("duo[roles=/tmp/a/roles.json]", "aaa", 1024, 40.0),
        sample("duo[roles=/tmp/a/roles.json]", "aaa", 1024, 60.0),
    ]
    second = [sample("duo", "aaa", 2048, 70.0), sample("duo[roles=/tmp/b.json]", "bbb", 2048, 10.0),
              sample("duo[sink=4]", "aaa", 2048, 30.0)]  # fmt: skip
    sets = [
        ResultSet("S1", tmp_path / "a", "run", [], samples=first),
        ResultSet("S2", tmp_path / "b", "run", [], samples=second),
    ]
    rows = {(row["method"], row["budget"]): row["value"] for row in quality_rows(sets)}
    assert rows == {("duo", 1024.0): 50.0, ("duo", 2048.0): 70.0, ("duo[roles=/tmp/b.json]", 2048.0): 10.0,
                    ("duo[sink=4]", 2048.0): 30.0}  # fmt: skip


def test_a_figure_of_a_tagged_set_says_so_in_its_title(tmp_path):
    from lychee_bench.regress.sources import ResultSet
    from lychee_bench.report.plots import tagged

    superseded = ResultSet("S1", tmp_path, "run", [], manifest={"runs": [{"tags": ["superseded"]}]})
    assert tagged("Quality vs budget", superseded) == "Quality vs budget [tagged superseded]"
    assert tagged("Quality vs budget", ResultSet("S2", tmp_path, "run", [], manifest={"runs": [{}]})) == (
        "Quality vs budget"
    )
