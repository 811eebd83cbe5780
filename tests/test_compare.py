"""`compare`: matching rows, the per-kind regression rules, overrides, missing/new rows, exit codes, inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lychee_bench.harness.records import RecordWriter
from lychee_bench.regress.compare import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REGRESSION,
    Rules,
    compare_command,
    compare_paths,
    compare_rows,
    judge,
    metric_kind,
    parse_tolerances,
)
from tests.conftest import sample_record


def row(value, metric="string_match_all", stderr=float("nan"), samples=2, **key):
    base = {"method": "full", "task": "ruler", "subtask": "vt", "ctx": 1024, "batch": 1, "model": "m"}
    return {**base, **key, "metric": metric, "value": value, "stderr": stderr, "samples": samples}


@pytest.mark.parametrize(
    ("metric", "kind"),
    [
        ("string_match_all", "quality"),
        ("passed", "correctness"),
        ("max_abs_error", "error"),
        ("median_ms", "latency"),
        ("median_us", "latency"),
        ("elapsed_s", "latency"),
        ("decode_ms_per_token", "latency"),
        ("samples", "quality"),
        ("tb_per_s", "rate"),
        ("speedup_vs_sdpa", "rate"),
    ],
)
def test_metric_kind_from_name(metric, kind):
    assert metric_kind(metric) == kind


def test_quality_drop_beyond_standard_error_is_a_regression():
    rules = Rules()
    # se 2 each side -> allowed 2 * sqrt(8) = 5.66 points
    assert judge(row(80, stderr=2.0, samples=50), row(75, stderr=2.0, samples=50), rules)["status"] == "ok"
    assert judge(row(80, stderr=2.0, samples=50), row(74, stderr=2.0, samples=50), rules)["status"] == "REGRESSION"
    assert judge(row(80, stderr=2.0, samples=50), row(99, stderr=2.0, samples=50), rules)["status"] == "ok"


def test_quality_without_spread_uses_the_few_sample_floor_or_exactness():
    rules = Rules()
    # n <= 5 and se 0: a 5-point floor stands in for the missing spread
    assert judge(row(100, stderr=0.0), row(96, stderr=0.0), rules)["status"] == "ok"
    assert judge(row(100, stderr=0.0), row(90, stderr=0.0), rules)["status"] == "REGRESSION"
    # many samples and no spread: any drop counts
    assert judge(row(100, stderr=0.0, samples=20), row(99, stderr=0.0, samples=20), rules)["status"] == "REGRESSION"
    # z = 0 asks for exact agreement, even with few samples
    assert judge(row(100, stderr=0.0), row(96, stderr=0.0), Rules(z=0))["status"] == "REGRESSION"


def test_latency_rise_beyond_ten_percent_is_a_regression():
    rules = Rules()
    assert judge(row(1.0, "median_ms"), row(1.09, "median_ms"), rules)["status"] == "ok"
    assert judge(row(1.0, "median_ms"), row(1.11, "median_ms"), rules)["status"] == "REGRESSION"
    assert judge(row(1.0, "median_ms"), row(0.5, "median_ms"), rules)["status"] == "ok"  # faster is fine


def test_rate_drop_and_error_rise_and_correctness_flip():
    rules = Rules()
    assert judge(row(10.0, "speedup_vs_sdpa"), row(8.0, "speedup_vs_sdpa"), rules)["status"] == "REGRESSION"
    assert judge(row(10.0, "speedup_vs_sdpa"), row(9.5, "speedup_vs_sdpa"), rules)["status"] == "ok"
    assert judge(row(1e-7, "max_abs_error"), row(5e-6, "max_abs_error"), rules)["status"] == "ok"
    assert judge(row(1e-7, "max_abs_error"), row(1e-3, "max_abs_error"), rules)["status"] == "REGRESSION"
    assert judge(row(100.0, "passed"), row(0.0, "passed"), rules)["status"] == "REGRESSION"
    assert judge(row(0.0, "passed"), row(100.0, "passed"), rules)["status"] == "ok"


def test_overrides_by_metric_win_over_kind():
    rules = Rules(parse_tolerances(["latency=0.5", "median_ms=0.01"]))
    assert judge(row(1.0, "median_ms"), row(1.05, "median_ms"), rules)["status"] == "REGRESSION"
    assert judge(row(1.0, "p90_ms"), row(1.4, "p90_ms"), rules)["status"] == "ok"
    assert (
        judge(row(80, samples=50, stderr=0.0), row(71, samples=50, stderr=0.0), Rules({"quality": 10}))["status"]
        == "ok"
    )
    with pytest.raises(ValueError, match="NAME=NUMBER"):
        parse_tolerances(["median_ms"])


def test_missing_rows_warn_and_new_rows_never_fail():
    base = [row(100, subtask="a"), row(100, subtask="b")]
    new = [row(100, subtask="a"), row(100, subtask="c")]
    comparison = compare_rows(base, new)
    assert {r["subtask"]: r["status"] for r in comparison.rows} == {"a": "ok", "b": "missing", "c": "new"}
    assert comparison.exit_code == EXIT_OK
    assert any("missing from NEW" in w for w in comparison.warnings)
    assert compare_rows(base, new, Rules(fail_on_missing=True)).exit_code == EXIT_REGRESSION
    assert "PASS" in comparison.summary()


def write_run(folder: Path, values: dict[str, list[float]], method: str = "full") -> Path:
    writer = RecordWriter(folder)
    for subtask, scores in values.items():
        for index, value in enumerate(scores):
            writer.append(sample_record(index, value, subtask, run_key=f"{method}-{subtask}", method=method))
    return folder


def test_compare_folders_end_to_end_and_exit_codes(tmp_path):
    base = write_run(tmp_path / "base", {"vt": [100.0] * 10, "qa": [50.0] * 10})
    same = write_run(tmp_path / "same", {"vt": [100.0] * 10, "qa": [50.0] * 10})
    worse = write_run(tmp_path / "worse", {"vt": [0.0] * 10, "qa": [50.0] * 10})
    assert compare_paths(base, same).exit_code == EXIT_OK
    out: list[str] = []
    assert compare_command(base, worse, [], echo=out.append, echo_err=out.append) == EXIT_REGRESSION
    assert "REGRESSION" in out[0] and out[-1].startswith("FAIL")
    out.clear()
    assert compare_command(base, worse, [], format="json", echo=out.append, echo_err=out.append) == EXIT_REGRESSION
    data = json.loads(out[-1])
    assert data["exit_code"] == 1 and {r["status"] for r in data["rows"]} == {"ok", "REGRESSION"}
    assert all(r["diff"] is None or not math.isnan(r["diff"]) for r in data["rows"])


def test_bad_input_exits_2(tmp_path):
    out: list[str] = []
    assert compare_command(tmp_path / "nope", tmp_path, [], echo=out.append, echo_err=out.append) == EXIT_BAD_INPUT
    assert "does not exist" in out[-1]
    (tmp_path / "empty").mkdir()
    assert compare_command(tmp_path / "empty", tmp_path / "empty", [], echo_err=out.append) == EXIT_BAD_INPUT
    assert "no result records" in out[-1]
    base = write_run(tmp_path / "b", {"vt": [1.0]})
    assert compare_command(base, base, ["oops"], echo_err=out.append) == EXIT_BAD_INPUT
    assert compare_command(base, base, [], format="xml", echo_err=out.append) == EXIT_BAD_INPUT


def bench_file(path: Path, lychee_ms: float) -> Path:
    data = {
        "kind": "lychee-kernel-bench",
        "device_name": "GPU",
        "shape": {"hq": 32, "hkv": 8, "head_dim": 128, "dtype": "torch.bfloat16", "budget_tokens": 4096},
        "provenance": {"code": {"commit": "abc"}, "packages": {"torch": "2"}, "device": {"name": "GPU"}},
        "rows": [
            {"kind": "copy", "median_ms": 1.0},
            *(
                {"kind": "sdpa_enable_gqa", "context": c, "batch": 1, "median_ms": c / 8192 * 0.1}
                for c in (8192, 16384)
            ),
            *(
                {
                    "kind": "lychee_layer",
                    "context": c,
                    "batch": 1,
                    "retrieval_heads": 1,
                    "median_ms": lychee_ms,
                    "speedup_vs_sdpa": c / 8192 * 0.1 / lychee_ms,
                }
                for c in (8192, 16384)
            ),
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_kernel_bench_files_compare_on_latency(tmp_path):
    base = bench_file(tmp_path / "base" / "lychee_kernel_bench.json", 0.05)
    slower = bench_file(tmp_path / "new" / "lychee_kernel_bench.json", 0.08)
    comparison = compare_paths(base, slower)
    failing = {(r["method"], r["metric"]) for r in comparison.rows if r["status"] == "REGRESSION"}
    assert failing == {("lychee_layer", "median_ms"), ("lychee_layer", "speedup_vs_sdpa")}
    assert compare_paths(base.parent, base.parent).exit_code == EXIT_OK


def test_end_to_end_latency_records_compare(tmp_path):
    def latency_folder(name: str, lychee_ms: float) -> Path:
        writer = RecordWriter(tmp_path / name)
        for method, ms in (("full", 10.0), ("lychee", lychee_ms)):
            writer.append({"kind": "latency", "task": "latency", "run_key": "r", "model": "m", "method": method,
                           "ctx": 32768, "batch": 1, "kv_fill": "random", "decode_ms": ms, "decode_reps": 20,
                           "speedup_vs_full": 10.0 / ms})  # fmt: skip
        return tmp_path / name

    base, slower = latency_folder("base", 5.0), latency_folder("new", 6.0)
    comparison = compare_paths(base, slower)
    failing = {(r["method"], r["metric"]) for r in comparison.rows if r["status"] == "REGRESSION"}
    assert failing == {("lychee", "decode_ms"), ("lychee", "speedup_vs_full")}
