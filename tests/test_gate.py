"""The regression gate: it fails when it compares nothing, judges quality on paired samples, and the committed
smoke baseline catches any one method's predictions going empty."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lychee_bench.regress.compare import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REGRESSION,
    Rules,
    compare_command,
    compare_paths,
)

SMOKE = Path(__file__).resolve().parents[1] / "results" / "smoke"


def _sample(method: str, subtask: str, index: int, value: float) -> dict:
    return {
        "schema": 1,
        "kind": "sample",
        "run_key": f"key-{method}",
        "method": method,
        "task": "ruler",
        "subtask": subtask,
        "ctx": 1024,
        "batch": 1,
        "model": "m",
        "metric": "string_match_all",
        "index": index,
        "input_tokens": 900 + index,
        "value": value,
        "prediction": "x",
    }


def _folder(path: Path, samples: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"kind": "run", "plan": {}}))
    (path / "records.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def test_nothing_compared_fails_unless_allowed(tmp_path):
    base = _folder(tmp_path / "a", [_sample("full", "vt", 0, 100.0)])
    new = _folder(tmp_path / "b", [_sample("lychee", "qa_1", 0, 100.0)])
    said: list[str] = []
    assert compare_command(base, new, [], echo=said.append, echo_err=said.append) == EXIT_BAD_INPUT
    assert "nothing compared" in said[-1] and "--allow-empty" in said[-1] and str(new) in said[-1]
    assert compare_command(base, new, [], allow_empty=True, echo=said.append, echo_err=said.append) == EXIT_OK


def test_one_prompt_going_wrong_fails_paired_even_at_two_samples(tmp_path):
    before = [_sample("full", "vt", 0, 100.0), _sample("full", "vt", 1, 100.0)]
    after = [_sample("full", "vt", 0, 100.0), _sample("full", "vt", 1, 0.0)]
    comparison = compare_paths(_folder(tmp_path / "a", before), _folder(tmp_path / "b", after), Rules())
    [row] = comparison.rows
    assert row["status"] == "REGRESSION" and (row["pairs"], row["down"], row["up"]) == (2, 1, 0)
    assert row["diff"] == pytest.approx(-50.0) and comparison.exit_code == EXIT_REGRESSION
    loose = compare_paths(tmp_path / "a", tmp_path / "b", Rules(tolerances={"quality": 60.0}))
    assert loose.exit_code == EXIT_OK  # an explicit tolerance in points still applies


def test_swapped_samples_are_no_regression(tmp_path):
    before = [_sample("full", "vt", 0, 100.0), _sample("full", "vt", 1, 0.0)]
    after = [_sample("full", "vt", 0, 0.0), _sample("full", "vt", 1, 100.0)]
    comparison = compare_paths(_folder(tmp_path / "a", before), _folder(tmp_path / "b", after), Rules())
    [row] = comparison.rows
    assert row["status"] == "ok" and (row["down"], row["up"]) == (1, 1)


def test_other_prompts_are_not_paired(tmp_path):
    """A changed input (another length at the same index) is another prompt: the unpaired rule judges it."""
    before = [_sample("full", "vt", 0, 100.0), _sample("full", "vt", 1, 100.0)]
    after = [{**s, "input_tokens": 5} for s in [_sample("full", "vt", 0, 100.0), _sample("full", "vt", 1, 0.0)]]
    comparison = compare_paths(_folder(tmp_path / "a", before), _folder(tmp_path / "b", after), Rules())
    [row] = comparison.rows
    assert "pairs" not in row and row["status"] == "ok"  # 2 samples, se 50: the unpaired rule cannot tell
    [warning] = comparison.warnings
    assert "2 of NEW's 2 samples have no twin in BASE" in warning and "judged on its means, unpaired" in warning
    assert "wonderwords" in warning
    same = compare_paths(tmp_path / "a", tmp_path / "a", Rules())
    assert same.warnings == []  # the same prompts: nothing to say


def _methods(folder: Path) -> set[str]:
    lines = (folder / "records.jsonl").read_text().splitlines()
    return {r.get("label") or r["method"] for r in map(json.loads, lines) if r.get("kind") == "sample"}


@pytest.mark.parametrize("method", sorted(_methods(SMOKE)) if SMOKE.exists() else ["(results/smoke missing)"])
def test_smoke_baseline_catches_a_method_whose_predictions_go_empty(tmp_path, method):
    if not SMOKE.exists():
        pytest.fail(f"{SMOKE} is missing; write it with `lychee-bench suite smoke --update-baseline`")
    broken = tmp_path / "broken"
    shutil.copytree(SMOKE, broken)
    lines = []
    for line in (SMOKE / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "sample" and (record.get("label") or record["method"]) == method:
            record.update(prediction="", value=0.0)
        lines.append(json.dumps(record))
    (broken / "records.jsonl").write_text("\n".join(lines) + "\n")
    comparison = compare_paths(SMOKE, broken, Rules())
    assert comparison.exit_code == EXIT_REGRESSION
    assert {row["method"] for row in comparison.rows if row["status"] == "REGRESSION"} == {method}
    assert compare_paths(SMOKE, SMOKE, Rules()).exit_code == EXIT_OK
