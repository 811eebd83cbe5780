"""ROUGE-L F as LongBench computes it: the `rouge` package (pltrdy, 1.0.1), summary-level LCS, its quirks kept.

LongBench's eval.py scores summaries with `Rouge().get_scores([pred], [ref], avg=True)["rouge-l"]["f"]`, and
returns 0 when that raises. That package is not a dependency here, so this module reproduces its arithmetic:

- sentences are the pieces of the text split on "." (empty pieces dropped), each with whitespace collapsed;
  words are those sentences split on single spaces (a blank sentence gives one empty word, as there);
- counts are of DISTINCT words (the package's default `exclusive=True` turns every word list into a set):
  m = distinct reference words, n = distinct prediction words;
- the overlap is the number of distinct words in the union of one longest common subsequence per (reference
  sentence, prediction sentence) pair, each LCS rebuilt by the package's backtrack (a match goes diagonally;
  otherwise up when the cell above is strictly larger, else left), which decides WHICH LCS is taken;
- F = 2 * (P * R) / (P + R + 1e-8), with P = overlap / n and R = overlap / m;
- an empty prediction or reference (no sentence) scores 0.

One difference: the package rebuilds each LCS recursively, so a sentence pair whose backtrack is deeper than
Python's recursion limit (about 1000 steps: prediction and reference sentences of several hundred words each,
which happens in Chinese summaries, where jieba words contain no ".") raises there and LongBench scores 0.
This module has no such limit and scores the pair.
"""

from __future__ import annotations


def _sentences(text: str) -> list[str]:
    return [" ".join(piece.split()) for piece in text.split(".") if piece]


def _words(sentences: list[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _lcs_words(reference: list[str], prediction: list[str]) -> set[str]:
    """The words of the LCS that the package's backtrack picks (as a set, which is all it keeps)."""
    rows, cols = len(reference), len(prediction)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        above, row, word = table[i - 1], table[i], reference[i - 1]
        for j in range(1, cols + 1):
            row[j] = above[j - 1] + 1 if word == prediction[j - 1] else max(above[j], row[j - 1])
    picked: set[str] = set()
    i, j = rows, cols
    while i > 0 and j > 0:
        if reference[i - 1] == prediction[j - 1]:
            picked.add(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return picked


def rouge_l_f(prediction: str, reference: str) -> float:
    """ROUGE-L F (0..1) of one prediction against one reference, as `rouge` 1.0.1 reports it."""
    hyp_sentences, ref_sentences = _sentences(prediction), _sentences(reference)
    if not hyp_sentences or not ref_sentences:
        return 0.0  # the package raises ValueError; LongBench's rouge_score turns that into 0
    distinct_ref = len(set(_words(ref_sentences)))
    distinct_hyp = len(set(_words(hyp_sentences)))
    union: set[str] = set()
    hyp_words = [sentence.split(" ") for sentence in hyp_sentences]
    for ref_sentence in ref_sentences:
        ref_words = ref_sentence.split(" ")
        for words in hyp_words:
            union |= _lcs_words(ref_words, words)
    overlap = len(union)
    recall = overlap / distinct_ref
    precision = overlap / distinct_hyp
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))
