"""LongBench's own tables, as its official code and leaderboard give them.

- Per dataset: eval.py's score (mean over samples of the best answer's metric, x100, shown to 2 decimals as
  eval.py rounds), with the metric under eval.py's name and the dataset's category.
- Averages: each leaderboard category (mean of its datasets), the leaderboard's English "Avg" (the mean of the
  six category means over the 14 English and 2 code datasets; README.md of LongBench v1), the same for Chinese,
  the plain mean of the eight datasets LycheeDecode/TidalDecode report, and the plain mean of the datasets run.
  An average is given only when a method has every dataset it is taken over.
- LongBench-E (`<dataset>_e` subtasks): eval.py --e's table, the score per length bucket (0-4k, 4-8k, 8k+ of
  the example's `length` field) per dataset, and per bucket the mean over the datasets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lychee_bench.harness.task import SummaryTable
from lychee_bench.tasks.longbench.categories import (
    CATEGORIES,
    DATASET_INFO,
    LEADERBOARD,
    METRIC_LABEL,
    OFFICIAL_METRIC,
    PAPER_EIGHT,
)
from lychee_bench.tasks.longbench.lengths import BUCKETS, length_bucket
from lychee_bench.tasks.longbench.prompts import DATASETS, LONGBENCH_E, METRIC

Record = Mapping[str, Any]
E_SUBTASKS = frozenset(f"{dataset}_e" for dataset in LONGBENCH_E)


def summary_tables(records: Sequence[Record], config: Mapping[str, Any]) -> list[SummaryTable]:
    """The per-dataset, averages and LongBench-E tables of one (ctx, model) group of longbench sample records."""
    latest: dict[tuple[str, str, int], Record] = {}
    for record in records:  # the latest record of a sample wins, as in the generic summary
        latest[(_label(record), str(record.get("subtask")), int(record.get("index", 0)))] = record
    plain = [r for r in latest.values() if r.get("subtask") in DATASETS]
    length_e = [r for r in latest.values() if r.get("subtask") in E_SUBTASKS]
    tables = []
    if plain:
        scores = _scores(plain)
        tables.append(_dataset_table(scores))
        if len({dataset for per in scores.values() for dataset in per}) > 1:
            tables.append(_average_table(scores))
    if length_e:
        tables.append(_bucket_table(length_e))
    return tables


def _label(record: Record) -> str:
    return str(record.get("label") or record.get("method"))


def _stats(values: Sequence[float]) -> dict[str, float]:
    count = len(values)
    mean = sum(values) / count if count else math.nan
    if count < 2:
        return {"value": mean, "stderr": math.nan, "samples": count}
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return {"value": mean, "stderr": math.sqrt(variance / count), "samples": count}


def _scores(records: Sequence[Record]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> dataset -> value, stderr, samples."""
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        values.setdefault(_label(record), {}).setdefault(str(record["subtask"]), []).append(float(record["value"]))
    return {method: {d: _stats(per[d]) for d in DATASETS if d in per} for method, per in sorted(values.items())}


def _two(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _dataset_table(scores: dict[str, dict[str, dict[str, float]]]) -> SummaryTable:
    methods = list(scores)
    datasets = [d for d in DATASETS if any(d in per for per in scores.values())]
    cells, rows = [], []
    for dataset in datasets:
        counts = {scores[m][dataset]["samples"] for m in methods if dataset in scores[m]}
        n = max(counts)
        line = [dataset, DATASET_INFO[dataset][0], _metric_name(dataset), n]
        for method in methods:
            stats = scores[method].get(dataset)
            if stats is None:
                line.append("-")
                continue
            text = _two(stats["value"]) + ("" if math.isnan(stats["stderr"]) else f" ± {stats['stderr']:.2f}")
            line.append(text + ("" if stats["samples"] == n else f" (n={stats['samples']})"))
            rows.append(
                {
                    "method": method,
                    "subtask": dataset,
                    "metric": OFFICIAL_METRIC[dataset],
                    **stats,
                    "category": DATASET_INFO[dataset][0],
                    "language": DATASET_INFO[dataset][1],
                }
            )
        cells.append(line)
    return SummaryTable(
        name="longbench datasets",
        title="per dataset (eval.py's score, 0-100)",
        columns=["dataset", "category", "metric", "n", *methods],
        cells=cells,
        notes=[
            "score = mean over the samples of the best answer's metric x 100, as eval.py (which rounds it to 2 "
            "decimals); ± is the standard error over the samples"
        ],
        rows=rows,
    )


def _metric_name(dataset: str) -> str:
    return f"{OFFICIAL_METRIC[dataset]} ({METRIC_LABEL[METRIC[dataset]]})"


def _category_means(per: Mapping[str, Mapping[str, float]], datasets: Sequence[str]) -> dict[str, float] | None:
    """The leaderboard's category means over `datasets`, or None when a method lacks one of them."""
    if any(d not in per for d in datasets):
        return None
    means = {}
    for category in CATEGORIES:
        members = [d for d in datasets if DATASET_INFO[d][0] == category]
        means[category] = sum(per[d]["value"] for d in members) / len(members)
    return means


def _averages(per: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, int]]:
    """name -> (value, datasets it is taken over) for every average this method has all datasets of."""
    found: dict[str, tuple[float, int]] = {}
    english = _category_means(per, LEADERBOARD["English"])
    for category in CATEGORIES:  # category means of the English leaderboard, from whatever of them is complete
        members = [d for d in LEADERBOARD["English"] if DATASET_INFO[d][0] == category]
        if all(d in per for d in members):
            found[f"{category} (en)"] = (sum(per[d]["value"] for d in members) / len(members), len(members))
    if english is not None:
        found["English Avg"] = (sum(english.values()) / len(english), len(LEADERBOARD["English"]))
    chinese = _category_means(per, LEADERBOARD["Chinese"])
    if chinese is not None:
        found["Chinese Avg"] = (sum(chinese.values()) / len(chinese), len(LEADERBOARD["Chinese"]))
    if all(d in per for d in PAPER_EIGHT):
        found["8-task average"] = (sum(per[d]["value"] for d in PAPER_EIGHT) / len(PAPER_EIGHT), len(PAPER_EIGHT))
    found["mean of the datasets run"] = (sum(s["value"] for s in per.values()) / len(per), len(per))
    return found


