"""Bad input, as a new user types it: exit 2, a message that names the input and the fix, no traceback, and
nothing left behind (nothing new under the working folder, nothing that was there removed or changed).

One table over every command's inputs; each row is (arguments, words the message must hold: the bad input and
the fix). The inputs the rows name (bad files, a corrupt run folder, a foreign roles file...) are built by
`make_fixtures` in a fresh working folder. Every case but two (marked below) fails before any model weights load.
Where the code handled a case badly (a traceback, exit 1, a misleading message, a file left, minutes of work
before the refusal), the code was fixed and the case stays here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lychee_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "results" / "smoke")
LATENCY = str(ROOT / "results" / "latency" / "h200-first")
RUN = ["run", "--task", "ruler/vt", "--ctx", "1024", "--samples", "1", "--device", "cpu"]
LYCHEE = [*RUN, "--method", "lychee", "--roles"]
KASCADE = [*RUN, "--method", "kascade", "-o"]
BENCH = ["bench", "--smoke", "--model", "tiny-llama-synthetic", "--ctx", "256", "--batch", "1"]
TRAIN = ["train-heads", "--retrieval-heads", "11", "--steps", "1", "--ctx-min", "1000", "--ctx-max", "1200"]
CALIBRATE = ["calibrate", "--method", "kascade", "--ctx", "256", "--samples", "1", "--device", "cpu"]
SMOL = {"name": "smollm2-135m", "layers": 30, "kv_heads": 3, "heads": 9}
CALIBRATE_FIX = "`lychee-bench calibrate --method kascade --model smollm2-135m"

CLICK = "--help"  # a usage error (typer/click) names the option and says: Try '... --help' for help
NO_RECORDS = ["holds no result records", "give a folder that `lychee-bench run`"]
CASES = [
    # --- compare ---
    (["compare", "nope", SMOKE], ["nope does not exist", "give a run folder"]),
    (["compare", SMOKE, "nope"], ["nope does not exist", "give a run folder"]),
    (["compare", SMOKE, "a-file.txt"], ["a-file.txt", *NO_RECORDS]),
    (["compare", SMOKE, "bad.jsonl"], ["bad.jsonl", *NO_RECORDS]),
    (["compare", SMOKE, "empty"], ["empty", *NO_RECORDS]),
    (["compare", SMOKE, "empty.jsonl"], ["empty.jsonl", *NO_RECORDS]),
    (["compare", SMOKE, "garbage-run"], ["garbage-run", *NO_RECORDS]),
    (["compare", SMOKE, "future-schema.jsonl"], ["schema 99 is newer", *NO_RECORDS]),
    (["compare", SMOKE, "bad-kernel.json"], ["bad-kernel.json", *NO_RECORDS]),
    (["compare", SMOKE, "unrelated"], ["nothing compared: no row of unrelated matches", "--allow-empty"]),
    (["compare", SMOKE], ["Missing argument", CLICK]),
    (["compare", SMOKE, SMOKE, "--tol", "x"], ["bad --tol 'x'", "NAME=NUMBER"]),
    (["compare", SMOKE, SMOKE, "--tol", "quality=abc"], ["bad --tol 'quality=abc'", "NAME=NUMBER"]),
    (["compare", SMOKE, SMOKE, "--tol", "quality=-1"], ["bad --tol 'quality=-1'", "a finite tolerance >= 0"]),
    (["compare", SMOKE, SMOKE, "--tol", "quality=nan"], ["bad --tol 'quality=nan'", "a finite tolerance >= 0"]),
    (["compare", SMOKE, SMOKE, "--tol", "=1"], ["bad --tol '=1'", "NAME=NUMBER"]),
    (["compare", SMOKE, SMOKE, "--tol", "qualty=1"], ["--tol qualty: not a kind", "fix the name"]),
    (["compare", SMOKE, SMOKE, "--format", "xml"], ["--format 'xml'", "use table or json"]),
    (["compare", SMOKE, SMOKE, "--z", "-1"], ["--z", "greater than or equal to 0", CLICK]),
    (["compare", SMOKE, SMOKE, "--z", "abc"], ["--z", CLICK]),
    # --- report ---
    (["report", "nope"], ["nope does not exist", "give a run folder"]),
    (["report", "a-file.txt"], ["a-file.txt", *NO_RECORDS]),
    (["report", "bad.jsonl"], ["bad.jsonl:1: unreadable record", *NO_RECORDS]),
    (["report", "empty"], ["empty", *NO_RECORDS]),
    (["report", "empty.jsonl"], ["empty.jsonl", *NO_RECORDS]),
    (["report", "garbage-run"], ["garbage-run/records.jsonl:1: unreadable record", *NO_RECORDS]),
    (["report", "future-schema.jsonl"], ["schema 99 is newer", *NO_RECORDS]),
    (["report", SMOKE, "--format", "xml"], ["--format 'xml'", "use table, markdown or json"]),
    (["report", SMOKE, "--html", "a-file.txt/x.html"], ["--html a-file.txt/x.html cannot be written", "new .html"]),
    (["report", SMOKE, "--html", "empty"], ["--html empty cannot be written", "pass a new .html path"]),
    (["report", SMOKE, "--html", "/proc/lychee-bench/x.html"], ["--html /proc/lychee-bench/x.html", "you can write"]),
    (["report"], ["Missing argument", CLICK]),
    (["run", "--tag", "a b", "--tag", "", "--method", "full"], ["--tag 'a b', ''", "letters, digits"]),
    (["bench", "--smoke", "--tag", "x/y"], ["--tag 'x/y'", "e.g. --tag tuning"]),
    # --- plot ---
    (["plot", "nope"], ["nope does not exist", "give folders that `run`, `bench` or `suite` wrote"]),
    (["plot", "empty"], ["empty", *NO_RECORDS]),
    (["plot", "a-file.txt"], ["a-file.txt", *NO_RECORDS]),
    (["plot", "bad.jsonl"], ["bad.jsonl", *NO_RECORDS]),
    (["plot", LATENCY, SMOKE], ["2 folders given", "--out DIR"]),
    (["plot", "one-subtask-run"], ["no figure could be drawn from one-subtask-run", "per-subtask bars"]),
    (["plot"], ["Missing argument", CLICK]),
    (["plot", LATENCY, "--out", "a-file.txt"], ["--out a-file.txt is a file", "pass a folder"]),
    (["plot", LATENCY, "--out", "a-file.txt/plots"], ["--out a-file.txt/plots cannot be created", "another path"]),
    # --- suite ---
    (["suite", "nope"], ["unknown suite 'nope'", "use one of smoke"]),
    (["suite", ""], ["unknown suite ''", "use one of smoke"]),
    (["suite", "smoke", "--out", "a-file.txt"], ["--out a-file.txt is a file", "pass a folder"]),
    (["suite", "smoke", "--out", "a-file.txt/run"], ["--out a-file.txt/run cannot be created", "another path"]),
    (["suite", "smoke", "--out", "done-run"], ["--out done-run already holds a run", "pass another --out"]),
    (["suite", "smoke", "--compare", "nope"], ["baseline nope does not exist", "--update-baseline"]),
    (["suite", "smoke", "--compare", "empty"], ["baseline empty holds no result records", "results/smoke"]),
    (["suite", "smoke", "--compare", "a-file.txt"], ["baseline a-file.txt holds no", "results/smoke"]),
    (["suite", "smoke", "--update-baseline", "--compare", SMOKE], ["--update-baseline or --compare", "not both"]),
    (["suite", "smoke", "--tol", "quality=1"], ["--tol quality=1 only applies with --compare", "drop --tol"]),
    (["suite", "smoke", "--compare", SMOKE, "--tol", "x"], ["bad --tol 'x'", "NAME=NUMBER"]),
    (["suite", "smoke", "--compare", SMOKE, "--tol", "qualty=1"], ["--tol qualty: not a kind", "fix the name"]),
    (["suite", "smoke", "--z", "-1"], ["--z", CLICK]),
    # --- bench ---
    (["bench", "--ctx", "0"], ["contexts must be >= 2", "got [0]"]),
    (["bench", "--batch", "0"], ["batches >= 1", "and [0]"]),
    (["bench", "--ctx", "abc"], ["'abc'", "--ctx and --batch take comma lists of integers"]),
    (["bench", "--batch", "1,x"], ["'1,x'", "--ctx and --batch take comma lists of integers"]),
    (["bench", "--ctx", ""], ["give at least one method, one context and one batch size"]),
    (["bench", "--methods", "full"], ["needs a CUDA GPU", "--smoke"]),
    (["bench", "--methods", "full", "--device", "cpu"], ["CUDA", "--smoke"]),
    ([*BENCH, "--ctx", "100000"], ["got [100000]", "the CPU smoke mode takes contexts up to 8192"]),
    (["bench", "--smoke", "--ctx", "256", "--batch", "1"], ["not 'llama3-8b-synthetic'", "tiny models only"]),
    (["bench", "--smoke", "--model", "nope", "--methods", "full"], ["not 'nope'", "tiny-llama-synthetic"]),
    ([*BENCH, "--methods", "nope"], ["unknown method 'nope'", "Known methods"]),
    ([*BENCH, "--methods", "lychee[nope=1]"], ["lychee has no option nope", "its options"]),
    ([*BENCH, "--methods", ""], ["no method given", "e.g. --method full,lychee"]),
    ([*BENCH, "--methods", "kascade[anchors=llama3.1-8b]"], ["preset shipped:llama3.1-8b", "its own shape"]),
    ([*BENCH, "--methods", "full", "-o", "x"], ["bad --option 'x'", "key=value"]),
    ([*BENCH, "--methods", "full", "--reps", "0"], ["--reps", CLICK]),
    ([*BENCH, "--methods", "full", "--warmup", "0"], ["--warmup", CLICK]),
    ([*BENCH, "--methods", "full", "--profile", "-1"], ["--profile", CLICK]),
    ([*BENCH, "--methods", "full", "--prefill-chunk", "-1"], ["--prefill-chunk", CLICK]),
    ([*BENCH, "--methods", "full", "--out", "a-file.txt"], ["--out a-file.txt is a file", "pass a folder"]),
    ([*BENCH, "--methods", "full", "--out", "a-file.txt/l"], ["--out a-file.txt/l cannot be created", "another path"]),
    ([*BENCH, "--methods", "full", "--rope-scaling", "yarn:2"], ["--rope-scaling yarn:2", "drop --rope-scaling"]),
    # --- list ---
    (["list", "nope"], ["unexpected extra argument", "nope", CLICK]),
    (["list", "--bogus"], ["No such option", "--bogus", CLICK]),
    # --- run: methods and their options (every method) ---
    ([*RUN, "--method", "nope"], ["unknown method 'nope'", "Known methods"]),
    ([*RUN, "--method", ""], ["no method given", "e.g. --method full,lychee"]),
    ([*RUN, "--method", "lychee["], ["unbalanced brackets in --method 'lychee['", "close each '[' with ']'"]),
    ([*RUN, "--method", "full", "-o", "x"], ["bad --option 'x'", "key=value"]),
    ([*RUN, "--method", "full", "-o", "=x"], ["bad --option '=x'", "key=value"]),
    ([*RUN, "--method", "full[budget=5]"], ["full has no option budget", "its options: path"]),
    ([*RUN, "--method", "lychee[budget=-5]"], ["lychee budget -5", "e.g. --budget 4096"]),
    ([*RUN, "--method", "lychee", "--budget", "0"], ["lychee budget 0", "e.g. --budget 4096"]),
    ([*RUN, "--method", "lychee[roles=]"], ["option roles is empty", "give a value"]),
    ([*RUN, "--method", "lychee[nope=1]"], ["lychee has no option nope", "its options"]),
    ([*RUN, "--method", "lychee[granularity=bogus]"], ["granularity 'bogus'", "use one of token, block"]),
    ([*RUN, "--method", "lychee[path=bogus]"], ["path 'bogus'", "use one of auto, reference, triton"]),
    ([*RUN, "--method", "lychee[budget=abc]"], ["lychee option budget", "cannot read 'abc' as int"]),
    ([*RUN, "--method", "lychee[budget_ratio=5]"], ["lychee budget_ratio 5.0", "must be in (0, 1]"]),
    ([*RUN, "--method", "streaming[sink=-1]"], ["got sink=-1", "needs sink >= 0"]),
    ([*RUN, "--method", "streaming[budget=abc]"], ["streaming option budget", "cannot read 'abc' as int"]),
    ([*RUN, "--method", "streaming[nope=1]"], ["streaming has no option nope", "its options"]),
    ([*RUN, "--method", "tidal[reselect_layer=1]"], ["reselect_layer 1", "with L > 2"]),
    ([*RUN, "--method", "tidal[reselect_layer=99]"], ["reselect_layer 99", "last layer (29)"]),
    ([*RUN, "--method", "tidal[budget=0]"], ["tidal budget 0", "give --budget N"]),
    ([*RUN, "--method", "tidal[per_kv_head=maybe]"], ["per_kv_head", "cannot read 'maybe' as bool"]),
    ([*RUN, "--method", "tidal[selection_layer=-1]"], ["selection_layer -1", "must be >= 0"]),
    ([*RUN, "--method", "quest[page_size=0]"], ["page_size 0", "must be >= 1"]),
    ([*RUN, "--method", "quest[budget=-1]"], ["quest budget -1", "raise --budget"]),
    ([*RUN, "--method", "quest[nope=1]"], ["quest has no option nope", "its options"]),
    ([*RUN, "--method", "duo[roles=uniform:abc]"], ["bad roles 'uniform:abc'", "write uniform:N"]),
    ([*RUN, "--method", "duo[sink=-1]"], ["got sink=-1", "needs sink >= 0"]),
    ([*RUN, "--method", "kascade[budget_ratio=2]"], ["budget_ratio 2.0", "e.g. 0.1"]),
    ([*RUN, "--method", "kascade[budget=0]"], ["kascade budget 0", "give --budget N"]),
    ([*RUN, "--method", "kascade[min_budget=0]"], ["min_budget 0", "must be >= 1 token"]),
    ([*RUN, "--method", "kascade[path=gpu]"], ["path 'gpu'", "use one of auto, reference, triton"]),
    # --- run: roles files (lychee --roles) ---
    ([*LYCHEE, "no-such-file.json"], ["'no-such-file.json'", "uniform:N, all, a shipped roles name"]),
    ([*LYCHEE, "uniform:abc"], ["bad roles 'uniform:abc'", "write uniform:N"]),
    ([*LYCHEE, "uniform:1"], ["uniform:1 is impossible", "use 3..90"]),
    ([*LYCHEE, "roles-list.json"], ["roles-list.json holds a JSON list", "regenerate it"]),
    ([*LYCHEE, "roles-range.json"], ["roles-range.json: layer 3 lists heads [7]", "lychee-bench train-heads"]),
    ([*LYCHEE, "roles-layers.json"], ["roles-layers.json lists 10 layers", "lychee-bench train-heads"]),
    ([*LYCHEE, "roles-other.json"], ["learned for model 'another-model'", "lychee-bench train-heads"]),
    ([*LYCHEE, "roles-truncated.json"], ["roles-truncated.json is not valid JSON", "regenerate it"]),
    ([*LYCHEE, "roles-empty.json"], ["roles-empty.json is empty", "regenerate it"]),
    ([*LYCHEE, "roles-dir"], ["roles-dir is a folder", "regenerate it"]),
    ([*LYCHEE, "roles-edited.json"], ["roles-edited.json fails its checksum", "regenerate it"]),
    # --- run: Kascade anchor files (kascade -o anchors=) ---
    ([*KASCADE, "anchors=nope.json"], ["'nope.json' is neither a shipped name", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=llama3.1-8b"], ["preset shipped:llama3.1-8b fits models of shape", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-list.json"], ["anchors-list.json holds a JSON list", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-range.json"], ["head_map row 5 [0, 1, 9] has entries outside 0..2", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-layers.json"], ["anchors-layers.json are for (10, 3)", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-other.json"], ["calibrated for model 'another-model'", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-truncated.json"], ["anchors-truncated.json is not valid JSON", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-empty.json"], ["anchors-empty.json is empty", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-dir"], ["anchors-dir is a folder", CALIBRATE_FIX]),
    ([*KASCADE, "anchors=anchors-edited.json"], ["anchors-edited.json fails its checksum", CALIBRATE_FIX]),
    # --- run: tasks and their bracket options ---
    ([*RUN, "--method", "full", "--task", "nope"], ["unknown task 'nope'", "Known tasks"]),
    ([*RUN, "--method", "full", "--task", ""], ["no task given", "e.g. --task ruler"]),
    ([*RUN, "--method", "full", "--task", "ruler/vt,nope"], ["unknown task 'nope'", "Known tasks"]),
    ([*RUN, "--method", "full", "--task", "ruler/nope"], ["unknown ruler subtask 'nope'", "Known ruler subtasks"]),
    ([*RUN, "--method", "full", "--task", "ruler["], ["'ruler['", "write name or name[key=value"]),
    ([*RUN, "--method", "full", "--task", "ruler[colour=red]"], ["ruler[colour=red]", "it takes sizing"]),
    ([*RUN, "--method", "full", "--task", "ruler[sizing=bogus]"], ["sizing 'bogus'", "allowed: nvidia, tight"]),
    ([*RUN, "--method", "full", "--task", "aime24[k=2]"], ["aime24 k=2", "use k=8"]),
    ([*RUN, "--method", "full", "--task", "aime24[k=0]"], ["aime24 k=0", "use k=8"]),
    ([*RUN, "--method", "full", "--task", "aime24[k=abc]"], ["k='abc' is not an integer", "write e.g. k=8"]),
    ([*RUN, "--method", "full", "--task", "aime24[max_new_tokens=0]"], ["max_new_tokens=0", "use e.g. max_new"]),
    ([*RUN, "--method", "full", "--task", "longbench[data_dir=/nonexistent]/qasper"], ["/nonexistent", "data.zip"]),
    ([*RUN, "--method", "full", "--task", "longbench[data_dir=a-file.txt]/qasper"], ["a-file.txt", "data.zip"]),
    ([*RUN, "--method", "full", "--task", "longbench/not_a_task"], ["subtask 'not_a_task'", "Known longbench"]),
    # --- run: model, context, sampling, device, output folder ---
    ([*RUN, "--method", "full", "--ctx", "0"], ["cannot be built at --ctx 0", "leaves no room for the prompt"]),
    ([*RUN, "--method", "full", "--ctx", "-5"], ["cannot be built at --ctx -5", "leaves no room for the prompt"]),
    ([*RUN, "--method", "full", "--ctx", "100"], ["cannot be built at --ctx 100", "need 823 tokens"]),
    ([*RUN, "--method", "full", "--ctx", "100000"], ["context 100000 exceeds", "add --rope-scaling yarn:16"]),
    ([*RUN, "--method", "full", "--samples", "0"], ["--samples", CLICK]),
    ([*RUN, "--method", "full", "--batch-size", "-1"], ["--batch-size", CLICK]),
    ([*RUN, "--method", "full", "--temperature", "-1"], ["--temperature", CLICK]),
    ([*RUN, "--method", "full", "--top-p", "2"], ["--top-p", CLICK]),
    ([*RUN, "--method", "full", "--exercise-chars", "-5"], ["--exercise-chars", CLICK]),
    ([*RUN, "--method", "full", "--model", "nope"], ["unknown model 'nope'", "not a hub id (owner/name)"]),
    ([*RUN, "--method", "full", "--model", "empty"], ["model folder empty has no config.json", "give a transformers"]),
    ([*RUN, "--method", "full", "--model", "llama3-8b-synthetic"], ["no tokenizer", "give one with --tokenizer"]),
    ([*RUN, "--method", "full", "--model", "llama3-8b-synthetic", "--tokenizer", "nope"], ["model 'nope'", "a folder"]),
    ([*RUN, "--method", "full", "--dtype", "nope"], ["unknown dtype 'nope'", "use one of float32"]),
    ([*RUN, "--method", "full", "--dtype", "float64"], ["unknown dtype 'float64'", "use one of float32"]),
    ([*RUN, "--method", "full", "--device", "nope"], ["unknown device 'nope'", "use cpu, cuda or cuda:N"]),
    ([*RUN, "--method", "full", "--device", "cuda:99"], ["'cuda:99'", "cuda"]),
    ([*RUN, "--method", "full", "--rope-scaling", "bad"], ["bad --rope-scaling 'bad'", "e.g. yarn:2"]),
    ([*RUN, "--method", "full", "--rope-scaling", "yarn:abc"], ["bad --rope-scaling 'yarn:abc'", "e.g. yarn:2"]),
    ([*RUN, "--method", "full", "--rope-scaling", "yarn:0"], ["bad --rope-scaling 'yarn:0'", "a factor > 1"]),
    ([*RUN, "--method", "full", "--rope-scaling", "nope:2"], ["bad --rope-scaling 'nope:2'", "yarn, linear, dynamic"]),
    ([*RUN, "--method", "full", "--out", "a-file.txt"], ["--out a-file.txt is a file", "pass a folder"]),
    ([*RUN, "--method", "full", "--out", "a-file.txt/run"], ["a-file.txt/run cannot be created", "another folder"]),
    ([*RUN, "--method", "full", "--out", "done-run"], ["done-run holds records made with other", "another --out"]),
    ([*RUN, "--method", "full", "--out", "broken-manifest"], ["manifest.json is unreadable", "pass another --out"]),
    # --- calibrate ---
    (["calibrate", "--method", "nope"], ["not 'nope'", "kascade or tidal"]),
    (["calibrate", "--method", "quest"], ["not 'quest'", "kascade or tidal"]),
    (["calibrate"], ["Missing option", "--method", CLICK]),
    (["calibrate", "--method", "kascade", "--ctx", "0"], ["--ctx 0 is too short", "use at least 96"]),
    ([*CALIBRATE, "--ctx", "100000"], ["context 100000 exceeds", "add --rope-scaling yarn:16"]),
    ([*CALIBRATE, "--samples", "0"], ["--samples", CLICK]),
    ([*CALIBRATE, "--anchors", "0"], ["--anchors 0", "must lie in 1..30"]),
    ([*CALIBRATE, "--anchors", "99"], ["--anchors 99", "must lie in 1..30"]),
    (["calibrate", "--method", "tidal", "--ctx", "256", "--importance"], ["--importance", "not apply to --method"]),
    ([*CALIBRATE, "--device", "nope"], ["unknown device 'nope'", "use cpu, cuda or cuda:N"]),
    ([*CALIBRATE, "--model", "nope"], ["unknown model 'nope'", "not a hub id (owner/name)"]),
    ([*CALIBRATE, "--out", "a-file.txt/x.json"], ["--out a-file.txt/x.json cannot be created", "another path"]),
    ([*CALIBRATE, "--out", "empty"], ["--out empty is a folder", "pass a file path"]),
    # --- train-heads ---
    (["train-heads", "--gate", "nope"], ["--gate 'nope' is not a gate", "exactly one of --retrieval-heads"]),
    (["train-heads", "--steps", "5"], ["give exactly one of --retrieval-heads N", "--density D"]),
    ([*TRAIN, "--lambda-lr", "-1"], ["--lambda-lr -1.0", "must be >= 0"]),
    (["train-heads", "--retrieval-heads", "11", "--density", "0.1"], ["give exactly one of --retrieval-heads N"]),
    (["train-heads", "--retrieval-heads", "11", "--ctx-max", "10000"], ["context 10000 exceeds", "yarn:2"]),
    (["train-heads", "--retrieval-heads", "11", "--ctx-min", "9000"], ["--ctx-min 9000 is above", "or less"]),
    ([*TRAIN, "--gate", "bogus"], ["--gate 'bogus' is not a gate", "use one of continuous"]),
    ([*TRAIN, "--steps", "0"], ["--steps", CLICK]),
    ([*TRAIN, "--checkpoint-every", "0"], ["--checkpoint-every", CLICK]),
    ([*TRAIN, "--ctx-min", "0"], ["--ctx-min 0", "need 0 < ctx-min <= ctx-max"]),
    ([*TRAIN, "--ctx-min", "5000"], ["--ctx-min 5000 and --ctx-max 1200", "need 0 < ctx-min <= ctx-max"]),
    ([*TRAIN, "--ctx-min", "200"], ["--ctx-min 200", "raise ctx_min"]),
    ([*TRAIN, "--ctx-max", "100000"], ["context 100000 exceeds", "add --rope-scaling yarn:16"]),
    ([*TRAIN, "--threshold-rule", "nope"], ["threshold_rule='nope'", "use one of kuma_mean"]),
    ([*TRAIN, "--corpus", "nope"], ["--corpus 'nope'", "use one of ruler-essay, shakespeare"]),
    ([*TRAIN, "--selection-scores", "nope"], ["--selection-scores 'nope'", "use one of query_head, kv_group"]),
    ([*TRAIN, "--time-limit", "-1"], ["--time-limit -1.0", "> 0 (e.g. 8)"]),
    ([*TRAIN, "--device", "nope"], ["unknown device 'nope'", "use cpu, cuda or cuda:N"]),
    ([*TRAIN, "--dtype", "nope"], ["unknown dtype 'nope'", "use one of float32"]),
    ([*TRAIN, "--model", "nope"], ["unknown model 'nope'", "not a hub id (owner/name)"]),
    ([*TRAIN, "--rope-scaling", "bad"], ["bad --rope-scaling 'bad'", "e.g. yarn:2"]),
    ([*TRAIN, "--out", "a-file.txt"], ["--out a-file.txt is a file", "pass a folder"]),
    ([*TRAIN, "--out", "a-file.txt/train"], ["--out a-file.txt/train cannot be created", "another path"]),
    ([*TRAIN[:1], *TRAIN[3:], "--density", "2"], ["target_density=2.0", "e.g. 0.1"]),
    ([*TRAIN[:1], *TRAIN[3:], "--retrieval-heads", "0"], ["num_retrieval_heads=0", "give at least"]),
    # These two need the weights (about 1 s for the default model): the head count is checked against the loaded
    # model, a checkpoint against its parameters.
    ([*TRAIN[:1], *TRAIN[3:], "--retrieval-heads", "99999"], ["retrieval heads 99999", "use 3..90"]),
    ([*TRAIN, "--out", "garbage-checkpoint"], ["checkpoint.pt is not a train-heads", "pass another"]),
]


def _roles(layers: int = SMOL["layers"], name: str = SMOL["name"]) -> dict:
    from lychee_bench.methods.roles import roles_to_json, uniform_roles

    return roles_to_json(uniform_roles(11, layers, SMOL["kv_heads"]), {"name": name, "fingerprint": "f"})


def _anchors(layers: int = SMOL["layers"], name: str = SMOL["name"]) -> dict:
    from lychee_bench.methods.artifacts import kascade_to_json

    head_map = [list(range(SMOL["kv_heads"]))] * layers
    return kascade_to_json([0, 2], head_map, {"name": name, "fingerprint": "f"}, {})


def _resealed_roles(data: dict) -> dict:
    from lychee_bench.methods.roles import file_checksum

    return {**data, "sha256": file_checksum(data["model"], data["retrieval"])}


def _resealed_anchors(data: dict) -> dict:
    from lychee_bench.methods.artifacts import kascade_seal

    return {**data, "sha256": kascade_seal(data["model"], data["scope"], data["anchors"], data["head_map"])}


def _artifacts(root: Path, prefix: str, good: dict, other: dict, fewer: dict, out_of_range: dict, edited: dict) -> None:
    files = {
        "list": json.dumps([good]),
        "range": json.dumps(out_of_range),
        "layers": json.dumps(fewer),
        "other": json.dumps(other),
        "truncated": json.dumps(good)[:150],
        "empty": "",
        "edited": json.dumps(edited),
    }
    for kind, text in files.items():
        (root / f"{prefix}-{kind}.json").write_text(text)
    (root / f"{prefix}-dir").mkdir()


def make_fixtures(root: Path) -> None:
    """The inputs the cases name, in a fresh working folder."""
    (root / "a-file.txt").write_text("x")
    (root / "bad.jsonl").write_text("{bad\n" + json.dumps([1, 2]) + "\n")
    (root / "empty.jsonl").write_text("")
    (root / "empty").mkdir()
    smoke = (Path(SMOKE) / "records.jsonl").read_text().splitlines()
    (root / "garbage-run").mkdir()
    (root / "garbage-run" / "records.jsonl").write_text("".join(line[: len(line) // 2] + "\n" for line in smoke[:3]))
    shutil.copytree(SMOKE, root / "broken-manifest")
    (root / "broken-manifest" / "manifest.json").write_text('{"schema": 1, "kind": ')
    (root / "unrelated").mkdir()
    moved = [json.loads(line) | {"model": "another-model", "task": "another-task"} for line in smoke[:3]]
    (root / "unrelated" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in moved))
    (root / "future-schema.jsonl").write_text(json.dumps(json.loads(smoke[0]) | {"schema": 99}) + "\n")
    (root / "bad-kernel.json").write_text('{"kernels": [')
    (root / "one-subtask-run").mkdir()  # one method, one subtask, no budget, no timing: nothing to draw
    single = [r for r in map(json.loads, smoke) if r.get("method") == "full" and r.get("subtask") == "vt"]
    (root / "one-subtask-run" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single))
    shutil.copytree(SMOKE, root / "done-run")
    (root / "garbage-checkpoint").mkdir()
    (root / "garbage-checkpoint" / "checkpoint.pt").write_bytes(b"not a checkpoint")

    roles = _roles()
    bad_head = [list(row) for row in roles["retrieval"]]
    bad_head[3] = [7]
    _artifacts(
        root,
        "roles",
        roles,
        _resealed_roles(_roles(name="another-model")),
        _resealed_roles({**roles, "retrieval": roles["retrieval"][:10]}),
        _resealed_roles({**roles, "retrieval": bad_head}),
        {**roles, "retrieval": [*roles["retrieval"][:-1], [0]]},
    )
    anchors = _anchors()
    bad_map = [list(row) for row in anchors["head_map"]]
    bad_map[5] = [0, 1, 9]
    _artifacts(
        root,
        "anchors",
        anchors,
        _resealed_anchors(_anchors(name="another-model")),
        _resealed_anchors(_anchors(layers=10)),
        _resealed_anchors({**anchors, "head_map": bad_map}),
        {**anchors, "anchors": [0, 3]},
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_fixtures(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def _case_id(case: tuple[list[str], list[str]]) -> str:
    return " ".join(case[0]).replace(str(ROOT) + "/", "")[:80]


@pytest.mark.parametrize(("args", "words"), CASES, ids=[_case_id(case) for case in CASES])
def test_bad_input_is_refused_cleanly(workdir, args, words):
    before = _snapshot(workdir)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, f"{word!r} not in:\n{result.output}"
    assert _snapshot(workdir) == before, "files were left behind, removed or changed"


def test_the_table_covers_every_command():
    commands = {case[0][0] for case in CASES}
    assert commands == {"run", "report", "compare", "bench", "calibrate", "train-heads", "suite", "plot", "list"}
    assert len(CASES) >= 115


def test_a_writable_place_is_accepted(tmp_path):
    from lychee_bench.harness.paths import unwritable_reason

    (tmp_path / "old.json").write_text("{}")
    assert unwritable_reason(tmp_path / "old.json", "--out", kind="file") is None  # overwritten, as asked
    assert unwritable_reason(tmp_path, "--out") is None
    assert unwritable_reason(tmp_path / "new" / "deeper", "--out") is None
