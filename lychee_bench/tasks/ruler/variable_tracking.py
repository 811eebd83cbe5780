"""Variable tracking (RULER variable_tracking.py): follow a chain of VAR assignments hidden in noise.

Every prompt starts with one solved in-context example (3-letter names, sized to about 500 tokens); each
sample renames that example's variables, as RULER does. With NVIDIA's sizing the example is sized as NVIDIA
sizes it (noise in steps of 5 lines, answer counted as the Python list, stepped back once over 500 tokens with
the 30 to generate, then drawn afresh at that size), from the calibration's own random stream, and its tokens
are counted beside every input of the task.
"""

from __future__ import annotations

import random
import string
from typing import Any

import numpy as np

from lychee_bench.tasks.ruler.constants import FAMILIES, VT_NOISE
from lychee_bench.tasks.ruler.family import Instance, NvidiaSizing, TextCounter
from lychee_bench.tasks.ruler.fitting import largest_fitting

TEMPLATE = FAMILIES["variable_tracking"]["template"]
ANSWER_PREFIX = FAMILIES["variable_tracking"]["answer_prefix"]
# RULER's example: at most 500 tokens with the 30 to generate, noise grown in steps of 5 lines.
EXAMPLE_TOKENS, EXAMPLE_STEP = 500, 5


def _chain(
    num_hops: int, name_length: int, rng: random.Random, values: np.random.RandomState | None = None
) -> tuple[list[str], list[str]]:
    """Distinct variable names and the assignment lines "VAR B = VAR A " that link them to a number."""
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_length))
        if name not in names:  # RULER redraws duplicates too (and then mis-chunks them; not reproduced)
            names.append(name)
    # NVIDIA draws the value from numpy's global generator (randint(10000, 99999) excludes 99999); `values`
    # replays that stream for NVIDIA's calibration, a sample's own stream draws it in Python.
    value = values.randint(10000, 99999) if values is not None else rng.randint(10000, 99998)
    lines = [f"VAR {names[0]} = {value}"]
    lines += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, lines


def _insert_chain(lines: list[str], num_noises: int, rng: random.Random) -> str:
    sentences = [VT_NOISE] * num_noises
    if len(sentences) <= len(lines):
        # Too little noise for the chain: cut the noise into single sentences, as RULER does.
        pieces = [piece for noise in sentences for piece in noise.split(".")]
        sentences = [piece + "." if piece.strip() else piece for piece in pieces]
        if len(sentences) <= len(lines):  # still too short: RULER drops the chain's tail
            lines = lines[: max(len(sentences) - 1, 0)]
    positions = sorted(rng.sample(range(len(sentences)), len(lines)))
    for offset, (position, line) in enumerate(zip(positions, lines, strict=True)):
        sentences.insert(position + offset, line)
    return " ".join(sentences).replace(". \n", ".\n")


