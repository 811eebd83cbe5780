"""What LongBench v1 says about each dataset beyond its prompt: its category and language, the metric under the
name eval.py gives it, a one-line description, and which datasets each published average is taken over.

Source: THUDM/LongBench, LongBench/task.md (categories, languages, metric labels, what each dataset asks) and
LongBench/README.md (the leaderboard's "Avg" per language); descriptions are written here, not copied.
"""

from __future__ import annotations

from lychee_bench.tasks.longbench.prompts import DATASETS, METRIC

SINGLE_DOC, MULTI_DOC, SUMMARIZATION = "Single-Doc QA", "Multi-Doc QA", "Summarization"
FEW_SHOT, CODE, SYNTHETIC = "Few-shot Learning", "Code Completion", "Synthetic Tasks"
# The leaderboard's column order.
CATEGORIES: tuple[str, ...] = (SINGLE_DOC, MULTI_DOC, SUMMARIZATION, FEW_SHOT, CODE, SYNTHETIC)

# dataset -> (category, language: en, zh or code, one line on what it asks)
DATASET_INFO: dict[str, tuple[str, str, str]] = {
    "narrativeqa": (SINGLE_DOC, "en", "questions on a whole book or film script"),
    "qasper": (SINGLE_DOC, "en", "questions on an NLP paper, asked and answered by NLP researchers"),
    "multifieldqa_en": (SINGLE_DOC, "en", "questions on one long English document from varied fields"),
    "multifieldqa_zh": (SINGLE_DOC, "zh", "questions on one long Chinese document from varied fields"),
    "hotpotqa": (MULTI_DOC, "en", "multi-hop questions over several Wikipedia passages"),
    "2wikimqa": (MULTI_DOC, "en", "multi-hop questions over several Wikipedia passages (2WikiMultihopQA)"),
    "musique": (MULTI_DOC, "en", "multi-hop questions composed of single-hop ones (MuSiQue)"),
    "dureader": (MULTI_DOC, "zh", "Chinese questions over several retrieved web documents"),
    "gov_report": (SUMMARIZATION, "en", "summarise a government report"),
    "qmsum": (SUMMARIZATION, "en", "summarise a meeting transcript as a query asks"),
    "multi_news": (SUMMARIZATION, "en", "summarise several news articles into one"),
    "vcsum": (SUMMARIZATION, "zh", "summarise a Chinese meeting transcript"),
    "trec": (FEW_SHOT, "en", "classify a question's type from many examples"),
    "triviaqa": (FEW_SHOT, "en", "answer a trivia question after many examples"),
    "samsum": (FEW_SHOT, "en", "summarise a chat dialogue after many examples"),
    "lsht": (FEW_SHOT, "zh", "classify a Chinese news article from many examples"),
    "passage_count": (SYNTHETIC, "en", "count the distinct passages among shuffled repeats"),
    "passage_retrieval_en": (SYNTHETIC, "en", "name the Wikipedia paragraph a summary comes from"),
    "passage_retrieval_zh": (SYNTHETIC, "zh", "name the Chinese paragraph a summary comes from"),
    "lcc": (CODE, "code", "complete the next line of a long code file"),
    "repobench-p": (CODE, "code", "complete the next line using code from other files of the repository"),
}

# eval.py's dataset2metric function names, and task.md's label of each.
OFFICIAL_METRIC: dict[str, str] = {dataset: f"{METRIC[dataset]}_score" for dataset in DATASETS}
METRIC_LABEL: dict[str, str] = {
    "qa_f1": "F1",
    "qa_f1_zh": "F1",
    "rouge": "Rouge-L",
    "rouge_zh": "Rouge-L",
    "classification": "Accuracy",
    "retrieval": "Accuracy",
    "retrieval_zh": "Accuracy",
    "count": "Accuracy",
    "code_sim": "Edit Sim",
}

# The leaderboard's "Avg" of a language: the mean of its six category means (code counts in both languages).
LEADERBOARD: dict[str, tuple[str, ...]] = {
    "English": tuple(d for d in DATASETS if DATASET_INFO[d][1] in ("en", "code")),
    "Chinese": tuple(d for d in DATASETS if DATASET_INFO[d][1] in ("zh", "code")),
}

# The eight English datasets LycheeDecode and TidalDecode report, averaged plainly (SPEC section 5).
PAPER_EIGHT: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "qmsum",
    "triviaqa",
    "passage_retrieval_en",
)


def describe(dataset: str) -> str:
    """One line for `lychee-bench list`: category, language, metric, what it asks."""
    category, language, what = DATASET_INFO[dataset]
    metric = METRIC[dataset]
    return f"{category}, {language}, {METRIC_LABEL[metric]} ({OFFICIAL_METRIC[dataset]}): {what}"
