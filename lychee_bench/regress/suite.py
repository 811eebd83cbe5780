"""Fixed suites: the CPU smoke suite CI runs on every change and compares with its committed baseline.

`smoke` runs the default model (fp32, greedy, seed 42) on three RULER subtasks at 1K context for `full`,
`lychee` (its shipped, trained HardKuma roles; token granularity, the default: 128 sink + 256 recent + 128 top
tokens), `lychee[granularity=block]` (the same roles, 8 blocks of 64) and `streaming`, every sparse method at a
512-token budget (token granularity needs more than its 384-token window to select anything), then checks
the Triton LycheeDecode layer against its torch reference in interpreter mode on fixed random inputs.
Everything lands in one run folder (manifest.json + records.jsonl), so `lychee-bench compare` reads it like any
other result set.

The kernel check runs in a child process: TRITON_INTERPRET must be set before Triton compiles the kernels,
and the model run in this process may already have imported them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lychee_bench.harness import provenance, records
from lychee_bench.harness.paths import unwritable_reason
from lychee_bench.harness.runner import PlanError, RunPlan

KERNEL_TASK = "kernel-correctness"
KERNEL_METHOD = "lychee-triton"


@dataclass(frozen=True)
class KernelCase:
    """One random decode-layer problem: batch, KV heads, query heads per KV head, head dim, cache length."""

    name: str
    batch: int
    kv_heads: int
    group: int
    head_dim: int
    max_len: int
    retrieval: tuple[bool, ...]
    budget_blocks: int
    seed: int


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    plan: RunPlan
    kernel_cases: tuple[KernelCase, ...] = field(default_factory=tuple)
    kernel_tolerance: float = 2e-4  # fp32, as in tests/test_kernels_lychee.py


SMOKE = Suite(
    name="smoke",
    description=(
        "default model, fp32 CPU, seed 42; RULER niah_single_1, niah_multikey_1, vt at ctx 1024, 2 samples each; "
        "full, lychee (shipped trained roles, token granularity), lychee[granularity=block] and streaming at budget "
        "512; Triton decode layer vs reference (TRITON_INTERPRET=1)"
    ),
    plan=RunPlan(
        methods=["full", "lychee", "lychee[granularity=block]", "streaming"],
        task="ruler/niah_single_1,ruler/niah_multikey_1,ruler/vt",
        ctx=1024,
        model=None,
        samples=2,
        seed=42,
        device="cpu",
        dtype="float32",
        batch_size=1,
        method_options={"budget": "512"},
        temperature=0.0,
        top_p=1.0,
        tags=["check"],  # a CI baseline, not a result: the report's appendix
    ),
    kernel_cases=(
        KernelCase("layer0_all_retrieval", 2, 2, 4, 64, 300, (True, True), 2, 1),
        KernelCase("mixed_roles", 3, 2, 3, 64, 450, (True, False), 3, 2),
        KernelCase("sparse_only", 2, 3, 2, 64, 257, (False, False, False), 2, 3),
    ),
)

SUITES = {SMOKE.name: SMOKE}


class SuiteError(ValueError):
    """A suite that cannot run (unknown name, a kernel check that crashed)."""


class SuiteFolderError(SuiteError):
    """An --out folder the suite will not write into (it already holds a run, or is a file)."""


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; use one of {', '.join(sorted(SUITES))}")
    return SUITES[name]


RUN_FILES = (records.RECORDS_FILE, records.MANIFEST_FILE)


def default_out(name: str) -> Path:
    """A fresh folder per suite run (runs/suite-NAME/YYYYmmdd-HHMMSS): a rerun never meets an old one."""
    return Path("runs") / f"suite-{name}" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _check_fresh(out: Path) -> None:
    """A suite writes a fresh run: refuse a folder that already holds one (nothing is deleted, ever)."""
    if out.exists() and not out.is_dir():
        raise SuiteFolderError(f"--out {out} is a file; pass a folder that does not exist yet")
    if (unwritable := unwritable_reason(out, "--out")) is not None:
        raise SuiteFolderError(unwritable)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise SuiteFolderError(
            f"--out {out} already holds a run ({', '.join(held)}); the suite writes a fresh one and deletes "
            "nothing: pass another --out, or leave --out out (each run then gets its own runs/suite-NAME/<time>)"
        )


def _clear_baseline(suite: Suite, baseline: Path, log: Any) -> None:
    """Remove the run files of the suite's own previous baseline (and only those), before it is rewritten; a
    folder whose manifest is not this suite's is refused."""
    manifest = baseline / records.MANIFEST_FILE
    if not manifest.exists():
        return
    try:
        info = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteFolderError(f"{manifest} is not readable JSON ({error}); not rewriting {baseline}") from None
    runs = info.get("runs", []) if isinstance(info, dict) else []
    ours = [r for r in runs if isinstance(r, dict) and r.get("kind") == "lychee-bench-suite"]
    if not ours or any(r.get("suite") != suite.name for r in ours):
        raise SuiteFolderError(
            f"{baseline} does not hold a `{suite.name}` suite baseline (its manifest says otherwise); "
            "pass the baseline folder, e.g. results/smoke"
        )
    for name in RUN_FILES:
        if (baseline / name).exists():
            (baseline / name).unlink()
    log(f"replacing the baseline's {', '.join(RUN_FILES)} in {baseline} (`git diff {baseline}` shows the change)")


