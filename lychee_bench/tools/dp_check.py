"""Data parallel against one process: the same `run` on one GPU, then on N GPUs under torchrun; the records must
be equal sample for sample, and the N-GPU run should generate N times as fast.

    python -m lychee_bench.tools.dp_check --nproc 2 --out runs/dp_check
    python -m lychee_bench.tools.dp_check --nproc 2 --ctx 8192 --samples 16 --methods full,lychee -- --budget 1024

Anything after `--` goes to both `run` commands. The one-process run goes first and builds the samples into the
cache, so the torchrun launch reads them; wall times therefore differ by that build, and the comparable numbers
are the generating times each launch records (its `launch` record: from every rank having its model loaded to the
last rank finishing), as records per second:

- throughput: every record of the launch over its generating time (first batches, which compile and capture
  CUDA graphs, included);
- steady: the sum over ranks of each rank's records per second after its first batch.

Writes `dp_check.json` into --out (both runs' folders sit beside it) and exits 1 when a record differs or the
throughput ratio is below --target. `--device cpu` runs the same check with gloo on the CPU (a smoke check of the
tool; its times mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lychee_bench.harness import records

# What a sample's result is: equal in both runs, whatever the world size (times, ranks and dates may differ).
SAME_FIELDS = ("run_key", "prediction", "value", "new_tokens", "stop_reason", "input_tokens", "exercise_tokens")


def run_command(args: argparse.Namespace, extra: list[str], out: Path) -> list[str]:
    command = ["run", "--method", args.methods, "--task", args.task, "--ctx", str(args.ctx)]
    command += ["--samples", str(args.samples), "--seed", str(args.seed), "--device", args.device, "--out", str(out)]
    if args.model:
        command += ["--model", args.model]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    return [*command, *extra]


def launch(command: list[str], nproc: int) -> float:
    """Runs `lychee-bench <command>` in one plain process (nproc 1) or under torchrun; returns its wall time."""
    if nproc == 1:
        argv = [sys.executable, "-m", "lychee_bench.cli", *command]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        argv += ["-m", "lychee_bench.cli", *command]
    print("$ " + " ".join(argv), flush=True)
    started = time.perf_counter()
    finished = subprocess.run(argv, env=os.environ.copy())
    if finished.returncode != 0:
        raise SystemExit(f"dp_check: the {nproc}-process run failed (exit {finished.returncode}); see its output above")
    return time.perf_counter() - started


def sample_results(folder: Path) -> dict[tuple, dict[str, Any]]:
    """(label, subtask, index) -> the fields that must agree, from every records file of the folder."""
    found = {}
    for record in records.iter_sample_records(records.read_run(folder)):
        key = (records.label_of(record), record.get("subtask"), record.get("index"))
        found[key] = {field: record.get(field) for field in SAME_FIELDS}
    return found


def rates(folder: Path) -> dict[str, Any]:
    """The folder's last launch record, with its throughput and steady rate."""
    launches = [r for r in records.read_run(folder) if r.get("kind") == "launch"]
    if not launches:
        raise SystemExit(f"dp_check: {folder} holds no launch record; was it written by this version of run?")
    last = launches[-1]
    steady = 0.0
    for share in last["ranks"]:
        seconds = share["generation_s"] - share["first_batch_s"]
        if seconds > 0:
            steady += (share["records"] - share["first_batch_records"]) / seconds
    return {
        "world_size": last["parallel"]["world_size"],
        "records": last["records_written"],
        "generation_s": last["generation_s"],
        "throughput": last["records_written"] / last["generation_s"],
        "steady": steady,
        "ranks": last["ranks"],
    }


def compare(one: dict[tuple, dict], many: dict[tuple, dict]) -> tuple[int, list[str]]:
    """How many samples agree, and a line per sample that differs or is missing on one side."""
    agreeing, problems = 0, []
    for key in sorted(one.keys() | many.keys(), key=str):
        if key not in one or key not in many:
            problems.append(f"{key}: only in the {'one' if key in one else 'many'}-process run")
            continue
        differing = [field for field in SAME_FIELDS if one[key][field] != many[key][field]]
        if differing:
            problems.append(f"{key}: {', '.join(differing)} differ ({one[key]} vs {many[key]})")
        else:
            agreeing += 1
    return agreeing, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the data-parallel run")
    parser.add_argument("--methods", default="full,lychee")
    parser.add_argument("--task", default="ruler", help="default: RULER's 13 subtasks")
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=16, help="per subtask (13 x 16 = 208 rows: 26 batches of 8)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default=None, help="default: the default model (smollm2-135m)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: run's default (8 on a GPU)")
    parser.add_argument("--device", default="cuda", help="cuda (one GPU per process) or cpu (gloo smoke check)")
    parser.add_argument("--target", type=float, default=1.8, help="least throughput ratio that passes")
    parser.add_argument("--out", type=Path, default=Path("runs/dp_check"))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if args.nproc < 2:
        parser.error(f"--nproc {args.nproc}: give 2 or more (the one-process run is always made)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty; pass a new folder (a rerun would only resume, timing nothing)")
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < args.nproc:
            parser.error(
                f"--nproc {args.nproc} needs {args.nproc} GPUs; this machine shows {torch.cuda.device_count()}"
            )

    one_out, many_out = args.out / "nproc-1", args.out / f"nproc-{args.nproc}"
    wall_one = launch(run_command(args, extra, one_out), 1)
    wall_many = launch(run_command(args, extra, many_out), args.nproc)
    one, many = rates(one_out), rates(many_out)
    agreeing, problems = compare(sample_results(one_out), sample_results(many_out))
    ratio = many["throughput"] / one["throughput"]
    steady_ratio = many["steady"] / one["steady"] if one["steady"] else float("nan")
    passed = not problems and ratio >= args.target

    print(f"\n{'':<26}{'1 process':>12}{f'{args.nproc} processes':>14}{'ratio':>8}")
    print(f"{'wall time, s':<26}{wall_one:>12.1f}{wall_many:>14.1f}   (samples built by the first run only)")
    print(f"{'generating time, s':<26}{one['generation_s']:>12.1f}{many['generation_s']:>14.1f}")
    print(f"{'throughput, records/s':<26}{one['throughput']:>12.2f}{many['throughput']:>14.2f}{ratio:>8.2f}")
    print(f"{'steady, records/s':<26}{one['steady']:>12.2f}{many['steady']:>14.2f}{steady_ratio:>8.2f}")
    for share in many["ranks"]:
        batches = f"{share['records']} records in {share['batches']} batches"
        print(f"  rank {share['rank']}: {batches}, {share['generation_s']} s")
    print(f"records equal: {agreeing} of {len(sample_results(one_out))} ({', '.join(SAME_FIELDS)})")
    for problem in problems[:10]:
        print(f"  {problem}")
    verdict = "PASS" if passed else "FAIL"
    print(
        f"{verdict}: records {'equal' if not problems else 'differ'}, throughput {ratio:.2f}x (target {args.target}x)"
    )

    summary = {
        "nproc": args.nproc,
        "command": run_command(args, extra, Path("<out>")),
        "wall_s": {"1": round(wall_one, 2), str(args.nproc): round(wall_many, 2)},
        "one_process": one,
        "data_parallel": many,
        "throughput_ratio": round(ratio, 3),
        "steady_ratio": round(steady_ratio, 3),
        "records_equal": agreeing,
        "differences": problems,
        "target": args.target,
        "passed": passed,
    }
    (args.out / "dp_check.json").write_text(json.dumps(summary, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
