"""Builds the samples of one RULER subtask at one context length.

Both sizings follow RULER's plan: size the haystack once on a calibration instance, then build each sample at
that size and shrink it only if its own random parts made it too long.

- "nvidia" (the default): NVIDIA's own rule, so haystack sizes, and so scores, can sit beside published RULER
  tables. The size grows in each script's coarse increments (niah 500 essay words or 25 sentences, qa 10
  documents, vt 10 noise lines, cwe 10 words, fwe ctx // 32 words) and stops at the last one whose input +
  gold answer + tokens to generate stays within ctx; a sample steps down one increment at a time while its
  input alone is over. Tokens are counted as NVIDIA counts them with its `base` template: the input text
  (prompt + answer prefix) by the model's tokenizer, no chat template and no BOS. The calibration draws from
  one generator seeded with the run seed, consumed across sizes as NVIDIA's global stream is.
- "tight": the largest haystack, to the unit, whose full model input (chat template included, counted by the
  caller's counter) + tokens to generate fits in ctx; no gold answer counted.

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
from lychee_bench.tasks.ruler.family import Family, Instance, NvidiaSizing, TextCounter
from lychee_bench.tasks.ruler.fitting import ContextTooShortError, largest_fitting, shrink_to_fit
from lychee_bench.tasks.ruler.freq_words import FrequentWordsFamily
from lychee_bench.tasks.ruler.niah import NeedleFamily
from lychee_bench.tasks.ruler.qa import QuestionAnsweringFamily
from lychee_bench.tasks.ruler.variable_tracking import VariableTrackingFamily

TASK_NAME = "ruler"
SIZINGS = ("nvidia", "tight")
SIZING_ENV = "LYCHEE_BENCH_RULER_SIZING"


def check_sizing(sizing: str) -> str:
    if sizing not in SIZINGS:
        raise ValueError(f"unknown RULER sizing {sizing!r}; allowed: {', '.join(SIZINGS)}")
    return sizing


def check_subtask(subtask: str) -> dict[str, Any]:
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown RULER subtask {subtask!r}; allowed: {', '.join(SUBTASKS)}")
    return SUBTASKS[subtask]


def text_counter(tokenizer: Any, count_tokens: TokenCounter) -> TextCounter:
    """Plain-text token counts for in-context examples; the full-input counter when there is no tokenizer."""
    if tokenizer is None:
        return lambda text: count_tokens(text, "")
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_family(
    subtask: str, ctx: int, seed: int, count_text: TextCounter, nvidia_stream: random.Random | None = None
) -> Family:
    """nvidia_stream: the calibration stream of NVIDIA's sizing (vt draws its solved example from it first)."""
    spec = check_subtask(subtask)
    args = spec["args"]
    family = spec["task"]
    if family == "niah":
        return NeedleFamily(args, ctx, seed)
    if family == "variable_tracking":
        return VariableTrackingFamily(args, ctx, seed, count_text, nvidia_stream)
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


def nvidia_calibration(
    family: Family, ctx: int, max_new_tokens: int, count_text: TextCounter, stream: random.Random
) -> int:
    """The haystack size NVIDIA's script prints ("Num haystack", "Number of documents", "Num noises",
    "num_words", "num_example_words") for this family, context and calibration stream.

    Its edge cases are kept: the loop runs while count + reserve < ctx and steps back only when count + reserve
    > ctx, so a count landing exactly on ctx leaves the size one increment above it; the calibration instance is
    always question 0 / index 0.
    """
    plan = family.nvidia_sizing()
    if plan.rule == "zipf":
        return _nvidia_zipf_calibration(family, plan, ctx, count_text, stream)
    reserve = max_new_tokens + plan.extra_tokens
    size, total = plan.first, 0
    while total + reserve < ctx:
        instance = family.make(size, stream, 0)
        total = count_text(instance.nvidia_text() + instance.nvidia_answer)
        if total + reserve > ctx:
            size -= plan.increment
            break
        if plan.cap is not None and plan.cap_before_step and size > plan.cap:
            size = plan.cap
            break
        size += plan.increment
        if plan.cap is not None and not plan.cap_before_step and size > plan.cap:
            size = plan.cap
            break
    return size


def _nvidia_zipf_calibration(
    family: Family, plan: NvidiaSizing, ctx: int, count_text: TextCounter, stream: random.Random
) -> int:
    state = stream.getstate()

    def count(size: int) -> int:
        if plan.same_draws_each_size:
            stream.setstate(state)
        return count_text(family.make(size, stream, 0).nvidia_text())

    size = plan.first
    while count(size) < ctx:
        size += plan.increment
    return size - plan.increment


# NVIDIA's per-sample loop, once down to one increment, retries the same size with fresh random draws for ever;
# here it gives up after this many.
NVIDIA_REDRAWS = 50