def run_suite(suite: Suite, out: Path, log: Any = print) -> Path:
    """Run a suite into a fresh run folder `out` (one that holds no run yet). Returns `out`."""
    from dataclasses import replace

    from lychee_bench.harness.runner import run as run_plan

    _check_fresh(out)
    began = time.perf_counter()
    run_plan(replace(suite.plan, out=out), log)
    model_s = time.perf_counter() - began
    if suite.kernel_cases:
        log(f"kernel correctness: {len(suite.kernel_cases)} cases, Triton interpreter ...")
        kernel_began = time.perf_counter()
        results = kernel_check_subprocess(suite)
        append_kernel_records(out, suite, results)
        failed = [r["case"] for r in results if not r["passed"]]
        log(f"kernel correctness: {'FAILED ' + ', '.join(failed) if failed else 'all passed'}")
        kernel_s = time.perf_counter() - kernel_began
    else:
        kernel_s = 0.0
    records.write_manifest(
        out,
        {
            "kind": "lychee-bench-suite",
            "suite": suite.name,
            "tags": list(suite.plan.tags),
            "description": suite.description,
            "finished": datetime.now(UTC).isoformat(),
            "seconds": {"model": round(model_s, 1), "kernels": round(kernel_s, 1)},
            "provenance": provenance.collect("cpu"),
        },
    )
    return out


