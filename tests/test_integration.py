"""End to end on the real default model (SmolLM2-135M-Instruct, CPU, short context)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, read_jsonl

# Whole runs of the real model on the CPU (about a minute each on a shared 2-core machine): slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_run_report_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--method", "full,streaming", "--task", "ruler/niah_single_1", "--ctx", "1024", "--out", str(out)]
    result = cli(*args, "--samples", "1")
    assert result.exit_code == 0, result.output
    assert "niah_single_1" in result.output and "full" in result.output and "streaming" in result.output
    first = read_jsonl(out / "records.jsonl", kind="sample")
    assert len(first) == 2
    record = first[0]
    for key in ("method_config", "path", "model_fingerprint", "seed", "code", "input_format", "references"):
        assert key in record
    assert record["input_format"]["decode_exercise"] is True and record["exercise_tokens"] > 0

    # Asking for one more sample resumes: the finished ones are not redone.
    result = cli(*args, "--samples", "2")
    assert result.exit_code == 0, result.output
    samples = read_jsonl(out / "records.jsonl", kind="sample")
    assert len(samples) == 4
    assert [r["index"] for r in samples[:2]] == [0, 0] and {r["index"] for r in samples[2:]} == {1}

    report = cli("report", str(out), "--format", "json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)
    by_method = {r["method"]: r for r in rows if r["subtask"] == "niah_single_1"}
    assert set(by_method) == {"full", "streaming"}
    for row in by_method.values():
        assert row["samples"] == 2 and 0.0 <= row["value"] <= 100.0
        for key in ("method", "task", "subtask", "ctx", "model", "metric", "value", "samples"):
            assert key in row

    # A corrupt line is reported with its number; the other records are still used.
    with open(out / "records.jsonl", "a") as handle:
        handle.write("garbage\n")
    report = cli("report", str(out))
    assert report.exit_code == 0
    assert "records.jsonl:" in report.output and "niah_single_1" in report.output


def test_lychee_runs_on_the_default_model(tmp_path):
    out = tmp_path / "lychee"
    args = ["--roles", "uniform:11", "--budget", "512", "--task", "ruler/niah_single_1", "--ctx", "1024"]
    result = cli("run", "--method", "lychee", *args, "--samples", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = read_jsonl(out / "records.jsonl", kind="sample")[0]
    assert record["method_config"]["roles_used"]["retrieval_heads"] == 11
    assert record["path"] == "reference" and record["method_config"]["granularity"] == "token"  # the default


def test_a_repeated_method_option_runs_every_entry(tmp_path):
    """`--method full --method streaming` runs both (a repeated option once kept only the last, silently)."""
    out = tmp_path / "both"
    args = ["--task", "ruler/niah_single_1", "--ctx", "1024", "--samples", "1", "--budget", "512"]
    result = cli("run", "--method", "full", "--method", "streaming,quest", *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    labels = {record["label"] for record in read_jsonl(out / "records.jsonl", kind="sample")}
    assert labels == {"full", "streaming", "quest"}
