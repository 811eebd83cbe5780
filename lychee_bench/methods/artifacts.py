"""Kascade anchor layers + head map, and TidalDecode's re-selection layer, as small versioned, checksummed files.

Kascade file (JSON, `format: lychee-bench/kascade-anchors`, version 1):
    model:       {name, fingerprint, num_layers, num_kv_heads}
    anchors:     sorted anchor layers, layer 0 first
    head_map:    [num_layers][num_kv_heads] -> the KV head of the governing anchor layer whose set a head reuses
                 (anchor layers map every head to itself)
    calibration: how the file was made (free-form provenance)
    sha256:      checksum of the canonical JSON of {num_layers, num_kv_heads, anchors, head_map}
TidalDecode file (`format: lychee-bench/tidal-reselect`, version 1): model, selection_layer, reselect_layer,
calibration, and sha256 of {num_layers, num_kv_heads, selection_layer, reselect_layer}.
Shipped files live in lychee_bench/artifacts/<kind>/ and are loaded by name (a model's own file by its name).
`checksum` and `shipped_path` serve the head-roles files (methods/roles.py) too.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KASCADE_FORMAT = "lychee-bench/kascade-anchors"
TIDAL_FORMAT = "lychee-bench/tidal-reselect"
VERSION = 1


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message says what to do."""


