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
    """A task family (RULER, LongBench, ...). Subtasks are addressed as `family/subtask`."""

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


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
