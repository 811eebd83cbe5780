"""Fitting a haystack to a token budget: the largest size whose prompt still fits.

RULER grows the haystack in fixed steps (500 essay words, 25 sentences, 10 documents, ...), re-tokenising
the whole prompt at every step, and keeps the last size that fits. That is slow at 128K and leaves up to one
step unused. Here the size is found to the unit with a search that uses the near-linear growth of the token
count: two small probes give a slope, then each probe is placed by interpolation between the largest size
known to fit and the smallest known not to, falling back to bisection when interpolation stalls. A 128K
prompt is then tokenised about five times instead of a few hundred.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


class ContextTooShortError(ValueError):
    """Even the smallest haystack does not fit in the context."""


@dataclass(frozen=True)
class Fit:
    size: int  # haystack units (words, sentences, documents, ...)
    tokens: int  # counted tokens at that size
    tokens_per_unit: float  # slope seen during the search, used to shrink single samples


def largest_fitting(count_at: Callable[[int], int], budget: int, lo: int, hi: int, step: int = 1) -> Fit:
    """Largest size in {lo, lo+step, ..., <= hi} whose count_at(size) <= budget.

    count_at is assumed to grow about linearly with size; where it wobbles (random needles), the result is a
    size that fits next to one that does not.
    """
    counts: dict[int, int] = {}

    def count(units: int) -> int:  # in steps above lo
        if units not in counts:
            counts[units] = count_at(lo + units * step)
        return counts[units]

    top = (hi - lo) // step
    if count(0) > budget:
        raise ContextTooShortError(f"the smallest haystack ({lo}) needs {count(0)} tokens; the budget is {budget}")

    def slope(a: int, b: int) -> float:
        return max((count(b) - count(a)) / (b - a), 1e-9)

    fit, over = 0, None  # largest size known to fit, smallest known not to (in steps above lo)
    probe: int | None = min(top, 16)
    last_fitted, same_side = None, 0
    while fit < top and (over is None or over - fit > 1):
        if probe is None:
            if over is not None and same_side >= 2:  # interpolation keeps landing on one side: bisect
                probe = (fit + over) // 2
            else:  # regula falsi inside the bracket, extrapolation from the first probe before it
                rate = slope(fit, over) if over is not None else slope(0, fit)
                probe = fit + math.floor((budget - count(fit)) / rate)
            probe = min(max(probe, fit + 1), top if over is None else over - 1)
        fitted = count(probe) <= budget
        same_side = same_side + 1 if fitted == last_fitted else 1
        last_fitted = fitted
        if fitted:
            fit = probe
        else:
            over = probe
        probe = None
    rate = slope(0, fit) if fit > 0 else slope(0, over) if over is not None else 1.0
    return Fit(size=lo + fit * step, tokens=count(fit), tokens_per_unit=rate / step)


def shrink_to_fit(count_at: Callable[[int], int], budget: int, size: int, lo: int, tokens_per_unit: float) -> Fit:
    """Walk a size down until count_at(size) <= budget (one sample whose random parts came out longer)."""
    tokens = count_at(size)
    while tokens > budget:
        if size <= lo:
            raise ContextTooShortError(f"the smallest haystack ({lo}) needs {tokens} tokens; the budget is {budget}")
        excess_units = math.ceil((tokens - budget) / max(tokens_per_unit, 1e-9))
        size = max(lo, size - max(1, excess_units))
        tokens = count_at(size)
    return Fit(size=size, tokens=tokens, tokens_per_unit=tokens_per_unit)