def checksum(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def shipped_path(kind: str, name: str) -> Path | None:
    """The shipped artifact `name` of `kind` ("kascade", "tidal"), if there is one."""
    if not name or "/" in name or "\\" in name:
        return None
    candidate = resources.files("lychee_bench") / "artifacts" / kind / f"{name}.json"
    return Path(str(candidate)) if candidate.is_file() else None


def shipped_names(kind: str) -> list[str]:
    folder = resources.files("lychee_bench") / "artifacts" / kind
    if not folder.is_dir():
        return []
    return sorted(item.name[: -len(".json")] for item in folder.iterdir() if item.name.endswith(".json"))


def read_artifact(
    path: Path, fmt: str, max_version: int = VERSION, error: type[ValueError] = ArtifactError
) -> dict[str, Any]:
    """The JSON object of an artifact file of format `fmt` (roles, Kascade anchors, TidalDecode layers), checked
    for its format and a version this code reads; anything else raises `error` naming the file and the fix."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as problem:
        raise error(f"cannot read artifact {path}: {problem}") from problem
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not a {fmt} object; regenerate it")
    if data.get("format") != fmt or not isinstance(data.get("version"), int):
        raise error(f"{path} is not a {fmt} file (its `format` and `version` say otherwise); regenerate it")
    if data["version"] > max_version:
        raise error(f"{path} is a version-{data['version']} {fmt} file; this lychee-bench reads 1..{max_version}")
    return data


def _model_block(model: dict[str, Any], num_layers: int, num_kv_heads: int) -> dict[str, Any]:
    return {**model, "num_layers": num_layers, "num_kv_heads": num_kv_heads}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1)
    # One line per list of numbers (a head-map row), so the file reads as a table.
    text = re.sub(r"\[\s*(-?[\d.]+(?:,\s*-?[\d.]+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m[1]) + "]", text)
    path.write_text(text + "\n")
    return path


# --- Kascade ---


@dataclass
class KascadeAnchors:
    anchors: list[int]
    head_map: list[list[int]]  # [num_layers][num_kv_heads]
    source: str  # what the user asked for (a shipped name or a file)
    checksum: str
    info: dict[str, Any] = field(default_factory=dict)  # model block and calibration provenance

    @property
    def num_layers(self) -> int:
        return len(self.head_map)

    @property
    def num_kv_heads(self) -> int:
        return len(self.head_map[0])

    def governing_anchor(self, layer: int) -> int:
        return governing_anchor(self.anchors, layer)

    def describe(self) -> dict[str, Any]:
        calibration = self.info.get("calibration", {})
        return {
            "source": self.source,
            "sha256": self.checksum,
            "anchors": list(self.anchors),
            "head_map_origin": calibration.get("head_map", calibration.get("method", "unknown")),
        }


def governing_anchor(anchors: list[int], layer: int) -> int:
    """The most recent anchor layer at or before `layer`."""
    return max(a for a in anchors if a <= layer)


def kascade_content(num_layers: int, num_kv_heads: int, anchors: list[int], head_map: list[list[int]]) -> dict:
    return {"num_layers": num_layers, "num_kv_heads": num_kv_heads, "anchors": anchors, "head_map": head_map}


def validate_kascade(anchors: list[int], head_map: list[list[int]], num_layers: int, num_kv_heads: int) -> None:
    """Raise ArtifactError unless the anchors and head map describe a usable Kascade plan."""
    if not anchors or anchors[0] != 0 or sorted(set(anchors)) != list(anchors):
        raise ArtifactError(f"anchors {anchors} must be sorted, distinct and start with layer 0")
    if anchors[-1] >= num_layers:
        raise ArtifactError(f"anchor layer {anchors[-1]} is past the last layer ({num_layers - 1})")
    if len(head_map) != num_layers or any(len(row) != num_kv_heads for row in head_map):
        raise ArtifactError(f"head_map must be {num_layers} rows of {num_kv_heads} KV-head indices")
    for layer, row in enumerate(head_map):
        if any(not isinstance(h, int) or not 0 <= h < num_kv_heads for h in row):
            raise ArtifactError(f"head_map row {layer} {row} has entries outside 0..{num_kv_heads - 1}")
        if layer in anchors and row != list(range(num_kv_heads)):
            raise ArtifactError(f"head_map row {layer} is an anchor layer's and must map each head to itself")


def kascade_to_json(
    anchors: list[int], head_map: list[list[int]], model: dict[str, Any], calibration: dict[str, Any]
) -> dict[str, Any]:
    num_layers, num_kv_heads = len(head_map), len(head_map[0])
    validate_kascade(anchors, head_map, num_layers, num_kv_heads)
    return {
        "format": KASCADE_FORMAT,
        "version": VERSION,
        "model": _model_block(model, num_layers, num_kv_heads),
        "anchors": list(anchors),
        "head_map": [list(row) for row in head_map],
        "calibration": calibration,
        "sha256": checksum(kascade_content(num_layers, num_kv_heads, list(anchors), head_map)),
    }


def load_kascade_file(path: Path, source: str) -> KascadeAnchors:
    data = read_artifact(path, KASCADE_FORMAT)
    try:
        num_layers, num_kv_heads = data["model"]["num_layers"], data["model"]["num_kv_heads"]
        anchors, head_map = data["anchors"], data["head_map"]
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{path} lacks {error}; regenerate it with `lychee-bench calibrate`") from error
    expected = checksum(kascade_content(num_layers, num_kv_heads, anchors, head_map))
    if data.get("sha256") != expected:
        raise ArtifactError(f"Kascade artifact {path} fails its checksum (edited or corrupt); regenerate it")
    validate_kascade(anchors, head_map, num_layers, num_kv_heads)
    info = {key: value for key, value in data.items() if key not in ("anchors", "head_map")}
    return KascadeAnchors(list(anchors), [list(row) for row in head_map], source, expected, info)


def resolve_kascade(spec: str | None, num_layers: int, num_kv_heads: int, model_name: str) -> KascadeAnchors:
    """`spec`: None (the model's shipped artifact, by name), a shipped name (presets included) or a file path."""
    model_key = Path(model_name).name
    names = ", ".join(shipped_names("kascade")) or "none"
    if spec is None:
        path = shipped_path("kascade", model_key)
        if path is None:
            raise ArtifactError(
                f"no Kascade anchor layers ship for model {model_name!r}. Calibrate them: "
                f"`lychee-bench calibrate --method kascade --model {model_name or 'M'}`, then give "
                f"-o anchors=<file>; or name a shipped artifact (-o anchors=NAME, shipped: {names})."
            )
        anchors = load_kascade_file(path, f"shipped:{model_key}")
    elif (path := shipped_path("kascade", spec)) is not None:
        anchors = load_kascade_file(path, f"shipped:{spec}")
    elif Path(spec).expanduser().is_file():
        anchors = load_kascade_file(Path(spec).expanduser(), str(Path(spec).expanduser().resolve()))
    else:
        raise ArtifactError(
            f"Kascade anchors {spec!r} is neither a shipped name ({names}) nor an existing file; "
            f"make one with `lychee-bench calibrate --method kascade --model M --out FILE`"
        )
    if (anchors.num_layers, anchors.num_kv_heads) != (num_layers, num_kv_heads):
        raise ArtifactError(
            f"Kascade anchors {anchors.source} are for ({anchors.num_layers}, {anchors.num_kv_heads}) (layers, KV "
            f"heads) but the model has ({num_layers}, {num_kv_heads}); calibrate this model with "
            f"`lychee-bench calibrate --method kascade --model M`"
        )
    return anchors


# --- TidalDecode ---


@dataclass
class TidalReselect:
    selection_layer: int
    reselect_layer: int
    num_layers: int
    source: str
    checksum: str
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.checksum, "reselect_layer": self.reselect_layer}


def tidal_content(num_layers: int, num_kv_heads: int, selection_layer: int, reselect_layer: int) -> dict:
    return {
        "num_layers": num_layers,
        "num_kv_heads": num_kv_heads,
        "selection_layer": selection_layer,
        "reselect_layer": reselect_layer,
    }


def tidal_to_json(
    selection_layer: int,
    reselect_layer: int,
    num_layers: int,
    num_kv_heads: int,
    model: dict[str, Any],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    if not selection_layer < reselect_layer < num_layers:
        raise ArtifactError(
            f"re-selection layer {reselect_layer} must lie after selection layer {selection_layer} "
            f"and before {num_layers}"
        )
    return {
        "format": TIDAL_FORMAT,
        "version": VERSION,
        "model": _model_block(model, num_layers, num_kv_heads),
        "selection_layer": selection_layer,
        "reselect_layer": reselect_layer,
        "calibration": calibration,
        "sha256": checksum(tidal_content(num_layers, num_kv_heads, selection_layer, reselect_layer)),
    }


def load_tidal_file(path: Path, source: str) -> TidalReselect:
    data = read_artifact(path, TIDAL_FORMAT)
    try:
        num_layers, num_kv_heads = data["model"]["num_layers"], data["model"]["num_kv_heads"]
        selection, reselect = data["selection_layer"], data["reselect_layer"]
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{path} lacks {error}; regenerate it with `lychee-bench calibrate`") from error
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (num_layers, num_kv_heads, selection, reselect)):
        raise ArtifactError(f"{path}: layer counts and layer indices must be integers; regenerate it")
    expected = checksum(tidal_content(num_layers, num_kv_heads, selection, reselect))
    if data.get("sha256") != expected:
        raise ArtifactError(f"TidalDecode artifact {path} fails its checksum (edited or corrupt); regenerate it")
    if not 0 <= selection < reselect < num_layers:
        raise ArtifactError(
            f"{path}: re-selection layer {reselect} must lie after selection layer {selection} and before "
            f"{num_layers}; regenerate it with `lychee-bench calibrate --method tidal`"
        )
    info = {key: value for key, value in data.items() if key not in ("selection_layer", "reselect_layer")}
    return TidalReselect(selection, reselect, num_layers, source, expected, info)


def shipped_tidal(model_name: str) -> TidalReselect | None:
    """The shipped re-selection layer for a model (by its name), or None."""
    name = Path(model_name).name
    path = shipped_path("tidal", name)
    return load_tidal_file(path, f"shipped:{name}") if path is not None else None
