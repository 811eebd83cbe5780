"""The result store: append-only, schema-versioned JSONL, one record per sample plus summaries.

A run folder holds `manifest.json` (what the folder is: schema, plan, provenance) and `records.jsonl`. Each
record is written with one `write` on an O_APPEND descriptor and fsync'd, so a crash can at worst leave one
partial last line; readers report any unreadable line with its number and use all the others, and a
resumed run skips every sample whose record is already there.

A data-parallel run (torchrun, several ranks) writes one shard per rank beside it,
`records.rank-<r>-of-<n>.jsonl`, and its summary into `records.jsonl`. `read_run` reads the folder's
records.jsonl and every shard, of any world size, as one run, in a fixed order (records.jsonl, then the shards
by world size and rank), so a sample recorded twice resolves the same way every time.

A finished run committed as a result may keep its records gzip-compressed, `records.jsonl.gz` and
`records.rank-<r>-of-<n>.jsonl.gz` (the same lines; `gzip -d` gives the plain files back): every reader takes them
as the run's records files, each compressed file read just before its plain namesake would be.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"
ARCHIVED_FILE = "records.jsonl.gz"  # a committed run's records, compressed (read only)
MANIFEST_FILE = "manifest.json"
SHARD_FILE = re.compile(r"records\.rank-(?P<rank>\d+)-of-(?P<world>\d+)\.jsonl(\.gz)?")


def shard_file(rank: int, world_size: int) -> str:
    """The records file of one rank of a data-parallel launch."""
    return f"records.rank-{rank}-of-{world_size}.jsonl"


def _file_order(path: Path) -> tuple:
    """records.jsonl(.gz), then shards by (world size, rank), then any other file by name; per folder; each
    compressed file before its plain namesake."""
    shard = SHARD_FILE.fullmatch(path.name)
    plain = 0 if path.name.endswith(".gz") else 1  # a compressed file just before its plain namesake
    if path.name in (ARCHIVED_FILE, RECORDS_FILE):
        rank = (0, 0, 0, plain, "")
    elif shard:
        rank = (1, int(shard["world"]), int(shard["rank"]), plain, "")
    else:
        rank = (2, 0, 0, plain, path.name)
    return (str(path.parent), *rank)


def run_files(folder: Path) -> list[Path]:
    """The records files of one run folder (records.jsonl and every rank's shard) in reading order."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and is_run_file(p)]
    return sorted(found, key=_file_order)


def is_run_file(path: Path) -> bool:
    return path.name in (RECORDS_FILE, ARCHIVED_FILE) or SHARD_FILE.fullmatch(path.name) is not None


def read_run(folder: Path, problems: list[BadLine] | None = None) -> list[dict[str, Any]]:
    """Every record of one run folder: records.jsonl and all shards, read as one run (see the module note)."""
    found: list[dict[str, Any]] = []
    for file in run_files(folder):
        found += read_records(file, problems)
    return found


def config_hash(value: Any) -> str:
    """Stable short hash of a JSON-able value (dict key order does not matter)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class BadLine:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: unreadable record skipped ({self.reason})"


def open_text(file: Path) -> IO[str]:
    """A text file for reading, gzip-compressed where its name ends in .gz (committed records and logs)."""
    if file.name.endswith(".gz"):
        return gzip.open(file, "rt", encoding="utf-8", errors="replace")
    return open(file, encoding="utf-8", errors="replace")


def read_records(path: Path, problems: list[BadLine] | None = None) -> list[dict[str, Any]]:
    """All records of a file, or of every records file under a folder. Bad lines are reported, not fatal."""
    if path.is_file():
        files = [path]
    else:
        files = sorted([*path.rglob("*.jsonl"), *path.rglob("records*.jsonl.gz")], key=_file_order)
    records: list[dict[str, Any]] = []
    for file in files:
        with open_text(file) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "kind" not in record:
                        raise ValueError("not a lychee-bench record")
                except ValueError as error:
                    bad = BadLine(file, number, str(error)[:80])
                    if problems is not None:
                        problems.append(bad)
                    warnings.warn(str(bad), stacklevel=2)
                    continue
                if record.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
                    bad = BadLine(file, number, f"schema {record['schema']} is newer than {SCHEMA_VERSION}")
                    if problems is not None:
                        problems.append(bad)
                    warnings.warn(str(bad) + "; upgrade lychee-bench", stacklevel=2)
                    continue
                records.append(record)
    return records


class RecordWriter:
    """Appends records atomically to a run folder's records.jsonl (or to one rank's shard: `file_name`)."""

    def __init__(self, folder: Path, file_name: str = RECORDS_FILE):
        self.folder = folder
        self.path = folder / file_name
        folder.mkdir(parents=True, exist_ok=True)
        self._repair_partial_tail()

    def _repair_partial_tail(self) -> None:
        # A crash mid-write leaves a line without "\n"; start a fresh line so the next record stays readable.
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    self._write_bytes(b"\n")

    def _write_bytes(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, record: dict[str, Any]) -> None:
        record = {"schema": SCHEMA_VERSION, **record}
        self._write_bytes((json.dumps(record, ensure_ascii=False, default=str) + "\n").encode())


def repair_tails(folder: Path) -> None:
    """Ends every records file of a run folder with a newline, so that a rank killed mid-write (whose shard a
    launch of another world size never reopens) leaves one unreadable line, not one glued to the next record.
    Call it while holding the folder's lock."""
    for file in run_files(folder):
        RecordWriter(folder, file.name)


