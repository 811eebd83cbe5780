"""Chinese word segmentation for the Chinese metrics (qa F1 zh, ROUGE zh): jieba, as LongBench, or characters.

LongBench's metrics.py segments Chinese predictions and answers with `jieba.cut(text, cut_all=False)` (jieba's
dictionary and HMM: it has no exact stand-in). jieba is not a dependency of lychee-bench, so it is imported
only when a Chinese metric is needed. Without it, Chinese tasks fail before generating, naming the install
command; `char` (one token per character) is an explicit opt-in that runs without jieba but gives numbers
that are NOT comparable with published LongBench scores (usually higher F1: characters overlap more often
than words). The choice is recorded in the task config.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

ZH_TOKENIZERS = ("jieba", "char")
ZH_TOKENIZER_ENV = "LYCHEE_BENCH_LONGBENCH_ZH_TOKENIZER"
JIEBA_INSTALL = "pip install jieba==0.42.1"


def resolve_zh_tokenizer(choice: str | None = None) -> str:
    """The segmentation to use: the argument, else $LYCHEE_BENCH_LONGBENCH_ZH_TOKENIZER, else jieba (official)."""
    value = choice if choice is not None else os.environ.get(ZH_TOKENIZER_ENV) or "jieba"
    if value not in ZH_TOKENIZERS:
        raise ValueError(
            f"unknown Chinese tokenizer {value!r} (from {'the zh_tokenizer option' if choice else ZH_TOKENIZER_ENV});"
            f" allowed: {', '.join(ZH_TOKENIZERS)}. Use jieba for official LongBench numbers, char only without it"
        )
    return value


def jieba_version() -> str | None:
    if importlib.util.find_spec("jieba") is None:
        return None
    try:
        return importlib.metadata.version("jieba")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def missing_segmenter(mode: str) -> list[str]:
    """Why Chinese metrics cannot run with `mode` (empty when they can)."""
    if mode == "jieba" and jieba_version() is None:
        return [
            "LongBench's Chinese metrics (multifieldqa_zh, dureader, vcsum) segment words with jieba, which is not "
            f"installed: `{JIEBA_INSTALL}` (or set {ZH_TOKENIZER_ENV}=char for per-character scores, not comparable "
            "with published numbers)"
        ]
    return []


def segment(text: str, mode: str) -> list[str]:
    """Words of `text`: jieba's precise mode (cut_all=False), or single characters."""
    if mode == "char":
        return list(text)
    if mode == "jieba":
        reasons = missing_segmenter(mode)
        if reasons:
            raise RuntimeError(reasons[0])
        import jieba

        return list(jieba.cut(text, cut_all=False))
    raise ValueError(f"unknown Chinese tokenizer {mode!r}; allowed: {', '.join(ZH_TOKENIZERS)}")