def kernel_check_subprocess(suite: Suite) -> list[dict[str, Any]]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = (
        "import json; from lychee_bench.regress.suite import check_kernels, get_suite; "
        f"print(json.dumps(check_kernels(get_suite({suite.name!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SuiteError(f"the kernel check crashed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_kernels(suite: Suite) -> list[dict[str, Any]]:
    """Triton layer vs torch reference on each case. Needs TRITON_INTERPRET=1 on a machine without a GPU."""
    import torch

    from lychee_bench.kernels import reference as ref

    try:
        from lychee_bench.kernels import lychee_triton
    except ImportError as error:
        return [
            {"case": c.name, "passed": False, "max_abs_error": None, "error": str(error)} for c in suite.kernel_cases
        ]
    results = []
    for case in suite.kernel_cases:
        generator = torch.Generator().manual_seed(case.seed)
        hq = case.kv_heads * case.group
        q = torch.randn(case.batch, hq, case.head_dim, generator=generator)
        k = torch.randn(case.batch, case.kv_heads, case.max_len, case.head_dim, generator=generator)
        v = torch.randn(case.batch, case.kv_heads, case.max_len, case.head_dim, generator=generator)
        lengths = torch.randint(1, case.max_len + 1, (case.batch,), generator=generator)
        lengths[0] = case.max_len
        roles = torch.tensor(case.retrieval)
        slots = None
        if not all(case.retrieval):
            blocks = -(-case.max_len // ref.BLOCK_SIZE)
            valid = torch.arange(blocks)[None, :] < ((lengths + ref.BLOCK_SIZE - 1) // ref.BLOCK_SIZE)[:, None]
            scores = torch.randn(case.batch, case.kv_heads, blocks, generator=generator)
            slots = ref.select_top_blocks(scores.masked_fill(~valid[:, None, :], float("-inf")), case.budget_blocks)
        scale = case.head_dim**-0.5
        expected, expected_slots = ref.lychee_decode_layer_reference(
            q, k, v, lengths, roles, slots, case.budget_blocks, scale
        )
        try:
            out, new_slots = lychee_triton.lychee_decode_layer(
                q, k, v, lengths, roles, slots, case.budget_blocks, scale
            )
        except Exception as error:  # a crashing kernel is a failed check, recorded, not a crashed suite
            results.append({"case": case.name, "passed": False, "max_abs_error": None, "error": repr(error)[:300]})
            continue
        error = (out.float() - expected.float()).abs().max().item()
        mismatches = ref.block_set_mismatches(new_slots, expected_slots, ref.block_max_scores(q, k, lengths))
        passed = bool(error <= suite.kernel_tolerance and not torch.isnan(out).any() and not mismatches)
        results.append(
            {
                "case": case.name,
                "passed": passed,
                "max_abs_error": error,
                "slot_mismatches": mismatches[:5],
                "batch": case.batch,
                "max_len": case.max_len,
            }
        )
    return results


def append_kernel_records(out: Path, suite: Suite, results: list[dict[str, Any]]) -> None:
    """Two sample records per case: `passed` (100 or 0, so it reads like a score) and `max_abs_error`."""
    writer = records.RecordWriter(out)
    prov = provenance.collect("cpu")
    by_name = {case.name: case for case in suite.kernel_cases}
    for result in results:
        case = by_name[result["case"]]
        common = {
            "kind": "sample",
            "method": KERNEL_METHOD,
            "method_config": {"name": KERNEL_METHOD, "path": "triton-interpreter", "tolerance": suite.kernel_tolerance},
            "path": "triton-interpreter",
            "task": KERNEL_TASK,
            "subtask": case.name,
            "ctx": case.max_len,
            "batch": case.batch,
            "model": None,
            "seed": case.seed,
            "index": 0,
            "case": {k: v for k, v in vars(case).items()},
            "detail": result,
            "code": prov["code"],
            "time": datetime.now(UTC).isoformat(),
        }
        for metric, value in (
            ("passed", 100.0 if result["passed"] else 0.0),
            ("max_abs_error", result["max_abs_error"]),
        ):
            if value is None:
                continue
            run_key = records.config_hash({"suite": suite.name, "case": case.name, "metric": metric})
            writer.append({**common, "run_key": run_key, "metric": metric, "value": value})


def update_baseline(suite: Suite, baseline: Path, log: Any = print) -> Path:
    """Rerun the suite straight into the baseline folder (so its records name their real path).

    Only the suite's own run files of the previous baseline are replaced. A run that fails half-way leaves a
    partial folder; `git checkout -- <baseline>` restores the committed one.
    """
    _clear_baseline(suite, baseline, log)
    run_suite(suite, baseline, log)
    (baseline / "README.md").write_text(
        f"# The `{suite.name}` suite's baseline\n\n{suite.description}.\n\n"
        f"CI runs `lychee-bench suite {suite.name} --compare {baseline}` and fails on a regression (see "
        f"`lychee_bench/regress/compare.py` for the rules). After an intended change of results, rewrite this "
        f"folder with\n\n    lychee-bench suite {suite.name} --update-baseline\n\nand commit it with the change "
        f"that explains it. Do not edit these files by hand.\n"
    )
    log(f"baseline rewritten: {baseline} (review with `git diff {baseline}`, then commit it)")
    return baseline


def suite_command(
    name: str,
    out: Path | None,
    compare_with: Path | None,
    update: bool,
    tol: list[str],
    z: float,
    echo: Any = print,
    echo_err: Any = print,
) -> int:
    """What `lychee-bench suite NAME` does; returns the exit code (0 pass, 1 regression, 2 bad input)."""
    from lychee_bench.regress.compare import EXIT_BAD_INPUT, compare_command

    try:
        suite = get_suite(name)
    except SuiteError as error:
        echo_err(f"error: {error}")
        return EXIT_BAD_INPUT
    if update and compare_with is not None:
        echo_err("error: give --update-baseline or --compare, not both (update first, then compare)")
        return EXIT_BAD_INPUT
    if tol and compare_with is None:
        echo_err(f"error: --tol {' '.join(tol)} only applies with --compare BASELINE; add --compare or drop --tol")
        return EXIT_BAD_INPUT
    if compare_with is not None and not compare_with.exists():
        echo_err(
            f"error: baseline {compare_with} does not exist; "
            f"create it with `lychee-bench suite {name} --update-baseline`"
        )
        return EXIT_BAD_INPUT
    if compare_with is not None and (problem := _baseline_problem(compare_with, tol, name)) is not None:
        echo_err(f"error: {problem}")  # found before the suite runs, not minutes later
        return EXIT_BAD_INPUT
    began = time.perf_counter()
    try:
        if update:
            update_baseline(suite, out or Path("results") / suite.name, log=echo_err)
            echo_err(f"suite {name}: {time.perf_counter() - began:.0f} s")
            return 0
        folder = out or default_out(name)
        run_suite(suite, folder, log=echo_err)  # refuses a folder that holds a run before anything runs
    except (SuiteFolderError, PlanError) as error:
        echo_err(f"error: {error}")
        return EXIT_BAD_INPUT
    echo_err(f"suite {name}: {time.perf_counter() - began:.0f} s; results in {folder}")
    if compare_with is None:
        from lychee_bench.harness.tables import score_table
        from lychee_bench.regress.sources import all_rows, load_results

        echo(score_table(all_rows(load_results(folder))))
        return 0
    changed, total = changed_predictions(compare_with, folder)
    if changed:
        echo_err(f"note: {changed} of {total} sample predictions differ from the baseline (scores judged below)")
    return compare_command(compare_with, folder, tol, z, echo=echo, echo_err=echo_err, changes_only=False)


def _baseline_problem(baseline: Path, tol: list[str], name: str) -> str | None:
    """Why the baseline (results) or the --tol values (their form, their names) cannot serve the comparison after
    the run, or None."""
    from lychee_bench.regress.compare import check_tolerance_names, parse_tolerances
    from lychee_bench.regress.sources import ResultsError, all_rows, load_results

    try:
        tolerances = parse_tolerances(tol)
        rows = all_rows(load_results(baseline))
        check_tolerance_names(tolerances, {str(row.get("metric")) for row in rows})
    except ResultsError as error:
        return f"baseline {error}; compare with the suite's baseline (results/{name}) or another suite run"
    except ValueError as error:
        return str(error)
    return None


def changed_predictions(base: Path, new: Path) -> tuple[int, int]:
    """Paired check for deterministic suites: how many (method, subtask, index) samples now predict otherwise."""
    import warnings

    def predictions(path: Path) -> dict[tuple, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = records.read_records(path)
        return {
            (records.label_of(r), r.get("task"), r.get("subtask"), r.get("index")): r.get("prediction")
            for r in records.iter_sample_records(found)
            if "prediction" in r
        }

    old, fresh = predictions(base), predictions(new)
    shared = old.keys() & fresh.keys()
    return sum(1 for key in shared if old[key] != fresh[key]), len(shared)
