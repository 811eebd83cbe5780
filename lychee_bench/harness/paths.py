"""Where a command will write (--out, --html): checked before any work starts, so a path that cannot be written
costs nothing, writes nothing and is named with the fix."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable_reason(path: Path | str, flag: str, kind: str = "folder") -> str | None:
    """Why `path` (given as option `flag`) cannot become a `kind` ("folder" or "file"), or None when it can (as far
    as can be told without writing: an existing folder of the right kind, or a path under folders)."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        return f"{flag} {path} is a file; pass a folder (a new one, or one this command wrote before)"
    if kind == "file" and path.is_dir():
        return f"{flag} {path} is a folder; pass a file path (e.g. {path / 'out.json'})"
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        return f"{flag} {path} cannot be created: {blocking} is a file; pass another path"
    existing = path if path.exists() else next((parent for parent in path.parents if parent.exists()), None)
    mode = os.W_OK | (os.X_OK if existing is not None and existing.is_dir() else 0)  # a folder must be enterable
    if existing is not None and not os.access(existing, mode):
        return f"{flag} {path} cannot be written: {existing} is not writable; pass a path in a folder you can write"
    return None
