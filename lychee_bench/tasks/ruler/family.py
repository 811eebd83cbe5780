"""What each RULER generator family gives the driver: one instance for a haystack size and a random stream."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Counts the tokens of plain text with the model's tokenizer, no chat template and no special tokens
# (RULER sizes its in-context examples this way).
TextCounter = Callable[[str], int]


@dataclass
class Instance:
    prompt: str
    answer_prefix: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    unit: str  # what a haystack size counts: "words", "sentences", "documents", ...

    def size_bounds(self, index: int) -> tuple[int, int]:
        """Smallest and largest haystack size that sample `index` can have."""
        ...

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        """Sample `index` with a haystack of `size` units. Draws that do not depend on size come first, so
        one random stream gives nearly the same text at every size and the length search sees a smooth count.
        """
        ...
