"""Developers' tool: make RULER samples here, in the cache the GPU machine will read, so a run there does not
spend its device minutes generating them (at 131072, NVIDIA's sizing takes about a minute per subtask on one core).

    python dev/device/make_samples.py 131072:10 16384:25      # CTX:SAMPLES per subtask, seed 42, chat template
    tar cJf .carry/s.tar.xz -C "${LYCHEE_BENCH_CACHE:-$HOME/.cache/lychee-bench}" samples/ruler

The cache key holds the tokenizer's fingerprint and the word lists' hashes, so the samples are found there only if
this machine has the device's transformers and tokenizers (5.17.0 and 0.23.2 in the 2026-11 image: they convert the
GGUF's tokenizer to the same fingerprint, f62992460a0e81c6 for qwen2.5-coder-0.5b) and the wonderwords that travels
(pinned in pyproject.toml). A virtual environment with those two versions on top of the project's does it. Check on
the device with `lb_samples` and a run's `generation_s`.
"""

from __future__ import annotations

import sys
import time

from lychee_bench.harness import models
from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.harness.runner import build_tasks
from lychee_bench.harness.sample_cache import cached_samples

MODEL = "qwen2.5-coder-0.5b"
SEED = 42
EXERCISE_CHARS = 100  # run's default when a decode-only method runs (it does not enter the key)


def main(specs: list[str]) -> None:
    source = models.resolve_model(MODEL)
    formatter = InputFormatter(models.load_tokenizer(source), None, EXERCISE_CHARS)
    print(f"tokenizer fingerprint {formatter.fingerprint()}", flush=True)
    _, tasks = build_tasks("ruler")
    task = tasks["ruler"]
    for spec in specs:
        ctx, samples = (int(part) for part in spec.split(":"))
        for subtask in task.subtasks():
            started = time.time()
            cached_samples(task, subtask, ctx, samples, SEED, formatter)
            print(f"{ctx} {subtask}: {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["131072:10"])