AVERAGE_ORDER = (
    *(f"{category} (en)" for category in CATEGORIES),
    "English Avg",
    "Chinese Avg",
    "8-task average",
    "mean of the datasets run",
)
AVERAGE_OVER = {
    **{
        f"{category} (en)": "mean of " + ", ".join(d for d in LEADERBOARD["English"] if DATASET_INFO[d][0] == category)
        for category in CATEGORIES
    },
    "English Avg": "the 6 category means of the 14 English + 2 code datasets (LongBench leaderboard)",
    "Chinese Avg": "the 6 category means of the 5 Chinese + 2 code datasets (LongBench leaderboard)",
    "8-task average": f"plain mean of {', '.join(PAPER_EIGHT)} (LycheeDecode, TidalDecode)",
    "mean of the datasets run": "plain mean of every dataset the method ran",
}


def _average_table(scores: dict[str, dict[str, dict[str, float]]]) -> SummaryTable:
    methods = list(scores)
    found = {method: _averages(per) for method, per in scores.items()}
    cells, rows = [], []
    for name in AVERAGE_ORDER:
        if not any(name in averages for averages in found.values()):
            continue
        cells.append([name, *(_two(found[m][name][0]) if name in found[m] else "-" for m in methods)])
        rows += [
            {
                "method": method,
                "subtask": name,
                "metric": "mean of category means" if name.endswith("Avg") else "mean of datasets",
                "value": found[method][name][0],
                "stderr": math.nan,
                "samples": found[method][name][1],
                "over": AVERAGE_OVER[name],
            }
            for method in methods
            if name in found[method]
        ]
    notes = [f"{name}: {AVERAGE_OVER[name]}" for name in AVERAGE_ORDER if any(name in f for f in found.values())]
    missing = sorted(set(LEADERBOARD["English"]) - {d for per in scores.values() for d in per})
    if missing and not any("English Avg" in f for f in found.values()):
        notes.append(f"no English Avg: it needs all 16 English and code datasets; not run: {', '.join(missing)}")
    return SummaryTable(
        name="longbench averages",
        title="averages (0-100; given only where a method has every dataset of it)",
        columns=["average", *methods],
        cells=cells,
        notes=notes,
        rows=rows,
    )


def _bucket_of(record: Record) -> str | None:
    meta = record.get("sample_meta") or {}
    if isinstance(meta.get("length"), int | float):
        return length_bucket(int(meta["length"]))
    bucket = meta.get("length_bucket")
    return bucket if bucket in BUCKETS else None


def _bucket_table(records: Sequence[Record]) -> SummaryTable:
    methods = sorted({_label(r) for r in records})
    subtasks = [f"{d}_e" for d in LONGBENCH_E if any(r.get("subtask") == f"{d}_e" for r in records)]
    grouped: dict[tuple[str, str, str], list[float]] = {}
    unknown = 0
    for record in records:
        bucket = _bucket_of(record)
        if bucket is None:
            unknown += 1
            continue
        grouped.setdefault((_label(record), str(record["subtask"]), bucket), []).append(float(record["value"]))
    cells, rows = [], []
    for subtask in subtasks:
        dataset = subtask.removesuffix("_e")
        counts = [max((len(grouped.get((m, subtask, b), [])) for m in methods), default=0) for b in BUCKETS]
        line = [subtask, _metric_name(dataset), "/".join(str(c) for c in counts)]
        for method in methods:
            for bucket in BUCKETS:
                values = grouped.get((method, subtask, bucket), [])
                mean = sum(values) / len(values) if values else math.nan
                line.append(_two(mean))
                rows.append(
                    {
                        "method": method,
                        "subtask": subtask,
                        "metric": OFFICIAL_METRIC[dataset],
                        "length_bucket": bucket,
                        "value": mean,
                        "stderr": math.nan,
                        "samples": len(values),
                    }
                )
        cells.append(line)
    average = ["average over datasets", "", ""]
    for method in methods:
        for bucket in BUCKETS:
            means = [
                r["value"]
                for r in rows
                if r["method"] == method and r["length_bucket"] == bucket and not math.isnan(r["value"])
            ]
            mean = sum(means) / len(means) if means else math.nan
            average.append(_two(mean))
            rows.append(
                {
                    "method": method,
                    "subtask": "average",
                    "metric": "mean of datasets",
                    "length_bucket": bucket,
                    "value": mean,
                    "stderr": math.nan,
                    "samples": len(means),
                }
            )
    cells.append(average)
    notes = [
        "eval.py --e: per dataset, the mean score of the examples whose `length` (words; characters for Chinese) "
        "is below 4000, 4000-7999, or 8000 and more; n = examples per bucket; '-' is an empty bucket (eval.py: nan)",
        "average over datasets: per bucket, the plain mean over the datasets with examples in it",
    ]
    if unknown:
        notes.append(f"{unknown} records carry no length (written before sample_meta was recorded): left out")
    return SummaryTable(
        name="longbench-e buckets",
        title="LongBench-E by length (eval.py --e, 0-100)",
        columns=["dataset", "metric", "n " + "/".join(BUCKETS), *(f"{m} {b}" for m in methods for b in BUCKETS)],
        cells=cells,
        notes=notes,
        rows=rows,
    )
