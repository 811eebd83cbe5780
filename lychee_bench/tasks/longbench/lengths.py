"""LongBench-E's length buckets: scores broken down by the example's `length` field (eval.py's scorer_e).

`length` is the official data's length of the example (words for English, characters for Chinese), not a
token count, so the bucket of an example does not depend on the model or on --ctx.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")


def length_bucket(length: int) -> str:
    """scorer_e's bucket: below 4000, below 8000, else 8k+."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def length_breakdown(scored: Iterable[tuple[int, float]]) -> dict[str, dict[str, float]]:
    """Mean score and count per bucket from (length, score 0..100) pairs; an empty bucket's mean is NaN, as in
    scorer_e (which reports round(100 * mean, 2) on 0..1 scores: the same number before rounding)."""
    groups: dict[str, list[float]] = {bucket: [] for bucket in BUCKETS}
    for length, score in scored:
        groups[length_bucket(length)].append(score)
    return {
        bucket: {"value": sum(values) / len(values) if values else math.nan, "samples": len(values)}
        for bucket, values in groups.items()
    }