def _nvidia_sample(
    family: Family, key: str, index: int, size: int, ctx: int, max_new_tokens: int, count_text: TextCounter
) -> tuple[Instance, int]:
    """The sample at `size`, built again one increment smaller, with fresh draws, while NVIDIA's per-sample check
    fails: input (no answer) + tokens to generate + extra tokens <= ctx, or, for fwe, input <= ctx. Returns the
    instance and NVIDIA's recorded "length".

    At one increment NVIDIA keeps redrawing at that size (a redraw of qa's distractors may fit); that is done
    NVIDIA_REDRAWS times before giving up. vt's script redraws at the calibrated size whatever it is (its retry
    passes the wrong variable); here vt steps down like the others.
    """
    plan = family.nvidia_sizing()
    lo, _ = family.size_bounds(index)
    reserve = 0 if plan.rule == "zipf" else max_new_tokens + plan.extra_tokens
    attempt, redraws = 0, 0
    while True:
        if size < lo:
            raise ContextTooShortError(
                f"NVIDIA's sizing leaves {size} {family.unit} (at least {lo} needed) for a {ctx}-token context"
            )
        stream = random.Random(key if attempt == 0 else f"{key}/retry={attempt}")
        instance = family.make(size, stream, index)
        tokens = count_text(instance.nvidia_text())
        if tokens + reserve <= ctx:
            return instance, tokens + max_new_tokens + plan.extra_tokens
        attempt += 1
        if plan.rule == "zipf" or size > plan.increment:
            size -= plan.increment
        elif redraws < NVIDIA_REDRAWS:
            redraws += 1
        else:
            raise ContextTooShortError(
                f"{size} {family.unit} need {tokens + reserve} tokens with NVIDIA's sizing (redrawn {redraws}"
                f" times); the context is {ctx}"
            )


def build_samples(
    subtask: str,
    ctx: int,
    num_samples: int,
    seed: int,
    count_tokens: TokenCounter,
    tokenizer: Any,
    progress: Callable[..., Any] = tqdm,
    sizing: str = "nvidia",
) -> list[Sample]:
    spec = check_subtask(subtask)
    check_sizing(sizing)
    max_new_tokens = FAMILIES[spec["task"]]["tokens_to_generate"]
    budget = ctx - max_new_tokens
    if budget <= 0:
        raise ValueError(f"ctx={ctx} leaves no room for the prompt: {subtask} generates {max_new_tokens} tokens")
    count_text = text_counter(tokenizer, count_tokens)

    if sizing == "nvidia":
        # NVIDIA seeds Python's global generator with the run seed and draws everything from it in turn.
        stream = random.Random(seed)
        family = make_family(subtask, ctx, seed, count_text, stream)
        calibrated = nvidia_calibration(family, ctx, max_new_tokens, count_text, stream)
        lo, _ = family.size_bounds(0)
        if calibrated < max(lo, 1):
            # NVIDIA's script would go on with an empty haystack and then spin for ever.
            plan = family.nvidia_sizing()
            raise ContextTooShortError(
                f"NVIDIA's sizing cannot fit {plan.first} {family.unit}, its smallest {subtask} haystack, in {ctx}"
                f" tokens (ruler[sizing=tight] or {SIZING_ENV}=tight fits smaller haystacks)"
            )
    else:
        family = make_family(subtask, ctx, seed, count_text)
        lo, hi = family.size_bounds(0)
        calibration = largest_fitting(
            _Counter(family, _stream_key(subtask, ctx, seed, "calibration"), 0, count_tokens), budget, lo, hi
        )
        calibrated = calibration.size

    samples = []
    for index in progress(range(num_samples), desc=f"ruler/{subtask} @ {ctx}", leave=False, disable=None):
        key = _stream_key(subtask, ctx, seed, index)
        lo, hi = family.size_bounds(index)
        if sizing == "nvidia":
            size = min(calibrated, hi)
            instance, nvidia_length = _nvidia_sample(family, key, index, size, ctx, max_new_tokens, count_text)
            # input_tokens stays the full model input (chat template, BOS), which is what the engine runs.
            input_tokens = count_tokens(instance.prompt, instance.answer_prefix)
            extra = {"nvidia_length": nvidia_length}
        else:
            counter = _Counter(family, key, index, count_tokens)
            start = min(max(calibrated, lo), hi)
            fit = shrink_to_fit(counter, budget, start, lo, calibration.tokens_per_unit)
            instance, input_tokens, extra = counter.instance(fit.size), fit.tokens, {}
        meta = {**instance.meta, "ctx": ctx, "seed": seed, "sizing": sizing, "calibrated_size": calibrated, **extra}
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
                input_tokens=input_tokens,
                meta=meta,
            )
        )
    return samples
