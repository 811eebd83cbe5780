"""Needle in a haystack (RULER niah.py): key-value needles hidden in noise, essays or other needles."""

from __future__ import annotations

import bisect
import random
import uuid
from functools import cache
from typing import Any

from lychee_bench.tasks.ruler.assets import essay_words, word_list
from lychee_bench.tasks.ruler.constants import DEPTHS, FAMILIES, NEEDLE, REPEAT_HAYSTACK
from lychee_bench.tasks.ruler.family import Instance, NvidiaSizing
from lychee_bench.tasks.ruler.sentences import essay_haystack

HAYSTACKS = ("repeat", "essay", "needle")
NEEDLE_TYPES = ("numbers", "words", "uuids")


class SortedPairs:
    """NVIDIA's needle words, `sorted(set(f"{adj}-{noun}" ...))` over wonderwords' lists (6.2 million strings),
    indexed without building them, so a key is drawn exactly as NVIDIA's `random.choice(words)` draws it.

    Every string of adjective a starts with P = a + "-". Adjectives whose P is not a prefix of another's P own
    a block of their own: P + each sorted noun, contiguous in the sorted set. The few whose P prefixes another
    ("well-" and "well-known-") interleave; each such cluster is sorted (and de-duplicated) for real.
    """

    def __init__(self, adjectives: list[str], nouns: list[str]):
        self.nouns = sorted(set(nouns))
        prefixes = sorted({adjective + "-" for adjective in adjectives})
        self.blocks: list[str | list[str]] = []  # a prefix with every noun, or a materialised cluster
        cluster: list[str] = []
        for prefix in [*prefixes, None]:
            if cluster and (prefix is None or not prefix.startswith(cluster[0])):
                if len(cluster) == 1:
                    self.blocks.append(cluster[0])
                else:
                    self.blocks.append(sorted({p + noun for p in cluster for noun in self.nouns}))
                cluster = []
            if prefix is not None:
                cluster.append(prefix)
        self.starts = [0]
        for block in self.blocks:
            self.starts.append(self.starts[-1] + (len(self.nouns) if isinstance(block, str) else len(block)))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(index)
        block_index = bisect.bisect_right(self.starts, index) - 1
        block, offset = self.blocks[block_index], index - self.starts[block_index]
        return block + self.nouns[offset] if isinstance(block, str) else block[offset]


@cache
def needle_words() -> SortedPairs:
    return SortedPairs(word_list("adjectives"), word_list("nouns"))


def random_needle_part(kind: str, rng: random.Random) -> str:
    """A key or value: a 7-digit number, an "adjective-noun" word or a version-4 UUID, drawn as NVIDIA draws
    them (the same calls on the same generator give the same strings)."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        words = needle_words()
        return words[rng.choice(range(len(words)))]  # random.choice(seq) is seq[_randbelow(len(seq))]
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; allowed: {NEEDLE_TYPES}")


def question_text(template: str, single: bool) -> str:
    """RULER's singular wording when exactly one value is asked for (applied to the template, not the text)."""
    if not single:
        return template
    for plural, singular in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(plural, singular)
    return template


class NeedleFamily:
    def __init__(self, args: dict[str, Any], ctx: int, seed: int):
        self.haystack = args["type_haystack"]
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"unknown haystack {self.haystack!r}; allowed: {HAYSTACKS}")
        self.type_k = args["type_needle_k"]
        self.type_v = args["type_needle_v"]
        self.num_v = args["num_needle_v"]
        self.num_q = args["num_needle_q"]
        self.num_k = max(args["num_needle_k"], self.num_q)
        self.seed = seed
        self.unit = "words" if self.haystack == "essay" else "sentences"
        single = self.num_q * self.num_v == 1
        self.template = question_text(FAMILIES["niah"]["template"], single)
        self.answer_prefix = question_text(FAMILIES["niah"]["answer_prefix"], single)
        self.type_v_text = self.type_v[:-1] if single else self.type_v  # "number" for a single value
        self.ctx = ctx

    def size_bounds(self, index: int) -> tuple[int, int]:
        if self.haystack == "essay":
            return 1, len(essay_words())
        # Each sentence is at least one token, so the context bounds the count.
        return self.num_k * self.num_v, max(self.ctx, self.num_k * self.num_v)

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        keys, values, needles = [], [], []
        for _ in range(self.num_k):
            keys.append(random_needle_part(self.type_k, rng))
            values.append([])
            for _ in range(self.num_v):
                values[-1].append(random_needle_part(self.type_v, rng))
                needles.append(NEEDLE.format(type_needle_v=self.type_v, key=keys[-1], value=values[-1][-1]))
        # RULER shuffles with a fresh generator on the run seed: the same permutation for every sample.
        random.Random(self.seed).shuffle(needles)

        if self.haystack == "essay":
            context, depths = self._essay_context(size, needles, rng)
        else:
            context, depths = self._sentence_context(size, needles, rng)
        # Drawn after the context, as NVIDIA does (its calibration stream then matches ours for uuid/number
        # needles). Whatever the size, essay contexts draw the same amount and sentence haystacks have one key,
        # so the asked key does not change with the size.
        asked = rng.sample(range(self.num_k), self.num_q)

        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        prompt = self.template.format(type_needle_v=self.type_v_text, context=context, query=query)
        prefix = self.answer_prefix.format(type_needle_v=self.type_v_text, query=query)
        answers = [value for i in asked for value in values[i]]
        meta = {"haystack": self.haystack, "haystack_size": size, "unit": self.unit, "depths": depths}
        meta["keys"] = keys
        meta["queries"] = queries
        # NVIDIA's calibration counts input + " ".join(answers): glued to the answer prefix, no space before.
        return Instance(prompt, prefix, answers, meta, nvidia_answer=" ".join(answers))

    def nvidia_sizing(self) -> NvidiaSizing:
        """niah.py: 500 essay words, or 25 sentences (5 below 4096 tokens of context) of repeat/needle noise."""
        if self.haystack == "essay":
            return NvidiaSizing(first=500, increment=500, cap=len(essay_words()), cap_before_step=True)
        step = 5 if self.ctx < 4096 else 25
        return NvidiaSizing(first=step, increment=step)

    def _essay_context(self, size: int, needles: list[str], rng: random.Random) -> tuple[str, list[int]]:
        sentences = essay_haystack().prefix_sentences(size)
        depths = rng.sample(DEPTHS, len(needles))
        cuts = [0, *sorted(int(len(sentences) * (depth / 100)) for depth in depths), len(sentences)]
        pieces = []
        for i in range(1, len(cuts)):
            pieces.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                pieces.append(needles[i - 1])
        return " ".join(pieces), sorted(depths)

    def _sentence_context(self, size: int, needles: list[str], rng: random.Random) -> tuple[str, list[int]]:
        if self.haystack == "repeat":
            sentences = [REPEAT_HAYSTACK] * size
        else:  # a haystack of distractor needles with random keys and values
            sentences = [
                NEEDLE.format(
                    type_needle_v=self.type_v,
                    key=random_needle_part(self.type_k, rng),
                    value=random_needle_part(self.type_v, rng),
                )
                for _ in range(size)
            ]
        positions = sorted(rng.sample(range(size), len(needles)), reverse=True)
        for position, needle in zip(positions, needles, strict=True):
            sentences.insert(position, needle)
        depths = sorted(round(100 * position / size) for position in positions)
        return "\n".join(sentences), depths
