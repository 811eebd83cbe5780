"""Where a number came from: code version, package versions, device."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("lychee-bench", "torch", "transformers", "triton", "tokenizers", "numpy", "gguf")


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@functools.cache
def code_version() -> dict[str, Any]:
    """The git commit of the lychee-bench source in use, and whether it had uncommitted changes.

    A copied tree (e.g. on a remote GPU machine, where git may be missing or may describe another commit than
    the files) takes the commit its launcher states in LYCHEE_BENCH_COMMIT, recorded as such."""
    if os.environ.get("LYCHEE_BENCH_COMMIT"):
        return {"commit": os.environ["LYCHEE_BENCH_COMMIT"], "dirty": None, "source": "LYCHEE_BENCH_COMMIT"}
    return _git_version(Path(__file__).resolve().parents[2])


def _git_version(root: Path) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "lychee_bench"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def device_description(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def collect(device: str) -> dict[str, Any]:
    return {"code": code_version(), "packages": package_versions(), "device": device_description(device)}
