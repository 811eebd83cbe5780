"""What each RULER generator family gives the driver: one instance for a haystack size and a random stream,
and how NVIDIA's script for the family sizes its haystack."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Counts the tokens of plain text with the model's tokenizer, no chat template and no special tokens
# (RULER sizes its in-context examples this way, and NVIDIA's sizing counts every input this way).
TextCounter = Callable[[str], int]


@dataclass
class Instance:
    prompt: str
    answer_prefix: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    # What NVIDIA's script tokenises for its per-sample check when that is not prompt + answer_prefix (vt: the
    # question without the solved example, whose tokens are counted once, beside it).
    nvidia_input: str | None = None
    # What NVIDIA's calibration loop appends to the input before counting (the gold answer, in each script's
    # own format: niah joins values with no leading space, vt and qa write the Python list).
    nvidia_answer: str = ""

    def nvidia_text(self) -> str:
        """The input text as NVIDIA builds it with its `base` model template: template + answer prefix."""
        return self.prompt + self.answer_prefix if self.nvidia_input is None else self.nvidia_input


@dataclass(frozen=True)
class NvidiaSizing:
    """How NVIDIA's generator script grows and checks this family's haystack (its generate_samples / sys_*).

    rule "grow" (niah, vt, cwe, qa): start at `first`, count input + answer, step by `increment` while the count
    + tokens to generate + `extra_tokens` stays below the context, step back once it goes over; then every
    sample is built at that size and stepped down while its input alone (+ tokens to generate + extra) is over.
    rule "zipf" (fwe): start at ctx // 6 words, step up while the input is under ctx (no answer, no tokens to
    generate), step back once; every sample steps down while its input is over ctx.
    """

    first: int
    increment: int
    rule: Literal["grow", "zipf"] = "grow"
    cap: int | None = None  # the script's upper bound (essay words, documents, vocabulary words)
    cap_before_step: bool = False  # niah tests the cap before stepping up, qa and cwe after
    extra_tokens: int = 0  # tokens counted beside the input (vt's solved example)
    same_draws_each_size: bool = False  # fwe draws its vocabulary once for the whole calibration


class Family(Protocol):
    unit: str  # what a haystack size counts: "words", "sentences", "documents", ...

    def size_bounds(self, index: int) -> tuple[int, int]:
        """Smallest and largest haystack size that sample `index` can have."""
        ...

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        """Sample `index` with a haystack of `size` units. Draws come in the order of NVIDIA's script, and those
        whose outcome the size changes come late, so one random stream gives nearly the same text at every size
        and the length search sees a smooth count.
        """
        ...

    def nvidia_sizing(self) -> NvidiaSizing:
        """The increments, bounds and counting rule of NVIDIA's script for this family at this context."""
        ...
