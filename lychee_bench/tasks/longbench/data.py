"""Where LongBench examples come from: a folder of the official JSONL files, else the HuggingFace hub.

The folder is the unzipped official data.zip (one `<config>.jsonl` per dataset, `<dataset>_e.jsonl` for
LongBench-E), found in this order: the task's `data_dir` option, $LYCHEE_BENCH_LONGBENCH_DIR, then
`<lychee-bench cache>/longbench` when it exists; a folder may hold the files directly or in `data/` (as the zip
unpacks). Without a folder, `datasets.load_dataset("THUDM/LongBench", config, split="test")` is tried (the
package is imported only then). When neither works the error says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lychee_bench.harness.models import cache_dir

DATA_DIR_ENV = "LYCHEE_BENCH_LONGBENCH_DIR"
HUB_DATASET = "THUDM/LongBench"
DATA_ZIP_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"
FIELDS: tuple[str, ...] = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")


class LongBenchDataError(RuntimeError):
    """The examples of a LongBench config cannot be read; the message says how to provide them."""


def how_to_get_data(config: str) -> str:
    return (
        f"Download the official LongBench data.zip ({DATA_ZIP_URL}, linked from github.com/THUDM/LongBench), "
        f"unzip it and set {DATA_DIR_ENV}=DIR, where DIR holds {config}.jsonl (the zip's data/ folder, or the "
        "folder above it): one `<task>.jsonl` per dataset and `<task>_e.jsonl` for LongBench-E, one JSON object "
        f"per line with the fields {', '.join(FIELDS)}. Or, with network access, `pip install datasets` to load "
        f"{HUB_DATASET} from the HuggingFace hub."
    )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The data folder in use: the option, else $LYCHEE_BENCH_LONGBENCH_DIR, else the cache's longbench/ if any."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is not None:
        return Path(chosen).expanduser()
    default = cache_dir() / "longbench"
    return default if default.is_dir() else None


def data_file(folder: Path, config: str) -> Path | None:
    for candidate in (folder / f"{config}.jsonl", folder / "data" / f"{config}.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def missing_data(folder: Path | None, configs: list[str]) -> list[str]:
    """Reasons the examples of `configs` cannot be read (empty when they can, or when the hub is the source)."""
    if folder is None:
        if _datasets_version() is None:
            return [
                "no LongBench data: no data folder is set and the `datasets` package is not installed. "
                + how_to_get_data(configs[0])
            ]
        return []
    if not folder.is_dir():
        return [f"LongBench data folder {folder} does not exist. {how_to_get_data(configs[0])}"]
    absent = [config for config in configs if data_file(folder, config) is None]
    if absent:
        return [
            f"LongBench data folder {folder} lacks {', '.join(f'{c}.jsonl' for c in absent)}. "
            + how_to_get_data(absent[0])
        ]
    return []


def load_examples(config: str, folder: Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` examples (all when None) of a LongBench config, in file order."""
    if folder is None:
        return _load_from_hub(config, limit)
    path = data_file(folder, config) if folder.is_dir() else None
    if path is None:
        raise LongBenchDataError(
            f"{config}.jsonl is not in the LongBench data folder {folder}. {how_to_get_data(config)}"
        )
    return read_jsonl(path, limit)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Examples of an official JSONL file, each checked for the official fields."""
    examples: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise LongBenchDataError(
                    f"{path}:{number} is not JSON ({error}); re-extract it from data.zip"
                ) from error
            absent = [name for name in FIELDS if name not in example]
            if absent:
                raise LongBenchDataError(
                    f"{path}:{number} lacks the field(s) {', '.join(absent)}; a LongBench example has "
                    f"{', '.join(FIELDS)} (re-extract the file from the official data.zip)"
                )
            examples.append(example)
    return examples


def _datasets_version() -> str | None:
    try:
        return importlib.metadata.version("datasets")
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_from_hub(config: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise LongBenchDataError(
            f"no LongBench data folder is set and the `datasets` package is not installed. {how_to_get_data(config)}"
        ) from error
    try:
        try:  # LongBench is a script dataset: datasets 2.x/3.x ask for trust_remote_code
            dataset = load_dataset(HUB_DATASET, config, split="test", trust_remote_code=True)
        except TypeError:
            dataset = load_dataset(HUB_DATASET, config, split="test")
    except Exception as error:  # offline, hub refused, script datasets unsupported: all mean "use the folder"
        raise LongBenchDataError(
            f"loading {HUB_DATASET} config {config!r} from the hub failed ({type(error).__name__}: {error}). "
            f"{how_to_get_data(config)}"
        ) from error
    rows = dataset if limit is None else dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in rows]


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_source(folder: Path | None, configs: list[str]) -> dict[str, Any]:
    """What the examples are read from, for the task config: each present file's sha256 (not the folder's path,
    so moving the folder keeps run keys), or the hub."""
    if folder is None:
        return {"hub": HUB_DATASET, "datasets": _datasets_version()}
    hashes = {}
    for config in configs:
        path = data_file(folder, config) if folder.is_dir() else None
        if path is not None:
            stat = path.stat()
            hashes[config] = _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    return {"files_sha256": hashes}
