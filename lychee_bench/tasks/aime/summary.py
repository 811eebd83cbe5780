"""AIME 2024's own tables: pass@1 (avg@k) per method with its standard error over problems, and per problem the
right draws out of k for every method.

The protocol (k, the generation budget, temperature, top-p) comes from the records' `sample_meta`, else from the
task config the run folder recorded; without a k no table is made (the generic one stands), since the draws of a
problem cannot be told apart from the next problem's without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lychee_bench.harness.task import SummaryTable
from lychee_bench.tasks.aime import problems
from lychee_bench.tasks.aime.passk import PassAt1, pass_at_1_from_records

Z95 = 1.96  # normal quantile of a two-sided 95% interval


def summary_tables(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[SummaryTable]:
    """pass@1 and the per-problem table of one (ctx, model) group of aime24 sample records, every method."""
    protocol = _protocol(records, config)
    k = protocol["k"]
    if not records or not isinstance(k, int) or k < 1:
        return []
    labels = _problem_labels(records, k)
    by_method: dict[str, dict[int, Mapping[str, Any]]] = {}
    for record in records:  # the latest record of a draw wins, as in the generic summary
        by_method.setdefault(_label(record), {})[int(record["index"])] = record
    results = {method: pass_at_1_from_records(draws.values(), k, labels) for method, draws in by_method.items()}
    return [
        _pass_table(results, by_method, protocol),
        _problem_table(results, by_method, k),
    ]


def _label(record: Mapping[str, Any]) -> str:
    return str(record.get("label") or record.get("method"))


def _protocol(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """k, max_new_tokens, temperature and top_p: from sample_meta where records carry it, else the config."""
    found: dict[str, Any] = {}
    for key in ("k", "max_new_tokens", "temperature", "top_p"):
        values = {(r.get("sample_meta") or {}).get(key) for r in records} - {None}
        if len(values) > 1:
            raise ValueError(
                f"aime24 records with different {key} ({sorted(values)}) cannot share one pass@1 table; report each "
                "run folder on its own"
            )
        found[key] = values.pop() if values else config.get(key)
    return found


def _problem_labels(records: Sequence[Mapping[str, Any]], k: int) -> list[str]:
    """Problem names by position: from the records' sample_meta, else the installed problem file, else #p."""
    named = {
        int(meta["position"]): str(meta["problem"])
        for meta in ((r.get("sample_meta") or {}) for r in records)
        if "position" in meta and "problem" in meta
    }
    count = max(int(r["index"]) // k for r in records) + 1
    known: list[str] = []
    if len(named) < count and not problems.missing_assets():
        known = [p.label for p in problems.load_problems()]
    return [named.get(p) or (known[p] if p < len(known) else f"#{p}") for p in range(count)]


def _pass_table(
    results: Mapping[str, PassAt1], by_method: Mapping[str, Mapping[int, Mapping[str, Any]]], protocol: dict[str, Any]
) -> SummaryTable:
    k, budget = protocol["k"], protocol["max_new_tokens"]
    cells, rows, notes = [], [], []
    for method, result in results.items():
        draws = list(by_method[method].values())
        at_budget = sum(1 for r in draws if r.get("stop_reason") == "length")
        new_tokens = [r["new_tokens"] for r in draws if isinstance(r.get("new_tokens"), int)]
        low, high = _interval(result)
        cells.append(
            [
                method,
                f"{result.mean:.2f}",
                _number(result.stderr),
                "-" if math.isnan(low) else f"{low:.1f}-{high:.1f}",
                len(result.problems),
                len(draws),
                f"{at_budget}/{len(draws)}",
                f"{sum(new_tokens) / len(new_tokens):.0f}" if new_tokens else "-",
            ]
        )
        rows.append(
            {
                "method": method,
                "subtask": "all",
                "metric": "pass@1",
                "value": result.mean,
                "stderr": result.stderr,
                "ci95": [low, high],
                "samples": len(result.problems),
                "draws": len(draws),
                "protocol": f"avg@{k}",
                **protocol,
                "stopped_at_budget": at_budget,
                "problems": [{"problem": p.problem, "correct": p.correct, "draws": p.draws} for p in result.problems],
            }
        )
        short = [p.problem for p in result.problems if p.draws < k]
        if short or len(result.problems) < problems.NUM_PROBLEMS:
            notes.append(
                f"{method}: partial run: {len(result.problems)} of {problems.NUM_PROBLEMS} problems"
                + (f", fewer than k draws for {', '.join(short)}" if short else "")
            )
    sampling = ", ".join(
        text
        for text in (
            f"temperature {protocol['temperature']}" if protocol["temperature"] is not None else "",
            f"top-p {protocol['top_p']}" if protocol["top_p"] is not None else "",
            f"up to {budget} new tokens" if budget is not None else "generation budget not recorded",
        )
        if text
    )
    notes = [
        "pass@1 = mean over problems of the share of each problem's draws that are right (percent); ± is its "
        "standard error over problems (the draws' noise is inside each problem's share), 95% CI = ± 1.96 se",
        "at budget: draws that stopped at the new-token limit, not at an end of sequence (their answer may be cut)",
        *notes,
    ]
    return SummaryTable(
        name="aime24 pass@1",
        title=f"pass@1, avg@{k} ({k} sampled answers per problem; {sampling})",
        columns=["method", "pass@1", "± se", "95% CI", "problems", "draws", "at budget", "mean new tokens"],
        cells=cells,
        notes=notes,
        rows=rows,
    )


def _problem_table(
    results: Mapping[str, PassAt1], by_method: Mapping[str, Mapping[int, Mapping[str, Any]]], k: int
) -> SummaryTable:
    answers: dict[str, str] = {}
    for method, result in results.items():
        draws = by_method[method]
        for position, problem in _positions(result, draws, k):
            refs = draws[position].get("references") or [""]
            answers.setdefault(problem, str(refs[0]))
    order = list(dict.fromkeys(p.problem for result in results.values() for p in result.problems))
    correct = {
        method: {p.problem: f"{p.correct}/{p.draws}" for p in result.problems} for method, result in results.items()
    }
    cells = [[problem, answers.get(problem, ""), *(correct[m].get(problem, "-") for m in results)] for problem in order]
    return SummaryTable(
        name="aime24 per problem",
        title=f"per problem: right draws out of {k}",
        columns=["problem", "answer", *results],
        cells=cells,
        notes=[],
    )


def _positions(result: PassAt1, draws: Mapping[int, Mapping[str, Any]], k: int) -> list[tuple[int, str]]:
    """(index of one draw, problem name) for each problem of a result, in the result's order."""
    first: dict[int, int] = {}
    for index in sorted(draws):
        first.setdefault(index // k, index)
    return [(first[p], problem.problem) for p, problem in zip(sorted(first), result.problems, strict=True)]


def _interval(result: PassAt1) -> tuple[float, float]:
    if math.isnan(result.stderr):
        return math.nan, math.nan
    return max(0.0, result.mean - Z95 * result.stderr), min(100.0, result.mean + Z95 * result.stderr)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"
