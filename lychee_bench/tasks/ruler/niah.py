"""Needle in a haystack (RULER niah.py): key-value needles hidden in noise, essays or other needles."""

from __future__ import annotations

import random
import uuid
from functools import cache
from typing import Any

from lychee_bench.tasks.ruler.assets import essay_words, word_list
from lychee_bench.tasks.ruler.constants import DEPTHS, FAMILIES, NEEDLE, REPEAT_HAYSTACK
from lychee_bench.tasks.ruler.family import Instance
from lychee_bench.tasks.ruler.sentences import essay_haystack

HAYSTACKS = ("repeat", "essay", "needle")
NEEDLE_TYPES = ("numbers", "words", "uuids")


@cache
def _word_parts() -> tuple[list[str], list[str]]:
    return sorted(set(word_list("adjectives"))), sorted(set(word_list("nouns")))


def random_needle_part(kind: str, rng: random.Random) -> str:
    """A key or value: a 7-digit number, an "adjective-noun" word or a version-4 UUID."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        # RULER draws uniformly from the sorted set of all adjective-noun strings (6 million of them); drawing
        # the adjective and the noun separately is the same distribution up to the rare duplicate strings.
        adjectives, nouns = _word_parts()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
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
        asked = rng.sample(range(self.num_k), self.num_q)

        if self.haystack == "essay":
            context, depths = self._essay_context(size, needles, rng)
        else:
            context, depths = self._sentence_context(size, needles, rng)

        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        prompt = self.template.format(type_needle_v=self.type_v_text, context=context, query=query)
        prefix = self.answer_prefix.format(type_needle_v=self.type_v_text, query=query)
        answers = [value for i in asked for value in values[i]]
        meta = {"haystack": self.haystack, "haystack_size": size, "unit": self.unit, "depths": depths}
        meta["keys"] = keys
        meta["queries"] = queries
        return Instance(prompt, prefix, answers, meta)

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