def _task_text(lines: list[str], num_noises: int, num_hops: int, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer prefix, queried value) for one chain in num_noises lines of noise."""
    context = _insert_chain(lines, num_noises, rng)
    value = lines[0].split("=")[-1].strip()
    prompt = TEMPLATE.format(context=context, query=value)
    return prompt, ANSWER_PREFIX.format(num_v=num_hops + 1, query=value), value


def _rename_example(example: str, rng: random.Random) -> str:
    """Give the example's answer variables fresh random names of the same length (RULER's randomize_icl)."""
    cut = example.index(ANSWER_PREFIX[-10:]) + 10
    for name in example[cut:].strip().split():
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return example


class VariableTrackingFamily:
    unit = "noise lines"

    def __init__(
        self,
        args: dict[str, Any],
        ctx: int,
        seed: int,
        count_text: TextCounter,
        nvidia_stream: random.Random | None = None,
    ):
        """nvidia_stream: the calibration's random stream when sizing as NVIDIA does (the example is drawn from
        it first, as NVIDIA's script draws it before the task's calibration); None for the tight fit."""
        self.num_chains = args["num_chains"]
        self.num_hops = args["num_hops"]
        if self.num_chains != 1:
            raise ValueError(f"num_chains={self.num_chains} is not supported; RULER's vt uses 1")
        self.ctx = ctx
        self.nvidia_stream = nvidia_stream
        # NVIDIA seeds numpy's global generator with the run seed too; only vt's values draw from it.
        self.nvidia_values = np.random.RandomState(seed) if nvidia_stream is not None else None
        if nvidia_stream is None:
            self.example = self._example(random.Random(f"ruler/vt/example/seed={seed}"), count_text)
        else:
            self.example = self._nvidia_example(nvidia_stream, count_text)
        self.example_tokens = count_text(self.example)

    def _example(self, rng: random.Random, count_text: TextCounter) -> str:
        """The solved example, grown in noise until it would pass 500 tokens with the 30 to generate."""
        hops = min(10, self.num_hops)
        names, lines = _chain(hops, 3, rng)
        state = rng.getstate()

        def text(num_noises: int) -> str:
            rng.setstate(state)
            question, prefix, _ = _task_text(lines, num_noises, hops, rng)
            return question + prefix + " " + " ".join(names) + "\n\n"

        budget = EXAMPLE_TOKENS - FAMILIES["variable_tracking"]["tokens_to_generate"]
        fit = largest_fitting(lambda n: count_text(text(n)), budget, EXAMPLE_STEP, 10 * EXAMPLE_TOKENS, EXAMPLE_STEP)
        return text(fit.size)

    def _nvidia_example(self, rng: random.Random, count_text: TextCounter) -> str:
        """The solved example as sys_vartrack_w_noise_random(max_seq_length=500, incremental=5) makes it."""
        hops = min(10, self.num_hops)
        generate = FAMILIES["variable_tracking"]["tokens_to_generate"]
        size, total = EXAMPLE_STEP, 0
        while total + generate < EXAMPLE_TOKENS:
            names, lines = _chain(hops, 3, rng, self.nvidia_values)
            question, prefix, _ = _task_text(lines, size, hops, rng)
            total = count_text(question + prefix + f" {names}")  # NVIDIA appends the Python list
            if total + generate > EXAMPLE_TOKENS:
                size -= EXAMPLE_STEP
                break
            size += EXAMPLE_STEP
        # NVIDIA's per-sample check on the example retries at the same size (its loop never shrinks), so a
        # too-long example would hang it; the example is far from that (about one noise line under).
        names, lines = _chain(hops, 3, rng, self.nvidia_values)
        question, prefix, _ = _task_text(lines, max(size, 0), hops, rng)
        return question + prefix + " " + " ".join(names) + "\n\n"

    def size_bounds(self, index: int) -> tuple[int, int]:
        return 1, max(self.ctx, 1)

    def nvidia_sizing(self) -> NvidiaSizing:
        """variable_tracking.py: 10 noise lines at a time, the solved example's tokens counted beside."""
        return NvidiaSizing(first=10, increment=10, extra_tokens=self.example_tokens)

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        calibrating = rng is self.nvidia_stream  # NVIDIA's calibration: numpy values, example left as it is
        names, lines = _chain(self.num_hops, 5, rng, self.nvidia_values if calibrating else None)
        example = self.example if calibrating else _rename_example(self.example, rng)
        question, prefix, value = _task_text(lines, size, self.num_hops, rng)
        # RULER puts the example between the chat template and the question, after a space.
        prompt = " " + example + "\n\n" + question
        meta = {"haystack_size": size, "unit": self.unit, "value": value, "chain": names}
        # NVIDIA counts the question without the example (whose tokens it adds apart), and its calibration
        # appends the answer as the Python list of names.
        return Instance(prompt, prefix, names, meta, nvidia_input=question + prefix, nvidia_answer=f" {names}")
