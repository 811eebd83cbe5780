"""pass@1 from avg@k: the mean over problems of the fraction of a problem's k sampled answers that are right.

A run holds k rows per problem (sample index = problem * k + draw, each scored 0 or 100). Averaging the k draws
first and then the problems gives every problem the same weight even when a run is partial, and the standard
error is taken over problems (sample standard deviation of the per-problem scores / sqrt(number of problems)):
the problems are the sampled unit, and the draw-to-draw noise is inside each problem's score.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProblemScore:
    problem: str
    draws: int  # samples scored for this problem (k in a complete run)
    correct: int  # draws that scored 100
    score: float  # mean score of the draws, 0..100 (= percent of draws right)


@dataclass(frozen=True)
class PassAt1:
    mean: float  # pass@1 in percent: mean over problems of ProblemScore.score
    stderr: float  # standard error of `mean` over problems; nan with fewer than two problems
    problems: list[ProblemScore]

    def rows(self) -> list[dict[str, Any]]:
        """The per-problem table as plain rows (for a report or a DataFrame)."""
        return [asdict(problem) for problem in self.problems]

    def format(self) -> str:
        """A plain-text table: one line per problem, then pass@1 ± its standard error."""
        width = max([len("problem"), *(len(p.problem) for p in self.problems)])
        lines = [f"{'problem':<{width}}  right/draws  score"]
        lines += [f"{p.problem:<{width}}  {p.correct:>5}/{p.draws:<5}  {p.score:5.1f}" for p in self.problems]
        spread = f"standard error over {len(self.problems)} problems"
        lines.append(f"pass@1 = {self.mean:.2f} ± {self.stderr:.2f} ({spread})")
        return "\n".join(lines)


def pass_at_1(scores: Mapping[str, Sequence[float]]) -> PassAt1:
    """pass@1 from each problem's draw scores (0..100), problems in the mapping's order."""
    empty = [name for name, values in scores.items() if not values]
    if not scores or empty:
        raise ValueError(f"pass@1 needs at least one scored draw per problem; none for {empty or 'any problem'}")
    problems = [
        ProblemScore(name, len(values), sum(1 for v in values if v >= 100), sum(values) / len(values))
        for name, values in scores.items()
    ]
    per_problem = [p.score for p in problems]
    mean = sum(per_problem) / len(per_problem)
    if len(per_problem) < 2:
        return PassAt1(mean, float("nan"), problems)
    variance = sum((s - mean) ** 2 for s in per_problem) / (len(per_problem) - 1)
    return PassAt1(mean, math.sqrt(variance / len(per_problem)), problems)


def pass_at_1_from_records(records: Iterable[Mapping[str, Any]], k: int, labels: Sequence[str] = ()) -> PassAt1:
    """pass@1 from one method's sample records (their `index` and `value`), k draws per problem.

    `labels[p]` names problem p (index // k); without labels problems are named "#p"."""
    if k < 1:
        raise ValueError(f"k={k} is not a number of draws; use the k the run was built with (the task's k)")
    by_problem: dict[int, dict[int, float]] = defaultdict(dict)
    for record in records:
        index = int(record["index"])
        problem, draw = divmod(index, k)
        if draw in by_problem[problem]:
            raise ValueError(
                f"sample index {index} appears twice; pass@1 is per method: keep one method label, ctx and model's rows"
            )
        by_problem[problem][draw] = float(record["value"])
    if labels and max(by_problem, default=-1) >= len(labels):
        raise ValueError(f"sample index for problem {max(by_problem)} has no label; {len(labels)} labels given")
    return pass_at_1(
        {
            (labels[p] if labels else f"#{p}"): [draws[d] for d in sorted(draws)]
            for p, draws in sorted(by_problem.items())
        }
    )
