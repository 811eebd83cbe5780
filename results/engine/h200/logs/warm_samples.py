"""Session tool: build the RULER samples of one (ctx, samples, seed) for every subtask in parallel processes, so the
runs that follow find them in the sample cache (the device machine has 16 cores; each subtask is one process)."""

import sys
from multiprocessing import Pool

CTX, SAMPLES, SEED = int(sys.argv[1]), int(sys.argv[2]), 42
MODEL = sys.argv[3] if len(sys.argv) > 3 else None


def build(subtask: str) -> str:
    from lychee_bench.harness import models
    from lychee_bench.harness.catalog import TASKS
    from lychee_bench.harness.inputs import InputFormatter
    from lychee_bench.harness.sample_cache import cached_samples

    tokenizer = models.load_tokenizer(models.resolve_model(MODEL))
    samples = cached_samples(TASKS.get("ruler")(), subtask, CTX, SAMPLES, SEED, InputFormatter(tokenizer, None, 100))
    return f"{subtask}: {[s.input_tokens for s in samples]}"


if __name__ == "__main__":
    from lychee_bench.harness import models
    from lychee_bench.harness.catalog import TASKS

    models.resolve_model(MODEL)  # convert once before the workers start
    with Pool(13) as pool:
        for line in pool.imap_unordered(build, TASKS.get("ruler")().subtasks()):
            print(line, flush=True)
