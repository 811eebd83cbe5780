"""Frequent words extraction (RULER freq_words_extraction.py): coded words drawn from a Zipf law.

The vocabulary has ctx/50 random 6-letter words; the word of rank k appears int(n * k^-alpha / zeta(alpha))
times for a size n. Rank 1 is replaced by '...' (noise the prompt says to ignore); ranks 2-4 are the answer.
"""

from __future__ import annotations

import math
import random
import string
from typing import Any

from lychee_bench.tasks.ruler.constants import FAMILIES
from lychee_bench.tasks.ruler.family import Instance, NvidiaSizing

TEMPLATE = FAMILIES["freq_words_extraction"]["template"]
ANSWER_PREFIX = FAMILIES["freq_words_extraction"]["answer_prefix"]
WORD_LENGTH = 6
TOKENS_PER_VOCAB_WORD = 50  # RULER: vocab_size = max_seq_length // 50


def riemann_zeta(alpha: float) -> float:
    """zeta(alpha) for alpha > 1 (RULER calls scipy; zeta(2) = pi^2/6 is the only value it uses)."""
    if alpha == 2.0:
        return math.pi**2 / 6
    if alpha <= 1.0:
        raise ValueError(f"zeta diverges for alpha={alpha}; use alpha > 1")
    # Partial sum plus the Euler-Maclaurin tail; exact to double precision for alpha > 1.
    n = 1000
    head = sum(k**-alpha for k in range(1, n))
    tail = n ** (1 - alpha) / (alpha - 1) + 0.5 * n**-alpha + alpha * n ** (-alpha - 1) / 12
    return head + tail


class FrequentWordsFamily:
    unit = "words"

    def __init__(self, args: dict[str, Any], ctx: int, seed: int):
        self.alpha = float(args["alpha"])
        self.zeta = riemann_zeta(self.alpha)
        self.vocab_size = max(ctx // TOKENS_PER_VOCAB_WORD, 4)
        self.seed = seed
        self.ctx = ctx

    def size_bounds(self, index: int) -> tuple[int, int]:
        # Every written word is at least one token and about `size` words are written.
        return 1, 2 * self.ctx

    def _vocabulary(self, rng: random.Random) -> list[str]:
        words: set[str] = set()
        while len(words) < self.vocab_size:
            words.add("".join(rng.choices(string.ascii_lowercase, k=WORD_LENGTH)))
        vocab = sorted(words)
        random.Random(self.seed).shuffle(vocab)  # RULER: a fresh generator on the run seed
        vocab[0] = "..."
        return vocab

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        vocab = self._vocabulary(rng)
        counts = [int(size * rank**-self.alpha / self.zeta) for rank in range(1, len(vocab) + 1)]
        text = [word for word, count in zip(vocab, counts, strict=True) for _ in range(count)]
        random.Random(self.seed).shuffle(text)
        prompt = TEMPLATE.format(context=" ".join(text))
        meta = {"haystack_size": size, "unit": self.unit, "vocab_size": self.vocab_size, "alpha": self.alpha}
        return Instance(prompt, ANSWER_PREFIX, vocab[1:4], meta)

    def nvidia_sizing(self) -> NvidiaSizing:
        """freq_words_extraction.py: from ctx // 6 words in steps of ctx // 32, fitted to ctx itself (its 50
        generated tokens are not reserved), one vocabulary for the whole calibration."""
        return NvidiaSizing(
            first=self.ctx // WORD_LENGTH, increment=max(self.ctx // 32, 1), rule="zipf", same_draws_each_size=True
        )
