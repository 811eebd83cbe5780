"""Builds the samples of one RULER subtask at one context length.

Length fitting follows RULER's plan: size the haystack once on a calibration instance (the largest that
fits), then build each sample at that size and shrink it only if its own random parts made it too long. The
budget is the context minus the tokens to generate, and tokens are counted on the full model input (chat
template included) by the caller's counter.

Every sample draws from its own generator, seeded by (subtask, ctx, seed, index), so sample i is the same
whether 5 or 500 are built, and no global random state is touched.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from lychee_bench.harness.task import Sample, TokenCounter
from lychee_bench.tasks.ruler.common_words import CommonWordsFamily
from lychee_bench.tasks.ruler.constants import FAMILIES, SUBTASKS, metric_for
from lychee_bench.tasks.ruler.family import Family, Instance, TextCounter
from lychee_bench.tasks.ruler.fitting import largest_fitting, shrink_to_fit
from lychee_bench.tasks.ruler.freq_words import FrequentWordsFamily
from lychee_bench.tasks.ruler.niah import NeedleFamily
from lychee_bench.tasks.ruler.qa import QuestionAnsweringFamily
from lychee_bench.tasks.ruler.variable_tracking import VariableTrackingFamily

TASK_NAME = "ruler"


def check_subtask(subtask: str) -> dict[str, Any]:
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown RULER subtask {subtask!r}; allowed: {', '.join(SUBTASKS)}")
    return SUBTASKS[subtask]


def text_counter(tokenizer: Any, count_tokens: TokenCounter) -> TextCounter:
    """Plain-text token counts for in-context examples; the full-input counter when there is no tokenizer."""
    if tokenizer is None:
        return lambda text: count_tokens(text, "")
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_family(subtask: str, ctx: int, seed: int, count_text: TextCounter) -> Family:
    spec = check_subtask(subtask)
    args = spec["args"]
    family = spec["task"]
    if family == "niah":
        return NeedleFamily(args, ctx, seed)
    if family == "variable_tracking":
        return VariableTrackingFamily(args, ctx, seed, count_text)
    if family == "common_words_extraction":
        return CommonWordsFamily(args, ctx, seed)
    if family == "freq_words_extraction":
        return FrequentWordsFamily(args, ctx, seed)
    return QuestionAnsweringFamily(args, ctx, seed)


def _stream_key(subtask: str, ctx: int, seed: int, index: int | str) -> str:
    # random.Random hashes a str seed with sha512: stable across processes (unlike hash()).
    return f"ruler/{subtask}/ctx={ctx}/seed={seed}/{index}"


class _Counter:
    """Token count of the instance at each size for one random stream, keeping the last instance built."""

    def __init__(self, family: Family, key: str, index: int, count_tokens: TokenCounter):
        self.family, self.key, self.index, self.count_tokens = family, key, index, count_tokens
        self.built: dict[int, Instance] = {}

    def __call__(self, size: int) -> int:
        instance = self.family.make(size, random.Random(self.key), self.index)
        self.built = {size: instance}
        return self.count_tokens(instance.prompt, instance.answer_prefix)

    def instance(self, size: int) -> Instance:
        if size not in self.built:
            self(size)
        return self.built[size]


def build_samples(
    subtask: str,
    ctx: int,
    num_samples: int,
    seed: int,
    count_tokens: TokenCounter,
    tokenizer: Any,
    progress: Callable[..., Any] = tqdm,
) -> list[Sample]:
    spec = check_subtask(subtask)
    max_new_tokens = FAMILIES[spec["task"]]["tokens_to_generate"]
    budget = ctx - max_new_tokens
    if budget <= 0:
        raise ValueError(f"ctx={ctx} leaves no room for the prompt: {subtask} generates {max_new_tokens} tokens")
    family = make_family(subtask, ctx, seed, text_counter(tokenizer, count_tokens))

    lo, hi = family.size_bounds(0)
    calibration = largest_fitting(
        _Counter(family, _stream_key(subtask, ctx, seed, "calibration"), 0, count_tokens), budget, lo, hi
    )

    samples = []
    for index in progress(range(num_samples), desc=f"ruler/{subtask} @ {ctx}", leave=False, disable=None):
        counter = _Counter(family, _stream_key(subtask, ctx, seed, index), index, count_tokens)
        lo, hi = family.size_bounds(index)
        start = min(max(calibration.size, lo), hi)
        fit = shrink_to_fit(counter, budget, start, lo, calibration.tokens_per_unit)
        instance = counter.instance(fit.size)
        meta = {**instance.meta, "ctx": ctx, "seed": seed, "calibrated_size": calibration.size}
        samples.append(
            Sample(
                task=TASK_NAME,
                subtask=subtask,
                index=index,
                prompt=instance.prompt,
                answer_prefix=instance.answer_prefix,
                references=instance.references,
                max_new_tokens=max_new_tokens,
                metric=metric_for(spec["task"]),
                input_tokens=fit.tokens,
                meta=meta,
            )
        )
    return samples
