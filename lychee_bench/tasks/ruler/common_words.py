"""Common words extraction (RULER common_words_extraction.py): find the 10 words repeated most in a list.

The prompt holds a solved example first. Below 4096 tokens of context RULER uses fewer repeats (example
3/1, task 6/1 instead of 10/3 and 30/3), so the list still has room for uncommon words.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

from lychee_bench.tasks.ruler.assets import word_list
from lychee_bench.tasks.ruler.constants import FAMILIES
from lychee_bench.tasks.ruler.family import Instance, NvidiaSizing

TEMPLATE = FAMILIES["common_words_extraction"]["template"]
ANSWER_PREFIX = FAMILIES["common_words_extraction"]["answer_prefix"]
SHORT_CONTEXT = 4096


@cache
def _vocabulary(seed: int) -> list[str]:
    words = sorted(set(word_list("nouns") + word_list("adjectives") + word_list("verbs")))
    random.Random(seed).shuffle(words)
    return words


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


class CommonWordsFamily:
    unit = "distinct words"

    def __init__(self, args: dict[str, Any], ctx: int, seed: int):
        self.num_common = args["num_cw"]
        self.seed = seed
        if ctx < SHORT_CONTEXT:
            self.example_shape = (20, 3, 1)  # distinct words, repeats of common ones, repeats of the rest
            self.repeats = (6, 1)
        else:
            self.example_shape = (40, 10, 3)
            self.repeats = (args["freq_cw"], args["freq_ucw"])

    def size_bounds(self, index: int) -> tuple[int, int]:
        return self.num_common, len(_vocabulary(self.seed))

    def _word_list(self, num_words: int, common_repeats: int, other_repeats: int, rng: random.Random):
        chosen = rng.sample(_vocabulary(self.seed), num_words)
        common, others = chosen[: self.num_common], chosen[self.num_common :]
        listed = common * common_repeats + others * other_repeats
        random.Random(self.seed).shuffle(listed)  # RULER: a fresh generator on the run seed
        return _numbered(listed), common

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        example_list, example_answer = self._word_list(*self.example_shape, rng)
        task_list, answer = self._word_list(size, *self.repeats, rng)
        # RULER's example keeps the answer prefix and glues the numbered answer to it without a space.
        example = TEMPLATE.format(context=example_list) + ANSWER_PREFIX + _numbered(example_answer)
        prompt = example + "\n" + TEMPLATE.format(context=task_list)
        meta = {"haystack_size": size, "unit": self.unit, "repeats": list(self.repeats)}
        # NVIDIA's calibration counts input + " " + the numbered answer ("1. word 2. word ...").
        return Instance(prompt, ANSWER_PREFIX, answer, meta, nvidia_answer=" " + _numbered(answer))

    def nvidia_sizing(self) -> NvidiaSizing:
        """common_words_extraction.py: 10 distinct words at a time, at most the whole vocabulary (tested after
        stepping up)."""
        return NvidiaSizing(first=10, increment=10, cap=len(_vocabulary(self.seed)))
