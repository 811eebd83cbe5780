"""Result sets: every run folder and kernel-bench file under a path, as summary rows with their provenance.

Two kinds of result set exist:
- a run folder (`records.jsonl` + `manifest.json`, and one records shard per rank after a data-parallel run)
  written by `lychee-bench run` or a suite: its rows come from `records.summarize` (one per method, task,
  subtask, ctx, batch, model, metric);
- a kernel-bench file (`*.json` with `"kind": "lychee-kernel-bench"`): one row per timed configuration,
  method = the bench row's kind (`lychee_layer`, `sdpa_enable_gqa`, `step:topk`, ...), task `kernel-bench`,
  subtask `retrieval_heads=N` (or `-`), ctx = context, model = device and attention shape; metrics
  `median_ms` (and `speedup_vs_sdpa` where the bench computed it).

A run folder may also hold end-to-end latency records (`"kind": "latency"`, from `lychee-bench bench`); they
become rows with task `latency`, subtask `kv_fill=...`, metrics `decode_ms`, `attention_ms_per_layer`
(latency kind) and `speedup_vs_full` (rate kind).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lychee_bench.harness import records

KERNEL_BENCH_KIND = "lychee-kernel-bench"
KERNEL_BENCH_TASK = "kernel-bench"
KERNEL_METRICS = ("median_ms", "speedup_vs_sdpa")
LATENCY_METRICS = ("decode_ms", "attention_ms_per_layer", "speedup_vs_full")
# Tags that send a result set to the report's appendix: a knob or kernel tuning sweep, a run a later one replaces,
# a correctness or parallelism check, an ablation beside the main result. Any other tag is only shown.
APPENDIX_TAGS = frozenset({"tuning", "superseded", "check", "ablation"})


class ResultsError(ValueError):
    """A path that holds no readable results."""


@dataclass
class ResultSet:
    label: str  # short id used in tables and plots ("S1", "S2", ...)
    path: Path
    kind: str  # "run" or "kernel-bench"
    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None  # the kernel-bench file's content
    timings: list[dict[str, Any]] = field(default_factory=list)  # end-to-end latency records of a run folder

    @property
    def tags(self) -> list[str]:
        """What the run's author said the set is (`run --tag`, `bench --tag`; a kernel-bench file's `tags`)."""
        found: list[str] = []
        if self.kind == "kernel-bench":
            found += list((self.bench or {}).get("tags") or [])
        else:
            manifest = self.manifest or {}
            found += list(manifest.get("tags") or [])
            for run in manifest.get("runs") or []:
                found += list((run or {}).get("tags") or []) if isinstance(run, dict) else []
        return sorted({str(tag) for tag in found})

    @property
    def appendix(self) -> bool:
        """Whether the report puts this set in its appendix (a tuning sweep, a superseded run, a check, ...)."""
        return bool(APPENDIX_TAGS & set(self.tags))

    def provenance(self) -> dict[str, Any]:
        """Where the numbers came from, gathered from the manifest, the records and the bench file."""
        if self.kind == "kernel-bench":
            bench = self.bench or {}
            return {
                "code": bench.get("provenance", {}).get("code"),
                "packages": bench.get("provenance", {}).get("packages"),
                "device": bench.get("provenance", {}).get("device"),
                "shape": bench.get("shape"),
                "knobs": {k: bench.get(k) for k in ("programs_per_sm", "knobs", "seed") if k in bench},
                "timing": bench.get("timing"),
                "correctness": bench.get("correctness"),
            }
        runs = (self.manifest or {}).get("runs", [])
        prov: dict[str, Any] = {}
        for run in runs:  # the latest entry that says each thing wins
            for key in ("provenance", "model", "input_format", "plan", "suite", "description"):
                if key in run:
                    prov[key] = run[key]
        methods: dict[str, dict[str, Any]] = {}
        for sample in self.samples + self.timings:
            name = records.label_of(sample)
            entry = methods.setdefault(name, {"configs": [], "paths": set(), "seeds": set(), "commits": set()})
            if sample.get("method_config") not in entry["configs"]:
                entry["configs"].append(sample.get("method_config"))
            entry["paths"].add(str(sample.get("path")))
            entry["seeds"].add(str(sample.get("seed")))
            code = sample.get("code") or (sample.get("provenance") or {}).get("code") or {}
            entry["commits"].add(str(code.get("commit")))
            entry["model_fingerprint"] = sample.get("model_fingerprint") or (sample.get("model_info") or {}).get(
                "fingerprint"
            )
        prov["methods"] = {
            name: {k: (sorted(v) if isinstance(v, set) else v) for k, v in entry.items()}
            for name, entry in methods.items()
        }
        return prov


def load_results(path: Path, problems: list[str] | None = None, first_label: int = 1) -> list[ResultSet]:
    """Every result set in a file or under a folder. Raises ResultsError when there is none."""
    if not path.exists():
        raise ResultsError(
            f"{path} does not exist; give a run folder, a records .jsonl, a kernel-bench .json or a folder"
        )
    problems = problems if problems is not None else []
    sets: list[ResultSet] = []
    if path.is_file():
        if path.suffix == ".json":
            bench = _read_bench(path, problems)
            if bench is not None:
                sets.append(_bench_set(path, bench))
        else:
            sets.append(_run_set(path.parent, [path], problems))
    else:
        # Only run folders' record files (records.jsonl and a data-parallel run's rank shards, read as one run):
        # other JSONL logs (a training log) are not result records.
        folders = sorted({file.parent for file in path.rglob("records*.jsonl*") if records.is_run_file(file)})
        for folder in folders:
            sets.append(_run_set(folder, records.run_files(folder), problems))
        for file in sorted(path.rglob("*.json")):
            if file.name == records.MANIFEST_FILE:
                continue
            bench = _read_bench(file, problems)
            if bench is not None:
                sets.append(_bench_set(file, bench))
    sets = [s for s in sets if s.rows]
    if not sets:
        unreadable = f"; unreadable: {problems[0]}" if problems else ""
        if len(problems) > 1:
            unreadable += f" (and {len(problems) - 1} more)"
        raise ResultsError(
            f"{path} holds no result records (no records.jsonl with samples, no kernel-bench .json); give a folder "
            f"that `lychee-bench run`, `bench` or `suite` wrote, or its records .jsonl{unreadable}"
        )
    sets.sort(key=lambda s: str(s.path))
    for number, result_set in enumerate(sets, start=first_label):
        result_set.label = f"S{number}"
        for row in result_set.rows:
            row["source"] = result_set.label
    return sets


def _run_set(folder: Path, files: list[Path], problems: list[str]) -> ResultSet:
    bad: list[records.BadLine] = []
    found: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file in files:
            found += records.read_records(file, bad)
    problems += [str(b) for b in bad]
    manifest_path = folder / records.MANIFEST_FILE
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as error:
            problems.append(f"{manifest_path}: unreadable manifest ({error})")
    samples = list(records.iter_sample_records(found))
    timings = [r for r in found if r.get("kind") == "latency"]
    rows = records.summarize(found) + latency_rows(timings)
    return ResultSet("", folder, "run", rows, samples=samples, manifest=manifest, timings=timings)


def latency_rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from end-to-end latency records (`lychee-bench bench`): the latest per (model, method, batch, ctx)."""
    from lychee_bench.tasks.latency.plot import latest_points

    rows = []
    for record in latest_points(found):
        for metric in LATENCY_METRICS:
            value = record.get(metric)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            rows.append(
                {
                    "method": record.get("method"),
                    "task": record.get("task", "latency"),
                    "subtask": f"kv_fill={record['kv_fill']}" if record.get("kv_fill") else "-",
                    "ctx": record.get("ctx"),
                    "batch": record.get("batch"),
                    "model": record.get("model"),
                    "metric": metric,
                    "value": float(value),
                    "stderr": float("nan"),
                    "samples": record.get("decode_reps", 1),
                }
            )
    return rows


