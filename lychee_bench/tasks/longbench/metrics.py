"""LongBench's metrics (eval.py and metrics.py of THUDM/LongBench), re-implemented to give the same numbers.

Each metric scores one prediction against one answer in 0..1 as the official code does; `score_prediction`
applies eval.py's first-line rule, takes the best answer and reports 0..100. Quirks that change numbers are
kept on purpose and tested: the qa F1 of two empty answers is 0 (not 1), English normalisation removes ASCII
punctuation only, the Chinese punctuation list lacks "《", classification drops sub-string classes while
iterating (so it can skip one), and count/retrieval share credit among all numbers in the prediction.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher

from lychee_bench.tasks.longbench.prompts import FIRST_LINE_ONLY, METRIC
from lychee_bench.tasks.longbench.rouge import rouge_l_f
from lychee_bench.tasks.longbench.segment import segment

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)
# metrics.py's Chinese punctuation (normalize_zh_answer), as listed there; "《" is missing in the original.
_CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣"
    "､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_ZH_PUNCTUATION = _ASCII_PUNCTUATION | frozenset(_CN_PUNCTUATION)
_DIGITS = re.compile(r"\d+")


def first_line(prediction: str) -> str:
    """eval.py's rule for trec, triviaqa, samsum and lsht: drop leading newlines, keep the first line."""
    return prediction.lstrip("\n").split("\n")[0]


def normalize_answer(text: str) -> str:
    """SQuAD-style: lower case, drop ASCII punctuation, then the words a/an/the, then collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Lower case, drop ASCII and Chinese punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCTUATION).split())


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of the token multisets; 0 when nothing is shared (also when both are empty)."""
    same = sum((Counter(prediction) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(reference)
    return (2 * precision * recall) / (precision + recall)


def qa_f1(prediction: str, answer: str) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(answer).split())


def _zh_tokens(text: str, zh_tokenizer: str) -> list[str]:
    # Segment the raw text first, then normalise each word and drop the ones that become empty.
    return [word for word in (normalize_zh_answer(w) for w in segment(text, zh_tokenizer)) if word]


def qa_f1_zh(prediction: str, answer: str, zh_tokenizer: str = "jieba") -> float:
    return token_f1(_zh_tokens(prediction, zh_tokenizer), _zh_tokens(answer, zh_tokenizer))


def rouge(prediction: str, answer: str) -> float:
    return rouge_l_f(prediction, answer)


def rouge_zh(prediction: str, answer: str, zh_tokenizer: str = "jieba") -> float:
    """ROUGE-L on segmented words joined by spaces (no normalisation, as in LongBench)."""
    return rouge_l_f(" ".join(segment(prediction, zh_tokenizer)), " ".join(segment(answer, zh_tokenizer)))


def classification(prediction: str, answer: str, all_classes: Sequence[str]) -> float:
    """1/k when the answer is among the k class names found in the prediction, else 0.

    A found class that is a strict sub-string of the answer is dropped first. The official code removes items
    from the list it is iterating over, so the item after a removed one is not examined; this loop walks the
    list the same way (an index that advances whatever happens), to give identical scores.
    """
    found = [name for name in all_classes if name in prediction]
    position = 0
    while position < len(found):
        name = found[position]
        if name in answer and name != answer:
            found.remove(name)  # the first occurrence, as list.remove does there
        position += 1
    return 1.0 / len(found) if answer in found else 0.0


def _share_of_numbers(prediction: str, wanted: str) -> float:
    numbers = _DIGITS.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for number in numbers if number == wanted) / len(numbers)


def count(prediction: str, answer: str) -> float:
    """Share of the numbers in the prediction that equal the answer (passage_count)."""
    return _share_of_numbers(prediction, str(answer))


def _paragraph_number(answer: str, pattern: str) -> str:
    found = re.findall(pattern, answer)
    if not found:
        raise ValueError(f"retrieval answer {answer!r} does not match {pattern!r}; expected e.g. 'Paragraph 3'")
    return found[0]


def retrieval(prediction: str, answer: str) -> float:
    """Share of the numbers in the prediction that equal the answer's paragraph number ("Paragraph 12")."""
    return _share_of_numbers(prediction, _paragraph_number(answer, r"Paragraph (\d+)"))


def retrieval_zh(prediction: str, answer: str) -> float:
    """As `retrieval`, for answers like "段落12"."""
    return _share_of_numbers(prediction, _paragraph_number(answer, r"段落(\d+)"))


def fuzz_ratio(first: str, second: str) -> int:
    """fuzzywuzzy 0.18's fuzz.ratio without python-Levenshtein (LongBench's requirements do not install it):
    100 for equal strings, 0 when one is empty, else difflib's ratio * 100 rounded half to even."""
    if first == second:
        return 100
    if not first or not second:
        return 0
    return int(round(100 * SequenceMatcher(None, first, second).ratio()))


def code_sim(prediction: str, answer: str) -> float:
    """Similarity of the first code line of the prediction (lines holding `, # or // are skipped) to the answer."""
    lines = prediction.lstrip("\n").split("\n")
    line = next((text for text in lines if "`" not in text and "#" not in text and "//" not in text), "")
    return fuzz_ratio(line, answer) / 100


METRICS = ("qa_f1", "qa_f1_zh", "rouge", "rouge_zh", "classification", "retrieval", "retrieval_zh", "count", "code_sim")


def _metric_function(metric: str, all_classes: Sequence[str] | None, zh_tokenizer: str) -> Callable[[str, str], float]:
    plain: dict[str, Callable[[str, str], float]] = {
        "qa_f1": qa_f1,
        "rouge": rouge,
        "retrieval": retrieval,
        "retrieval_zh": retrieval_zh,
        "count": count,
        "code_sim": code_sim,
    }
    if metric in plain:
        return plain[metric]
    if metric == "qa_f1_zh":
        return lambda prediction, answer: qa_f1_zh(prediction, answer, zh_tokenizer)
    if metric == "rouge_zh":
        return lambda prediction, answer: rouge_zh(prediction, answer, zh_tokenizer)
    if metric == "classification":
        if not all_classes:
            raise ValueError("a classification sample needs its all_classes list (from the data file); got none")
        return lambda prediction, answer: classification(prediction, answer, all_classes)
    raise ValueError(f"unknown LongBench metric {metric!r}; allowed: {', '.join(METRICS)}")


def score_prediction(
    dataset: str,
    prediction: str | None,
    answers: Sequence[str],
    all_classes: Sequence[str] | None = None,
    zh_tokenizer: str = "jieba",
) -> float:
    """eval.py's per-sample score, times 100: first-line rule where it applies, then the best answer's score."""
    if dataset not in METRIC:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; allowed: {', '.join(METRIC)}")
    if not answers:
        raise ValueError(f"a LongBench {dataset} sample needs at least one answer; got none")
    text = prediction or ""
    if dataset in FIRST_LINE_ONLY:
        text = first_line(text)
    metric = _metric_function(METRIC[dataset], all_classes, zh_tokenizer)
    return 100 * max(0.0, *(metric(text, answer) for answer in answers))
