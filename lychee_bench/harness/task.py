"""What every task gives the harness: samples to generate from, and a score for each prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Counts the tokens of the model input built from (prompt, answer_prefix) exactly as the engine will
# build it (chat template or not, one BOS). Tasks use it to fit their prompts to a context length.
TokenCounter = Callable[[str, str], int]


class ContextTooShortError(ValueError):
    """A task's prompt cannot fit the requested context (the fix is a larger --ctx); tasks raise a subclass."""


@dataclass
class Sample:
    """One evaluation item. The model continues after `answer_prefix`, which is kept apart from `prompt`."""

    task: str  # e.g. "ruler"
    subtask: str  # e.g. "niah_single_1"
    index: int  # position within (subtask, ctx, seed)
    prompt: str  # the user-facing task text, without the answer prefix
    answer_prefix: str
    references: list[str]  # gold strings
    max_new_tokens: int
    metric: str  # name of the metric that scores it, e.g. "string_match_all"
    input_tokens: int = 0  # tokens of the formatted input, as counted by the TokenCounter
    meta: dict[str, Any] = field(default_factory=dict)  # depth, seed of the item, ...


class Task(Protocol):
    """A task family (RULER, LongBench, ...). Subtasks are addressed as `family/subtask`.

    Optional members, looked up with getattr (a task without them gets the generic behaviour):
    - `default_subtasks()`: what a bare `--task NAME` runs (else every subtask);
    - `generation_defaults()`: its sampling protocol (temperature, top_p, samples, ...);
    - `subtask_descriptions()`: one line per subtask, and `option_descriptions()`: one line per option of
      `NAME[key=value;...]`, both for `lychee-bench list`;
    - `summary_tables(records, config)`, a classmethod or staticmethod (a report has records, not a task
      instance): the task's own tables of one (task, ctx, model) group of sample records, `config` being the
      task config the run folder recorded (`{}` when none is known). A task that returns tables (SummaryTable)
      replaces the generic subtasks-by-methods table for that group in `run`, `report` and the HTML page;
      returning [] keeps the generic one;
    - `bars_title`: the title of its per-subtask bar figure (default "<name> per subtask").
    """

    name: str
    description: str

    def subtasks(self) -> list[str]: ...

    def check_assets(self) -> list[str]:
        """Reasons the offline assets are missing (each naming the install command); empty when ready."""
        ...

    def build_samples(
        self, subtask: str, ctx: int, num_samples: int, seed: int, count_tokens: TokenCounter, tokenizer: Any
    ) -> list[Sample]: ...

    def score(self, sample: Sample, prediction: str) -> float:
        """Score in 0..100 for one prediction."""
        ...

    def config(self) -> dict[str, Any]:
        """Task configuration recorded in every result (generator version, templates version, ...)."""
        ...


@dataclass
class SummaryTable:
    """One table a task makes of its records (AIME's pass@1 and per-problem table, LongBench's averages and
    length buckets): cells already formatted the way the benchmark reports them, notes to print under it, and
    the same numbers as plain rows for `report --format json` (each row a summary row: method, subtask, metric,
    value, stderr, samples, plus whatever else the table knows)."""

    name: str  # short and stable, e.g. "aime24 pass@1"; JSON rows carry it as "summary"
    title: str
    columns: list[str]
    cells: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


SummaryHook = Callable[[list[dict[str, Any]], dict[str, Any]], list[SummaryTable]]


def summary_hook(task_class: Any) -> SummaryHook | None:
    """The task class's `summary_tables`, or None when it has none."""
    hook = getattr(task_class, "summary_tables", None)
    return hook if callable(hook) else None


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
