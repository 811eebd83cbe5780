"""The RULER task family (13 synthetic long-context subtasks) behind the harness's Task protocol."""

from __future__ import annotations

import os
from typing import Any

from lychee_bench.harness.task import Sample, TokenCounter
from lychee_bench.tasks.ruler import assets
from lychee_bench.tasks.ruler.constants import FAMILIES, GENERATOR_VERSION, RULER_REFERENCE, SUBTASKS
from lychee_bench.tasks.ruler.generate import SIZING_ENV, build_samples, check_sizing, check_subtask
from lychee_bench.tasks.ruler.scoring import score_prediction
from lychee_bench.tasks.ruler.sentences import SPLITTER

DEFAULT_SEED = 42  # RULER's default random seed
DEFAULT_SIZING = "nvidia"
# The sizing is a task option (`--task ruler[sizing=tight]/vt`); the environment variable sets the default for
# a whole run, e.g. a suite whose --task strings are fixed.
LENGTH_FIT = {
    "nvidia": (
        "nvidia: per-task increments (niah 500 words / 25 sentences, 5 below 4096; qa 10 docs; vt 10 noises +"
        " example tokens; cwe 10 words; fwe ctx//32 words from ctx//6), calibration counts input + answer,"
        " per-sample steps down while input + tokens_to_generate > ctx; plain-text tokens of prompt +"
        " answer_prefix (NVIDIA base template: no chat template, no BOS)"
    ),
    "tight": "tight: calibrate-largest-fitting-unit-step, shrink-per-sample; full model input counted",
}


class RulerTask:
    name = "ruler"
    description = "RULER: 13 synthetic long-context tasks (needle retrieval, tracing, aggregation, QA)"
    bars_title = "RULER per subtask"

    def __init__(self, sizing: str | None = None):
        """sizing: "nvidia" (NVIDIA's haystack sizes, comparable with published RULER tables) or "tight" (the
        largest haystack that fits, to the unit); None reads $LYCHEE_BENCH_RULER_SIZING, else "nvidia"."""
        chosen = sizing if sizing is not None else os.environ.get(SIZING_ENV, "").strip() or DEFAULT_SIZING
        try:
            self.sizing = check_sizing(chosen)
        except ValueError as error:
            source = "" if sizing is not None else f" (from ${SIZING_ENV})"
            raise ValueError(f"{error}{source}") from None

    def subtasks(self) -> list[str]:
        return list(SUBTASKS)

    def subtask_descriptions(self) -> dict[str, str]:
        return {subtask: _describe(spec) for subtask, spec in SUBTASKS.items()}

    @staticmethod
    def option_descriptions() -> dict[str, str]:
        return {"sizing": "nvidia (NVIDIA's haystack sizes, default; comparable with published RULER) or tight"}

    def check_assets(self) -> list[str]:
        return assets.missing_assets()

    def build_samples(
        self, subtask: str, ctx: int, num_samples: int, seed: int, count_tokens: TokenCounter, tokenizer: Any
    ) -> list[Sample]:
        return build_samples(subtask, ctx, num_samples, seed, count_tokens, tokenizer, sizing=self.sizing)

    def score(self, sample: Sample, prediction: str) -> float:
        check_subtask(sample.subtask)
        return score_prediction(sample.metric, prediction, sample.references)

    def config(self) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "reference": RULER_REFERENCE,
            "splitter": SPLITTER,
            "sizing": self.sizing,
            "length_fit": LENGTH_FIT[self.sizing],
            "default_seed": DEFAULT_SEED,
            "tokens_to_generate": {
                subtask: FAMILIES[spec["task"]]["tokens_to_generate"] for subtask, spec in SUBTASKS.items()
            },
            "packages": assets.package_versions(),
            "asset_sha256": _asset_hashes(),
        }


_HAYSTACKS = {"repeat": "noise haystack", "essay": "essay haystack", "needle": "haystack of distractor needles"}


def _describe(spec: dict[str, Any]) -> str:
    """One line for `lychee-bench list`, from the subtask's synthetic.yaml arguments."""
    args, family = spec["args"], spec["task"]
    if family == "niah":
        key, value = args["type_needle_k"].removesuffix("s"), args["type_needle_v"].removesuffix("s")
        counts = [
            text.format(args[f"num_needle_{part}"])
            for part, text in (("k", "{} keys inserted, 1 asked"), ("v", "{} values per key"), ("q", "{} keys asked"))
            if args[f"num_needle_{part}"] > 1
        ]
        more = f"; {', '.join(counts)}" if counts else ""
        return f"needle in a haystack: {_HAYSTACKS[args['type_haystack']]}, {key} key, {value} value{more}"
    if family == "variable_tracking":
        return f"variable tracking: {args['num_chains']} chain of {args['num_hops']} hops; name every variable"
    if family == "common_words_extraction":
        return f"common words: the {args['num_cw']} words that repeat most in a numbered list"
    if family == "freq_words_extraction":
        return f"frequent words: the 3 most frequent coded words (Zipf alpha {args['alpha']})"
    source = {"squad": "SQuAD v2 dev", "hotpotqa": "HotpotQA dev"}[args["dataset"]]
    return f"question answering over documents ({source}); scored string_match_part"


def _asset_hashes() -> dict[str, str]:
    # A config must be readable before the assets are installed (listing tasks, planning a run).
    if assets.missing_assets():
        return {}
    return assets.asset_sha256()
