"""RULER's scoring: clean the prediction, then count the gold strings found in it (case-insensitive), 0..100."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


def postprocess_prediction(prediction: str | None) -> str:
    """RULER's postprocess_pred: strip, turn every control character into a newline, strip again."""
    if prediction is None:
        return ""
    return _CONTROL_CHARACTERS.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Percentage of the gold strings that occur in the prediction."""
    text = prediction.lower()
    return sum(1.0 for ref in references if ref.lower() in text) / len(references) * 100


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """100 if any gold string occurs in the prediction, else 0."""
    text = prediction.lower()
    return max(1.0 if ref.lower() in text else 0.0 for ref in references) * 100


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
}


def score_prediction(metric: str, prediction: str | None, references: Sequence[str]) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown RULER metric {metric!r}; allowed: {sorted(METRICS)}")
    if not references:
        raise ValueError("a RULER sample needs at least one gold string")
    return METRICS[metric](postprocess_prediction(prediction), references)
