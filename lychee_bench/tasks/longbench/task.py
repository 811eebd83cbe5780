"""LongBench v1 (THUDM) behind the harness's Task protocol: official prompts, lengths, truncation and metrics.

Subtasks: the 21 datasets (`longbench/<dataset>`) and the 13 LongBench-E configs (`longbench/<dataset>_e`).
`default_subtasks()` is what a bare `--task longbench` should run: the 14 English and 2 code datasets
(narrativeqa, qasper, multifieldqa_en, hotpotqa, 2wikimqa, musique, gov_report, qmsum, multi_news, trec,
triviaqa, samsum, passage_count, passage_retrieval_en, lcc, repobench-p), LongBench's own English split and the
set LycheeDecode/TidalDecode/Quest-style papers report from.

Options (constructor, or environment variables so that a run needs no new flags):
- data_dir / $LYCHEE_BENCH_LONGBENCH_DIR: folder of the official `<config>.jsonl` files (data.py);
- zh_tokenizer / $LYCHEE_BENCH_LONGBENCH_ZH_TOKENIZER: `jieba` (official, default) or `char` (segment.py).

What a sample tells the runner, in `Sample.meta`: `chat_template: False` for the datasets pred.py runs without
the chat template (trec, triviaqa, samsum, lsht, lcc, repobench-p); for samsum, pred.py's extra stop at a
newline after at least one new token (`stop_strings`, `min_new_tokens`); `length` and `length_bucket` for the
LongBench-E breakdown (lengths.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lychee_bench.harness.task import Sample, SummaryTable, TokenCounter
from lychee_bench.tasks.longbench import data, summary
from lychee_bench.tasks.longbench.categories import describe
from lychee_bench.tasks.longbench.lengths import length_bucket
from lychee_bench.tasks.longbench.metrics import score_prediction
from lychee_bench.tasks.longbench.prompts import (
    DATASETS,
    ENGLISH,
    FIRST_LINE_ONLY,
    LONGBENCH_E,
    MAX_NEW_TOKENS,
    METRIC,
    NO_CHAT_TEMPLATE,
    TEMPLATES,
    templates_sha256,
)
from lychee_bench.tasks.longbench.segment import jieba_version, missing_segmenter, resolve_zh_tokenizer
from lychee_bench.tasks.longbench.truncate import truncate_middle

REFERENCE = "THUDM/LongBench v1: LongBench/pred.py, eval.py, metrics.py, config/ (commit c5ea10bc, 2024-12-18)"
TRUNCATION = "middle: first and last halves of (ctx - max_new_tokens) input tokens, each decoded, then joined"
CODE_SIM = "fuzzywuzzy 0.18 ratio on difflib.SequenceMatcher (no python-Levenshtein, as LongBench installs it)"
SUBTASKS: tuple[str, ...] = DATASETS + tuple(f"{dataset}_e" for dataset in LONGBENCH_E)
_SEGMENTED = frozenset({"qa_f1_zh", "rouge_zh"})


def dataset_of(subtask: str) -> str:
    """The dataset a subtask runs (`qasper_e` -> `qasper`); unknown names raise with the allowed ones."""
    if subtask not in SUBTASKS:
        raise ValueError(
            f"unknown LongBench subtask {subtask!r}; allowed: {', '.join(SUBTASKS)} (e.g. --task longbench/qasper)"
        )
    return subtask.removesuffix("_e") if subtask.endswith("_e") and subtask not in DATASETS else subtask


class LongBenchTask:
    name = "longbench"
    description = "LongBench v1: 21 real long-context datasets (QA, summaries, few-shot, synthetic, code) + LongBench-E"
    bars_title = "LongBench per task"  # its subtasks are the datasets

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, zh_tokenizer: str | None = None):
        self.data_dir = data.resolve_data_dir(data_dir)
        self.zh_tokenizer = resolve_zh_tokenizer(zh_tokenizer)

    def subtasks(self) -> list[str]:
        return list(SUBTASKS)

    def default_subtasks(self) -> list[str]:
        """What a bare `--task longbench` runs: the 14 English and 2 code datasets."""
        return list(ENGLISH)

    def check_assets(self) -> list[str]:
        # Which subtasks will run is not known here: only the data source as a whole is checked. A missing file
        # or a missing jieba stops build_samples for its subtask, still before any generation.
        folder = self.data_dir
        if folder is not None and folder.is_dir():
            if not any(data.data_file(folder, config) for config in SUBTASKS):
                return data.missing_data(folder, [ENGLISH[0]])
            return []
        return data.missing_data(folder, [ENGLISH[0]])

    def build_samples(
        self, subtask: str, ctx: int, num_samples: int, seed: int, count_tokens: TokenCounter, tokenizer: Any
    ) -> list[Sample]:
        """The first `num_samples` examples in file order (the seed is unused: LongBench has no sampling), each
        formatted with the official template and cut in the middle to fit ctx minus the generation length."""
        dataset = dataset_of(subtask)
        if METRIC[dataset] in _SEGMENTED:
            reasons = missing_segmenter(self.zh_tokenizer)
            if reasons:
                raise RuntimeError(reasons[0])
        max_new_tokens = MAX_NEW_TOKENS[dataset]
        budget = ctx - max_new_tokens
        if budget <= 0:
            raise ValueError(
                f"--ctx {ctx} leaves no input room for {subtask}, which generates {max_new_tokens} tokens; "
                f"use --ctx above {max_new_tokens}"
            )
        skip_template = dataset in NO_CHAT_TEMPLATE

        def count(text: str) -> int:
            # Until the runner honours meta["chat_template"], fit both ways so the input never overflows.
            total = count_tokens(text, "")
            if skip_template:
                total = max(total, len(tokenizer(text).input_ids))
            return total

        samples = []
        for index, example in enumerate(data.load_examples(subtask, self.data_dir, num_samples)):
            prompt = TEMPLATES[dataset].format(context=example["context"], input=example["input"])
            prompt, fit = truncate_middle(prompt, budget, count, tokenizer)
            samples.append(
                Sample(
                    task=self.name,
                    subtask=subtask,
                    index=index,
                    prompt=prompt,
                    answer_prefix="",  # the templates end with their own cue ("Answer:"), inside the user turn
                    references=[str(answer) for answer in example["answers"]],
                    max_new_tokens=max_new_tokens,
                    metric=METRIC[dataset],
                    input_tokens=count_tokens(prompt, ""),
                    meta=_meta(dataset, example, fit),
                )
            )
        return samples

    def score(self, sample: Sample, prediction: str) -> float:
        return score_prediction(
            dataset_of(sample.subtask),
            prediction,
            sample.references,
            sample.meta.get("all_classes"),
            self.zh_tokenizer,
        )

    @staticmethod
    def summary_tables(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[SummaryTable]:
        """Per-dataset scores, the leaderboard and paper averages, LongBench-E's length buckets (summary.py)."""
        return summary.summary_tables(records, config)

    def subtask_descriptions(self) -> dict[str, str]:
        described = {dataset: describe(dataset) for dataset in DATASETS}
        length_e = "LongBench-E: {} resampled evenly over lengths, scored per 0-4k/4-8k/8k+"
        return described | {f"{dataset}_e": length_e.format(dataset) for dataset in LONGBENCH_E}

    @staticmethod
    def option_descriptions() -> dict[str, str]:
        return {
            "data_dir": f"folder of the official <dataset>.jsonl files (else ${data.DATA_DIR_ENV}, else the hub)",
            "zh_tokenizer": "Chinese word splitting for the zh metrics: jieba (official, default) or char",
        }

    def config(self) -> dict[str, Any]:
        return {
            "reference": REFERENCE,
            "templates_sha256": templates_sha256(),
            "max_new_tokens": dict(MAX_NEW_TOKENS),
            "truncation": TRUNCATION,
            "no_chat_template": sorted(NO_CHAT_TEMPLATE),
            "first_line_only": sorted(FIRST_LINE_ONLY),
            "code_sim": CODE_SIM,
            "zh_tokenizer": self.zh_tokenizer,
            "jieba": jieba_version() if self.zh_tokenizer == "jieba" else None,
            "data": data.data_source(self.data_dir, list(SUBTASKS)),
        }


def _meta(dataset: str, example: dict[str, Any], fit: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "dataset": dataset,
        "id": example["_id"],
        "language": example["language"],
        "length": example["length"],
        "length_bucket": length_bucket(int(example["length"])),
        "all_classes": example["all_classes"],
        **fit,
    }
    if dataset in NO_CHAT_TEMPLATE:
        meta["chat_template"] = False
    if dataset == "samsum":  # pred.py: newline is an extra end token, and at least one token is generated
        meta["stop_strings"] = ["\n"]
        meta["min_new_tokens"] = 1
    return meta
