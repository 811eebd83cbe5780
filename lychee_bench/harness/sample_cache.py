"""Generated samples are cached on disk, keyed by everything that determines them.

Key: task config (generator version, asset hashes), subtask, context, seed, sample count, and the tokenizer +
input-format fingerprint. The folder's manifest.json lists each cached file with that key's contents, so a
cached file is never found by guessing a path.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.harness.models import cache_dir
from lychee_bench.harness.records import config_hash
from lychee_bench.harness.task import Sample, Task

CACHE_FORMAT = 1


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The cache folder's manifest; an unreadable one counts as empty (its entries are rebuilt), with a warning."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
        return manifest
    except (OSError, UnicodeDecodeError, ValueError) as error:
        warnings.warn(
            f"sample cache manifest {path} is unreadable ({error}); rebuilding the samples it listed", stacklevel=3
        )
        return {}


def _read_cached(path: Path) -> list[Sample] | None:
    """The samples of a cached file, or None when it is unreadable (then they are rebuilt)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Sample(**json.loads(line)) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        warnings.warn(f"cached samples {path} are unreadable ({error}); rebuilding them", stacklevel=3)
        return None


def cached_samples(
    task: Task, subtask: str, ctx: int, num_samples: int, seed: int, formatter: InputFormatter
) -> list[Sample]:
    key_fields = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "task_config": task.config(),
        "subtask": subtask,
        "ctx": ctx,
        "seed": seed,
        "samples": num_samples,
        "input_format": formatter.fingerprint(),
    }
    key = config_hash(key_fields)
    folder = cache_dir() / "samples" / task.name
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    entry = _read_manifest(manifest_path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("file"), str) and (folder / entry["file"]).is_file():
        cached = _read_cached(folder / entry["file"])
        if cached:
            return cached

    samples = task.build_samples(subtask, ctx, num_samples, seed, formatter.count_tokens, formatter.tokenizer)
    file_name = f"{subtask}-{ctx}-{key}.jsonl"
    _write_atomic(folder / file_name, "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples))
    manifest = _read_manifest(manifest_path)
    manifest[key] = {"file": file_name, **key_fields}
    _write_atomic(manifest_path, json.dumps(manifest, indent=1, default=str))
    return samples
