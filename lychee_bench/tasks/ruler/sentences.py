"""Sentence splitting of the essay haystack (where RULER's needles may be inserted).

RULER splits with NLTK's pretrained punkt model, which cannot be downloaded here. This is a small
deterministic rule-based splitter instead: a sentence ends after a word ending in '.', '!' or '?' (closing
quotes or brackets may follow) when the next word starts with a capital letter or a digit, unless the word is
a known abbreviation, an initial ("J.") or a dotted acronym ("U.S."). It only decides where needles may go,
so small differences from punkt move a needle by a sentence at most.

The corpus is split once; the sentences of its first n words are the whole sentences that end within them
plus the cut-off remainder, which is what splitting the truncated text would give, since every decision
depends only on a word and the one after it.
"""

from __future__ import annotations

import bisect
import re
from functools import cache

from lychee_bench.tasks.ruler.assets import essay_words

SPLITTER = "lychee-rule-splitter-v1"

_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*$")
_OPENERS = "\"'([\u201c\u2018"
_CLOSERS = "\"')]\u201d\u2019"
_ACRONYM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al inc ltd co corp fig vol pp ed approx esp"
    " jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def _is_abbreviation(word: str) -> bool:
    core = word.lstrip(_OPENERS).rstrip(_CLOSERS)[:-1]  # drop the final period
    if core.endswith("."):  # an ellipsis ends a sentence like a period does
        return False
    return core.lower() in _ABBREVIATIONS or (len(core) == 1 and core.isalpha()) or bool(_ACRONYM.match(core))


def _starts_sentence(word: str) -> bool:
    word = word.lstrip(_OPENERS)
    return bool(word) and (word[0].isupper() or word[0].isdigit())


def ends_sentence(word: str, next_word: str) -> bool:
    if not _END.search(word) or not _starts_sentence(next_word):
        return False
    if word.rstrip(_CLOSERS).endswith(("!", "?")):
        return True
    return not _is_abbreviation(word)


class SentenceHaystack:
    """A word list split once into sentences, from which the sentences of any prefix are read cheaply."""

    def __init__(self, words: list[str]):
        self.words = words
        ends = [i + 1 for i in range(len(words) - 1) if ends_sentence(words[i], words[i + 1])]
        if not ends or ends[-1] != len(words):
            ends.append(len(words))
        self.ends = ends
        starts = [0, *ends[:-1]]
        self.sentences = [" ".join(words[s:e]).strip() for s, e in zip(starts, ends, strict=True)]

    def prefix_sentences(self, num_words: int) -> list[str]:
        """The sentences of `" ".join(words[:num_words])`, in order, none empty."""
        whole = bisect.bisect_right(self.ends, num_words)
        sentences = self.sentences[:whole]
        start = self.ends[whole - 1] if whole else 0
        rest = " ".join(self.words[start:num_words]).strip()
        if rest:
            sentences.append(rest)
        return [s for s in sentences if s]


@cache
def essay_haystack() -> SentenceHaystack:
    return SentenceHaystack(essay_words())
