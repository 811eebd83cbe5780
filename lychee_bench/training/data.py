"""Synthetic multi-passkey retrieval samples for head-role training (LycheeDecode, arXiv 2602.04541 §3).

A sample is a long text (a random window of a long-document corpus, training/corpus.py: by default the
Shakespeare works of Project Gutenberg, a local stand-in for the official recipe's BookSum; `corpus="ruler-essay"`
for RULER's Paul Graham essays, what earlier runs used) with `num_passkeys` passkeys of `passkey_words` random
nouns (wonderwords' list) inserted at sorted random depths, followed by an answer segment that asks for each
passkey in turn and gives its answer. The context is prefilled densely; the loss is
measured on the answer segment, by default only on the passkey (answer) tokens.

Wording (ours; the public code words it differently):
    context: "Below is a long text. Hidden in it are {N} passkeys, each a sequence of words. Remember them.\n\n"
             + text with "\n\nThe {ordinal} passkey is: {words}.\n\n" inserted + "\n\nEnd of the text.\n\n"
    segment: for each n: "What is the {ordinal} passkey?\nAnswer:" + " {words}" (answer tokens) + "\n\n"
No chat template: the segment continues the raw text (as in the public code); the tokenizer's own special
tokens (a BOS where it adds one) start the context. Lengths are measured in tokens of the model's tokenizer:
the context has exactly the drawn length, chosen uniformly in [ctx_min, ctx_max] (default 1000-10000, the official
recipe's range). Every sample is a pure function of (config, seed), so a resumed run sees the same data.

The haystack window: for a text corpus, the text from the start of a random line, tokenized as it is (line
breaks kept); for the essays, words from a random word offset joined by single spaces, exactly as before (so
earlier essay runs keep their samples and their recorded settings).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lychee_bench.training.corpus import CORPORA, DEFAULT_CORPUS, load_corpus

ESSAY_CORPUS = "ruler-essay"
CHARS_PER_TOKEN = 4  # the first text window read per token asked for (English BPE: about 3.2); doubled if short

ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()

INTRO = "Below is a long text. Hidden in it are {count} passkeys, each a sequence of words. Remember them.\n\n"
NEEDLE = "\n\nThe {ordinal} passkey is:"
NEEDLE_END = ".\n\n"
OUTRO = "\n\nEnd of the text.\n\n"
QUESTION = "What is the {ordinal} passkey?\nAnswer:"
ANSWER_END = "\n\n"


@dataclass(frozen=True)
class PasskeyConfig:
    """What a training sample looks like; recorded with the trained roles."""

    ctx_min: int = 1000
    ctx_max: int = 10000
    num_passkeys: int = 10
    passkey_words: int = 32
    depth_min: float = 0.05
    depth_max: float = 0.95
    word_list: str = "nouns"
    loss_on: str = "answers"  # "answers" (passkey tokens only) or "segment" (every answer-segment token)
    corpus: str = DEFAULT_CORPUS  # the haystack text: shakespeare or ruler-essay (training/corpus.py)

    def __post_init__(self) -> None:
        if not 1 <= self.num_passkeys <= len(ORDINALS):
            raise ValueError(f"num_passkeys={self.num_passkeys}: use 1..{len(ORDINALS)}")
        if self.passkey_words < 1:
            raise ValueError(f"passkey_words={self.passkey_words}: use at least 1")
        if not 0.0 <= self.depth_min <= self.depth_max <= 1.0:
            raise ValueError(f"depths [{self.depth_min}, {self.depth_max}] must satisfy 0 <= min <= max <= 1")
        if not 0 < self.ctx_min <= self.ctx_max:
            raise ValueError(f"context range [{self.ctx_min}, {self.ctx_max}] must satisfy 0 < min <= max")
        if self.loss_on not in ("answers", "segment"):
            raise ValueError(f"loss_on={self.loss_on!r}: use 'answers' or 'segment'")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus={self.corpus!r}: use one of {', '.join(sorted(CORPORA))}")

    def describe(self) -> dict[str, Any]:
        """The settings as recorded; a text corpus adds its package, file count and sha256 (the essays' record is
        the one earlier runs wrote, so their checkpoints still resume)."""
        described = {**asdict(self), "chat_template": False, "wording": "lychee-bench v1"}
        if self.corpus != ESSAY_CORPUS:
            described["corpus_text"] = load_corpus(self.corpus).describe()
        return described


@dataclass
class PasskeySample:
    context_ids: torch.Tensor  # [ctx] long
    segment_ids: torch.Tensor  # [seg] long
    loss_mask: torch.Tensor  # [seg] bool: the segment tokens the distillation loss is measured on
    passkeys: list[str]
    depths: list[float]

    @property
    def context_length(self) -> int:
        return int(self.context_ids.numel())


class PasskeyData:
    """Builds samples for one tokenizer; `sample(seed)` is deterministic."""

    def __init__(self, tokenizer: Any, config: PasskeyConfig):
        from lychee_bench.tasks.ruler.assets import essay_words, word_list

        self.tokenizer = tokenizer
        self.config = config
        essays = config.corpus == ESSAY_CORPUS
        self.haystack_words = essay_words() if essays else []
        self.haystack_text = "" if essays else load_corpus(config.corpus).text
        self.vocabulary = sorted({w for w in word_list(config.word_list) if w.isalpha() and w.islower()})
        self.intro = self._ids(INTRO.format(count=config.num_passkeys), special=True)
        self.outro = self._ids(OUTRO)

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special).input_ids)

    def _haystack(self, rng: random.Random, num_tokens: int) -> list[int]:
        """`num_tokens` tokens of corpus text: a text corpus from the start of a random line, the essays from a
        random word offset (every word is at least one token)."""
        if self.haystack_text:
            return self._text_window(rng, num_tokens)
        words = self.haystack_words
        span = min(len(words), num_tokens + 16)
        start = rng.randrange(0, len(words) - span + 1)
        ids = self._ids(" ".join(words[start : start + span]))
        while len(ids) < num_tokens:  # only for a corpus shorter than the request: repeat it
            ids = ids + ids
        return ids[:num_tokens]

    def _text_window(self, rng: random.Random, num_tokens: int) -> list[int]:
        text = self.haystack_text
        span = CHARS_PER_TOKEN * num_tokens + 64
        start = rng.randrange(0, max(1, len(text) - 4 * span))
        start = text.find("\n", start) + 1  # the start of the next line (0 when there is none: the text's start)
        ids = self._ids(text[start : start + span])
        while len(ids) < num_tokens and start + span < len(text):  # a denser stretch: read on
            span *= 2
            ids = self._ids(text[start : start + span])
        if not ids:
            raise ValueError(f"the {self.config.corpus} corpus gave no tokens; reinstall its package")
        while len(ids) < num_tokens:  # only for a corpus shorter than the request: repeat it
            ids = ids + ids
        return ids[:num_tokens]

    def _passkeys(self, rng: random.Random) -> list[str]:
        words, count = self.config.passkey_words, self.config.num_passkeys
        return [" ".join(rng.choice(self.vocabulary) for _ in range(words)) for _ in range(count)]

    def _segment(self, answers: list[list[int]]) -> tuple[list[int], list[bool]]:
        """The questions with their answers, and which of those tokens the loss is measured on."""
        in_loss = self.config.loss_on == "segment"
        segment: list[int] = []
        mask: list[bool] = []
        for n, answer in enumerate(answers):
            question, end = self._ids(QUESTION.format(ordinal=ORDINALS[n])), self._ids(ANSWER_END)
            segment += question + answer + end
            mask += [in_loss] * len(question) + [True] * len(answer) + [in_loss] * len(end)
        return segment, mask

    def segment_ids(self, seed: int) -> list[int]:
        """The answer segment alone (for sizing: its passkeys are not those of `sample(seed)`)."""
        return self._segment([self._ids(" " + key) for key in self._passkeys(random.Random(seed))])[0]

    def sample(self, seed: int) -> PasskeySample:
        cfg = self.config
        rng = random.Random(seed)
        ctx_len = rng.randint(cfg.ctx_min, cfg.ctx_max)
        passkeys = self._passkeys(rng)
        answers = [self._ids(" " + key) for key in passkeys]
        needles = [
            self._ids(NEEDLE.format(ordinal=ORDINALS[n])) + answers[n] + self._ids(NEEDLE_END)
            for n in range(cfg.num_passkeys)
        ]
        fixed = len(self.intro) + len(self.outro) + sum(len(needle) for needle in needles)
        text_len = ctx_len - fixed
        if text_len < cfg.num_passkeys:
            raise ValueError(
                f"context length {ctx_len} is too short for {cfg.num_passkeys} passkeys of {cfg.passkey_words} "
                f"words ({fixed} tokens without any text); raise ctx_min or lower num_passkeys / passkey_words"
            )
        text = self._haystack(rng, text_len)
        depths = sorted(rng.uniform(cfg.depth_min, cfg.depth_max) for _ in range(cfg.num_passkeys))
        context, previous = list(self.intro), 0
        for depth, needle in zip(depths, needles, strict=True):
            point = int(round(depth * text_len))
            context += text[previous:point] + needle
            previous = point
        context += text[previous:] + self.outro
        segment, mask = self._segment(answers)
        return PasskeySample(
            context_ids=torch.tensor(context, dtype=torch.long),
            segment_ids=torch.tensor(segment, dtype=torch.long),
            loss_mask=torch.tensor(mask, dtype=torch.bool),
            passkeys=passkeys,
            depths=depths,
        )