class NewSamples:
    """Counts the sample records the run folder's files gained since this was made (rank 0's progress bar over
    every rank's shard). Reads only what was appended, and only whole lines."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.offsets = {file: file.stat().st_size for file in run_files(folder)}

    def count(self) -> int:
        found = 0
        for file in run_files(self.folder):
            start = self.offsets.get(file, 0)
            with open(file, "rb") as handle:
                handle.seek(start)
                data = handle.read()
            whole = data[: data.rfind(b"\n") + 1]
            self.offsets[file] = start + len(whole)
            for line in whole.splitlines():
                try:
                    found += json.loads(line).get("kind") == "sample"
                except (ValueError, AttributeError):
                    continue
        return found


class RunFolderError(ValueError):
    """A run folder that cannot take this run (another configuration's records, a busy or unreadable folder)."""


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest.json (None when there is none); an unreadable one is a RunFolderError."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("runs", []), list):
            raise ValueError("not a lychee-bench manifest (an object with a list of runs)")
        return manifest
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunFolderError(
            f"{path} is unreadable ({error}), so what its records were run with is unknown; pass another --out "
            f"(nothing in {folder} was changed)"
        ) from None


def identity_differences(manifest: dict[str, Any] | None, identity: dict[str, Any]) -> list[str]:
    """What differs between a run's identity (model, input format, sampling, task settings: what must agree for
    records to share a folder) and that of the runs already in the folder; empty when they agree. Runs written
    before identities were recorded are not compared."""
    runs = (manifest or {}).get("runs", [])
    recorded = [run["identity"] for run in runs if isinstance(run, dict) and "identity" in run]
    if not recorded:
        return []
    before = recorded[-1]
    differences = []
    for part in sorted(identity.keys() | before.keys()):
        old, new = before.get(part), identity.get(part)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(old.keys() | new.keys()):
                if old.get(key) != new.get(key):
                    differences.append(f"{part}.{key}: {old.get(key)!r} in the folder, {new.get(key)!r} now")
        else:
            differences.append(f"{part}: {old!r} in the folder, {new!r} now")
    return differences


class FolderLock:
    """An exclusive lock on a run folder while a process writes it (`.lock`, flock): a second process is refused;
    the operating system releases the lock of a process that dies, so a crashed run never leaves it stuck."""

    def __init__(self, folder: Path, holder: str = ""):
        self.folder = folder
        self.holder = holder  # said to a refused writer after the pid, e.g. "rank 0 of a 2-process torchrun launch"
        self.handle: Any = None

    def __enter__(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".lock", "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(
                f"{self.folder} is being written by {holder}; wait for it to finish or pass another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}{f' ({self.holder})' if self.holder else ''}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
            self.handle = None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically; keep the history of plans that wrote into this folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_FILE
    previous = read_manifest(folder) or {}
    history = previous.get("runs", [])
    data = {"schema": SCHEMA_VERSION, "kind": "lychee-bench-run", "runs": [*history, manifest]}
    if previous.get("tags"):  # tags written by hand on the folder (the report's appendix reads them) stay
        data["tags"] = previous["tags"]
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(data, indent=2, default=str))
    os.replace(staging, path)


def sample_key(record: dict[str, Any]) -> tuple:
    """What makes two sample records the same piece of work (for resuming)."""
    return (record.get("run_key"), record.get("subtask"), record.get("index"))


def done_keys(records: Iterable[dict[str, Any]]) -> set[tuple]:
    return {sample_key(r) for r in records if r.get("kind") == "sample"}


def label_of(record: dict[str, Any]) -> str:
    """The label of the method instance a record belongs to (`name` or `name[key=value;...]`); records written
    before labels existed have the method name."""
    return record.get("label") or record.get("method")


# In summary rows (and so in tables and `compare`), `method` holds the method's label.
GROUP_FIELDS = ("method", "task", "subtask", "ctx", "batch", "model", "metric")


def is_number(value: Any) -> bool:
    """A real number (not a bool, not NaN): what a table cell, a figure or a headline cell can show."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method label, task, subtask, ctx, batch, model, metric): mean, standard error, count.

    Rows are built from sample records (the truth), using the latest record when a sample appears twice.
    """
    latest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == "sample":
            latest[sample_key(record)] = record
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in latest.values():
        key = tuple(label_of(record) if f == "method" else record.get(f) for f in GROUP_FIELDS)
        groups.setdefault(key, []).append(record)
    rows = []
    for key, items in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        values = [float(item["value"]) for item in items]
        rows.append({**dict(zip(GROUP_FIELDS, key, strict=True)), **_stats(values), "samples": len(values)})
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return {"value": mean, "stderr": float("nan")}
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return {"value": mean, "stderr": math.sqrt(variance / count)}


def average_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, task, ctx, batch, model, metric-family): the unweighted mean over subtasks."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["task"], row["ctx"], row.get("batch"), row["model"]), []).append(row)
    averages = []
    for (method, task, ctx, batch, model), items in groups.items():
        if len(items) < 2:
            continue
        values = [item["value"] for item in items]
        errors = [item["stderr"] for item in items]
        stderr = (
            math.sqrt(sum(e * e for e in errors)) / len(errors) if not any(map(math.isnan, errors)) else float("nan")
        )
        averages.append(
            {
                "method": method,
                "task": task,
                "subtask": "average",
                "ctx": ctx,
                "batch": batch,
                "model": model,
                "metric": "mean of subtasks",
                "value": sum(values) / len(values),
                "stderr": stderr,
                "samples": sum(item["samples"] for item in items),
            }
        )
    return averages


def iter_sample_records(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (r for r in records if r.get("kind") == "sample")
