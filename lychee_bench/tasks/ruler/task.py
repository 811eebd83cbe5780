"""The RULER task family (13 synthetic long-context subtasks) behind the harness's Task protocol."""

from __future__ import annotations

from typing import Any

from lychee_bench.harness.task import Sample, TokenCounter
from lychee_bench.tasks.ruler import assets
from lychee_bench.tasks.ruler.constants import FAMILIES, GENERATOR_VERSION, RULER_REFERENCE, SUBTASKS
from lychee_bench.tasks.ruler.generate import build_samples, check_subtask
from lychee_bench.tasks.ruler.scoring import score_prediction
from lychee_bench.tasks.ruler.sentences import SPLITTER

DEFAULT_SEED = 42  # RULER's default random seed
LENGTH_FIT = "calibrate-largest-fitting-unit-step, shrink-per-sample"


class RulerTask:
    name = "ruler"
    description = "RULER: 13 synthetic long-context tasks (needle retrieval, tracing, aggregation, QA)"

    def subtasks(self) -> list[str]:
        return list(SUBTASKS)

    def check_assets(self) -> list[str]:
        return assets.missing_assets()

    def build_samples(
        self, subtask: str, ctx: int, num_samples: int, seed: int, count_tokens: TokenCounter, tokenizer: Any
    ) -> list[Sample]:
        return build_samples(subtask, ctx, num_samples, seed, count_tokens, tokenizer)

    def score(self, sample: Sample, prediction: str) -> float:
        check_subtask(sample.subtask)
        return score_prediction(sample.metric, prediction, sample.references)

    def config(self) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "reference": RULER_REFERENCE,
            "splitter": SPLITTER,
            "length_fit": LENGTH_FIT,
            "default_seed": DEFAULT_SEED,
            "tokens_to_generate": {
                subtask: FAMILIES[spec["task"]]["tokens_to_generate"] for subtask, spec in SUBTASKS.items()
            },
            "packages": assets.package_versions(),
            "asset_sha256": _asset_hashes(),
        }


def _asset_hashes() -> dict[str, str]:
    # A config must be readable before the assets are installed (listing tasks, planning a run).
    if assets.missing_assets():
        return {}
    return assets.asset_sha256()
