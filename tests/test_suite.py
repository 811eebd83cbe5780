"""The smoke suite's definition, its kernel check, its records, and the committed baseline (no model runs here;
CI runs the suite itself through `lychee-bench suite smoke --compare results/smoke`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lychee_bench.harness.runner import parse_tasks
from lychee_bench.regress import suite as suite_module
from lychee_bench.regress.compare import EXIT_OK, EXIT_REGRESSION, compare_paths
from lychee_bench.regress.sources import load_results
from lychee_bench.regress.suite import (
    KERNEL_TASK,
    SMOKE,
    SuiteError,
    append_kernel_records,
    check_kernels,
    get_suite,
    suite_command,
)

BASELINE = Path(__file__).resolve().parents[1] / "results" / "smoke"


def test_smoke_plan_is_fixed_and_valid():
    plan = SMOKE.plan
    assert plan.device == "cpu" and plan.dtype == "float32" and plan.seed == 42 and plan.temperature == 0.0
    # Plain lychee is token granularity (the paper's quality setting); block, the speed path, runs beside it.
    assert plan.methods == ["full", "lychee", "lychee[granularity=block]", "streaming"]
    assert plan.method_options == {"budget": "512"}  # room for token's 128 sink + 256 recent and 128 chosen
    assert "roles" not in plan.method_options  # lychee runs its shipped, trained roles
    assert parse_tasks(plan.task) == [("ruler", ["niah_single_1", "niah_multikey_1", "vt"])]
    with pytest.raises(SuiteError, match="smoke"):
        get_suite("nightly")


def test_kernel_check_passes_in_interpreter_mode():
    results = check_kernels(SMOKE)  # conftest sets TRITON_INTERPRET=1 before Triton is imported
    assert [r["case"] for r in results] == [c.name for c in SMOKE.kernel_cases]
    assert all(r["passed"] for r in results), results
    assert all(r["max_abs_error"] <= SMOKE.kernel_tolerance for r in results)


def test_kernel_records_compare_and_a_failure_is_a_regression(tmp_path):
    passing = [{"case": c.name, "passed": True, "max_abs_error": 1e-7} for c in SMOKE.kernel_cases]
    failing = [dict(r) for r in passing]
    failing[1].update(passed=False, max_abs_error=0.5)
    append_kernel_records(tmp_path / "base", SMOKE, passing)
    append_kernel_records(tmp_path / "new", SMOKE, failing)
    rows = load_results(tmp_path / "base")[0].rows
    assert {(r["task"], r["metric"]) for r in rows} == {(KERNEL_TASK, "passed"), (KERNEL_TASK, "max_abs_error")}
    assert compare_paths(tmp_path / "base", tmp_path / "base").exit_code == EXIT_OK
    comparison = compare_paths(tmp_path / "base", tmp_path / "new")
    assert comparison.exit_code == EXIT_REGRESSION
    bad = {(r["subtask"], r["metric"]) for r in comparison.rows if r["status"] == "REGRESSION"}
    assert bad == {(SMOKE.kernel_cases[1].name, "passed"), (SMOKE.kernel_cases[1].name, "max_abs_error")}


def test_suite_command_compares_with_a_baseline(tmp_path, monkeypatch):
    """The suite's flow without the model: run_suite stubbed to copy a prepared run folder."""
    passing = [{"case": c.name, "passed": True, "max_abs_error": 1e-7} for c in SMOKE.kernel_cases]
    append_kernel_records(tmp_path / "baseline", SMOKE, passing)

    def fake_run(suite, out, log=print):
        append_kernel_records(out, suite, passing)
        return out

    monkeypatch.setattr(suite_module, "run_suite", fake_run)
    out: list[str] = []
    code = suite_command("smoke", tmp_path / "run", tmp_path / "baseline", False, [], 2.0, out.append, out.append)
    assert code == EXIT_OK and out[-1].startswith("PASS")
    assert suite_command("smoke", None, tmp_path / "absent", False, [], 2.0, out.append, out.append) == 2
    assert "--update-baseline" in out[-1]
    assert suite_command("nope", None, None, False, [], 2.0, out.append, out.append) == 2


def test_committed_baseline_matches_the_suite():
    if not BASELINE.exists():
        pytest.fail(f"{BASELINE} is missing; write it with `lychee-bench suite smoke --update-baseline`")
    [baseline] = load_results(BASELINE)
    methods = {(r["method"], r["subtask"]) for r in baseline.rows if r["task"] == "ruler"}
    assert methods == {(m, s) for m in SMOKE.plan.methods for s in ("niah_single_1", "niah_multikey_1", "vt")}
    kernel = {r["subtask"]: r["value"] for r in baseline.rows if r["task"] == KERNEL_TASK and r["metric"] == "passed"}
    assert kernel == {c.name: 100.0 for c in SMOKE.kernel_cases}
    assert all(
        r["ctx"] == SMOKE.plan.ctx and r["samples"] == SMOKE.plan.samples for r in baseline.rows if r["task"] == "ruler"
    )
    suites = [run.get("suite") for run in baseline.manifest["runs"]]
    assert "smoke" in suites


def test_changed_predictions_pairs_samples(tmp_path):
    from lychee_bench.harness.records import RecordWriter
    from lychee_bench.regress.suite import changed_predictions

    for name, answers in (("base", ["a", "b", "c"]), ("new", ["a", "x", "c"])):
        writer = RecordWriter(tmp_path / name)
        for index, answer in enumerate(answers):
            writer.append({"kind": "sample", "method": "full", "task": "ruler", "subtask": "vt", "index": index,
                           "prediction": answer, "metric": "string_match_all", "value": 0.0})  # fmt: skip
    assert changed_predictions(tmp_path / "base", tmp_path / "new") == (1, 3)
