"""Where LongBench examples come from: a folder of the official JSONL files, else the HuggingFace hub.

The folder is the unzipped official data.zip (one `<config>.jsonl` per dataset, `<dataset>_e.jsonl` for
LongBench-E), found in this order: the task's `data_dir` option, $LYCHEE_BENCH_LONGBENCH_DIR, then
`<lychee-bench cache>/longbench` when it exists; a folder may hold the files directly or in `data/` (as the zip
unpacks).

Without a folder the examples come from the hub dataset THUDM/LongBench through `datasets`:
`load_dataset("THUDM/LongBench", config, split="test")` (LongBench-E: config `<dataset>_e`). That repository is
a loading-script dataset; its script reads `data/<config>.jsonl` out of the repository's own data.zip and
declares the JSONL schema unchanged (input, context, answers, length, dataset, language, all_classes, _id), so a
row of the hub dataset is a line of the file. `datasets` 4 and later refuse loading scripts; then the same
data.zip is fetched from the same repository (huggingface_hub, which `datasets` installs) and the config's file
is read straight out of it. lm-eval's own longbench tasks read another repository (Xnhyacinth/LongBench, made by
kvpress's converter): its `context` already holds the prompt template and `input` is renamed `question`, so it
is not used here. Rows from either route are checked for the official fields. When neither a folder nor the hub
works, the error says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import zipfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from lychee_bench.harness.models import cache_dir

DATA_DIR_ENV = "LYCHEE_BENCH_LONGBENCH_DIR"
HUB_DATASET = "THUDM/LongBench"
HUB_ARCHIVE = "data.zip"  # the official JSONL files, in the same hub repository
DATA_ZIP_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"
FIELDS: tuple[str, ...] = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")


class LongBenchDataError(RuntimeError):
    """The examples of a LongBench config cannot be read; the message says how to provide them."""


def how_to_get_data(config: str) -> str:
    return (
        f"Download the official LongBench data.zip ({DATA_ZIP_URL}, linked from github.com/THUDM/LongBench), "
        f"unzip it and set {DATA_DIR_ENV}=DIR (or run --task 'longbench[data_dir=DIR]'), where DIR holds "
        f"{config}.jsonl (the zip's data/ folder, or the folder above it): one `<task>.jsonl` per dataset and "
        f"`<task>_e.jsonl` for LongBench-E, one JSON object per line with the fields {', '.join(FIELDS)}. Or, with "
        f"network access and no folder set, the hub dataset {HUB_DATASET} is loaded through the `datasets` package "
        "(pip install datasets)."
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
    with path.open(encoding="utf-8") as handle:
        return _read_lines(handle, str(path), limit)


def _read_lines(lines: Iterable[str], where: str, limit: int | None) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(examples) >= limit:
            break
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise LongBenchDataError(f"{where}:{number} is not JSON ({error}); re-extract it from data.zip") from error
        absent = [name for name in FIELDS if name not in example]
        if absent:
            raise LongBenchDataError(
                f"{where}:{number} lacks the field(s) {', '.join(absent)}; a LongBench example has "
                f"{', '.join(FIELDS)} (re-extract the file from the official data.zip)"
            )
        examples.append(example)
    return examples


def examples_from_dataset(dataset: Any, config: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of the `datasets.Dataset` of a LongBench config, as plain dicts with the values a
    line of its JSONL file gives (lists stay lists, a null `all_classes` stays None); refused unless it has the
    official columns."""
    absent = [name for name in FIELDS if name not in dataset.column_names]
    if absent:
        raise LongBenchDataError(
            f"{HUB_DATASET} config {config} has no column(s) {', '.join(absent)} (its columns: "
            f"{', '.join(dataset.column_names)}); the official LongBench schema is {', '.join(FIELDS)}. "
            + how_to_get_data(config)
        )
    rows = dataset if limit is None else dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in rows]


def _datasets_version() -> str | None:
    try:
        return importlib.metadata.version("datasets")
    except importlib.metadata.PackageNotFoundError:
        return None


SCRIPT_REFUSED = "Dataset scripts are no longer supported"  # datasets >= 4 on a loading-script repository


def _load_from_hub(config: str, limit: int | None) -> list[dict[str, Any]]:
    """`datasets.load_dataset` on the hub repository; where `datasets` refuses its loading script, the config's
    file read out of the repository's data.zip. Any failure is a LongBenchDataError saying what to download."""
    try:
        import datasets
    except ImportError as error:
        raise LongBenchDataError(
            f"no LongBench data folder is set and the `datasets` package is not installed. {how_to_get_data(config)}"
        ) from error
    # datasets 2.x/3.x run the repository's loading script only when trusted; 4.x dropped the argument.
    trust = {"trust_remote_code": True} if int(datasets.__version__.split(".")[0]) < 4 else {}
    try:
        dataset = datasets.load_dataset(HUB_DATASET, config, split="test", **trust)
    except Exception as error:  # offline, hub refused, a script datasets will not run
        if SCRIPT_REFUSED not in str(error):
            raise _hub_failed(config, error) from error
        return _read_hub_archive(config, limit)
    return examples_from_dataset(dataset, config, limit)


def _read_hub_archive(config: str, limit: int | None) -> list[dict[str, Any]]:
    """The config's examples from `data/<config>.jsonl` inside the hub repository's data.zip (downloaded once into
    the HuggingFace cache)."""
    try:
        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(HUB_DATASET, HUB_ARCHIVE, repo_type="dataset")
        with zipfile.ZipFile(archive) as bundle:
            wanted = f"{config}.jsonl"
            member = next((n for n in bundle.namelist() if n == wanted or n.endswith("/" + wanted)), None)
            if member is None:
                raise FileNotFoundError(f"{HUB_ARCHIVE} holds no {config}.jsonl")
            with bundle.open(member) as raw, io.TextIOWrapper(raw, encoding="utf-8") as lines:
                return _read_lines(lines, f"{HUB_DATASET}/{HUB_ARCHIVE}:{member}", limit)
    except LongBenchDataError:
        raise
    except Exception as error:
        raise _hub_failed(config, error, f" (its {HUB_ARCHIVE}, as `datasets` refuses the loading script)") from error


def _hub_failed(config: str, error: Exception, route: str = "") -> LongBenchDataError:
    detail = str(error).splitlines()[0] if str(error) else ""
    return LongBenchDataError(
        f"no LongBench data folder is set and loading {HUB_DATASET} config {config!r} from the HuggingFace hub"
        f"{route} failed ({type(error).__name__}: {detail}). {how_to_get_data(config)}"
    )


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