def _read_bench(file: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        problems.append(f"{file}: not JSON ({str(error)[:80]})")
        return None
    if isinstance(data, dict) and data.get("kind") == KERNEL_BENCH_KIND and isinstance(data.get("rows"), list):
        return data
    return None


def bench_model_name(bench: dict[str, Any]) -> str:
    shape = bench.get("shape", {})
    dtype = str(shape.get("dtype", "?")).replace("torch.", "")
    return (
        f"{bench.get('device_name', '?')} hq{shape.get('hq')}/hkv{shape.get('hkv')}/d{shape.get('head_dim')} "
        f"{dtype} budget {shape.get('budget_tokens')}"
    )


def _bench_set(file: Path, bench: dict[str, Any]) -> ResultSet:
    model = bench_model_name(bench)
    rows = []
    for item in bench["rows"]:
        if "context" not in item:  # the copy-bandwidth calibration row
            continue
        heads = item.get("retrieval_heads")
        for metric in KERNEL_METRICS:
            if metric not in item:
                continue
            rows.append(
                {
                    "method": item.get("kind") or _sweep_label(item),
                    "task": KERNEL_BENCH_TASK,
                    "subtask": f"retrieval_heads={heads}" if heads is not None else "-",
                    "ctx": item["context"],
                    "batch": item.get("batch"),
                    "model": model,
                    "metric": metric,
                    "value": float(item[metric]),
                    "stderr": float("nan"),
                    "samples": item.get("reps", 1),
                }
            )
    return ResultSet("", file, "kernel-bench", rows, bench=bench)


def _sweep_label(item: dict[str, Any]) -> str:
    """A knob-sweep row (``bench_lychee --sweep``) has no kind: name it by its knobs, e.g. sweep[pps=2;FUSED=0]."""
    knobs = ";".join(f"{key}={value}" for key, value in item.items() if key.isupper() or key == "pps")
    return f"sweep[{knobs}]"


def all_rows(sets: list[ResultSet]) -> list[dict[str, Any]]:
    return [row for result_set in sets for row in result_set.rows]
