"""Kascade anchor layers + head map, and TidalDecode's re-selection layer, as small versioned, sealed files.

Kascade file (JSON, `format: lychee-bench/kascade-anchors`, version 2):
    model:       the model it was made for: {name, fingerprint, model_type, num_layers, num_heads, num_kv_heads}
    scope:       "model" (calibrated on that model's weights: used for that model only, by name) or "shape" (a
                 published preset: used for any model of the same architecture shape, see below)
    anchors:     sorted anchor layers, layer 0 first
    head_map:    [num_layers][num_kv_heads] -> the KV head of the governing anchor layer whose set a head reuses
                 (anchor layers map every head to itself)
    calibration: how the file was made (free-form provenance)
    sha256:      seal: checksum of the canonical JSON of {model identity, scope, anchors, head_map}, the model
                 identity being the `model` block's name, fingerprint, model_type and layer and head counts
TidalDecode file (`format: lychee-bench/tidal-reselect`, version 2): model (as above), selection_layer,
reselect_layer, calibration, and sha256 sealing {model identity, selection_layer, reselect_layer}.

The preset rule: a Kascade file of scope "shape" holds anchors published for one model (e.g. Llama-3.1-8B) with an
identity head map, nothing learned from that model's weights. It fits any model of the same architecture shape
(model_type, layers, attention heads, KV heads), e.g. the bench's random-weight `llama3-8b-synthetic`; the run
records it as such (`anchors_used`: scope, the shape, and the model it was published for). A model of another
shape is refused. A calibrated file (scope "model") is used only for the model it names.

Every file is checked before use, with one message per fault that says what is wrong and how to fix it: a JSON
object of the right format and a version this code reads; the model block; the field types; the seal; the plan
(anchors and head-map indices in range, layer counts); then the model it serves (its name, or its shape for a
preset). Version-1 files (their checksum did not cover the model) still load, with a warning to regenerate them.
An artifact's id (`checksum` of the loaded object, recorded with results) covers its plan only, so one plan has
one id whichever file it came from (version 1 and 2 of a file share it).
Shipped files live in lychee_bench/artifacts/<kind>/ and are loaded by name (a model's own file by its name).
`checksum`, `read_artifact` and `shipped_path` serve the head-roles files (methods/roles.py) too.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KASCADE_FORMAT = "lychee-bench/kascade-anchors"
TIDAL_FORMAT = "lychee-bench/tidal-reselect"
VERSION = 2
IDENTITY_KEYS = ("name", "fingerprint", "model_type", "num_layers", "num_heads", "num_kv_heads")
SCOPES = ("model", "shape")


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
    path: Path,
    fmt: str,
    max_version: int = VERSION,
    error: type[ValueError] = ArtifactError,
    fix: str = "regenerate it",
) -> dict[str, Any]:
    """The JSON object of an artifact file of format `fmt` (roles, Kascade anchors, TidalDecode layers), checked
    for its format and a version this code reads; anything else raises `error` naming the file and `fix`."""
    if path.is_dir():
        raise error(f"artifact {path} is a folder; give the artifact's JSON file, or {fix}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"cannot read artifact {path} ({problem}); {fix}") from problem
    if not text.strip():
        raise error(f"artifact {path} is empty; {fix}")
    try:
        data = json.loads(text)
    except ValueError as problem:
        raise error(f"artifact {path} is not valid JSON (truncated or edited: {problem}); {fix}") from problem
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not a {fmt} object; {fix}")
    if data.get("format") != fmt or not isinstance(data.get("version"), int) or isinstance(data["version"], bool):
        raise error(f"{path} is not a {fmt} file (its `format` and `version` say otherwise); {fix}")
    if not 1 <= data["version"] <= max_version:
        raise error(f"{path} is a version-{data['version']} {fmt} file; this lychee-bench reads 1..{max_version}")
    return data


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1)
    # One line per list of numbers (a head-map row), so the file reads as a table.
    text = re.sub(r"\[\s*(-?[\d.]+(?:,\s*-?[\d.]+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m[1]) + "]", text)
    path.write_text(text + "\n")
    return path


# --- the model an artifact serves ---


@dataclass(frozen=True)
class TargetModel:
    """The model an artifact is about to serve: the name the run gives it and its attention shape."""

    name: str
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int

    @classmethod
    def from_config(cls, config: Any, name: str = "") -> TargetModel:
        return cls(
            name,
            config.model_type,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.num_key_value_heads,
        )

    @property
    def key(self) -> str:
        """The name artifacts are matched by (a folder's or cache path's last part)."""
        return Path(self.name).name

    @property
    def shape(self) -> tuple[str, int, int, int]:
        return (self.model_type, self.num_layers, self.num_heads, self.num_kv_heads)


def describe_shape(shape: tuple[Any, ...]) -> str:
    model_type, layers, heads, kv_heads = shape
    return f"{model_type}, {layers} layers, {heads} heads, {kv_heads} KV heads"


def model_identity(model: dict[str, Any]) -> dict[str, Any]:
    """The part of a `model` block an artifact's seal covers."""
    return {key: model.get(key) for key in IDENTITY_KEYS}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _index_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def check_model_block(model: Any, where: str, fix: str, sealed: bool = True, shape: bool = False) -> dict[str, Any]:
    """The `model` block of an artifact (`where` names it), or ArtifactError naming the first fault. `sealed`: the
    file is of a version whose seal covers the model (it must carry a fingerprint); `shape`: a preset, which must
    also name its architecture and attention heads."""
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model["name"]:
        raise ArtifactError(f"{where} does not say which model it was made for (a `model` object with a name); {fix}")
    if sealed and not isinstance(model.get("fingerprint"), str):
        raise ArtifactError(f"{where}: model {model['name']!r} has no fingerprint (a string); {fix}")
    if not (_positive_int(model.get("num_layers")) and _positive_int(model.get("num_kv_heads"))):
        raise ArtifactError(f"{where}: model.num_layers and model.num_kv_heads must be positive integers; {fix}")
    if shape and not (isinstance(model.get("model_type"), str) and _positive_int(model.get("num_heads"))):
        raise ArtifactError(
            f"{where} is a preset for a shape, but its model block lacks model_type (a string) or num_heads (a "
            f"positive integer), so the shape it fits is unknown; {fix}"
        )
    return model


# --- Kascade ---


@dataclass
class KascadeAnchors:
    anchors: list[int]
    head_map: list[list[int]]  # [num_layers][num_kv_heads]
    source: str  # what the user asked for (a shipped name or a file)
    checksum: str  # the plan's id: anchors and head map with the shape (not the file's seal)
    info: dict[str, Any] = field(default_factory=dict)  # model block, scope and calibration provenance

    @property
    def num_layers(self) -> int:
        return len(self.head_map)

    @property
    def num_kv_heads(self) -> int:
        return len(self.head_map[0])

    @property
    def scope(self) -> str:
        return self.info.get("scope", "model")

    @property
    def made_for(self) -> dict[str, Any]:
        return self.info.get("model", {})

    @property
    def fits(self) -> tuple[Any, ...]:
        """The architecture shape a preset fits (model_type, layers, heads, KV heads)."""
        model = self.made_for
        return (model.get("model_type"), model.get("num_layers"), model.get("num_heads"), model.get("num_kv_heads"))

    def governing_anchor(self, layer: int) -> int:
        return governing_anchor(self.anchors, layer)

    def describe(self) -> dict[str, Any]:
        calibration = self.info.get("calibration", {})
        described = {
            "source": self.source,
            "sha256": self.checksum,
            "anchors": list(self.anchors),
            "head_map_origin": calibration.get("head_map", calibration.get("method", "unknown")),
        }
        if self.scope == "shape":  # recorded as a preset applied by shape, not anchors of this model
            described |= {"scope": "shape", "fits": describe_shape(self.fits), "made_for": self.made_for["name"]}
        return described


def governing_anchor(anchors: list[int], layer: int) -> int:
    """The most recent anchor layer at or before `layer`."""
    return max(a for a in anchors if a <= layer)


def kascade_content(num_layers: int, num_kv_heads: int, anchors: list[int], head_map: list[list[int]]) -> dict:
    """What a Kascade plan's id covers (and a version-1 file's checksum)."""
    return {"num_layers": num_layers, "num_kv_heads": num_kv_heads, "anchors": anchors, "head_map": head_map}


def kascade_seal(model: dict[str, Any], scope: str, anchors: list[int], head_map: list[list[int]]) -> str:
    """The checksum a version-2 Kascade file carries: the model it was made for, its scope and the plan."""
    return checksum({"model": model_identity(model), "scope": scope, "anchors": anchors, "head_map": head_map})


def validate_kascade(anchors: list[int], head_map: list[list[int]], num_layers: int, num_kv_heads: int) -> None:
    """Raise ArtifactError unless the anchors and head map describe a usable Kascade plan."""
    if not anchors or anchors[0] != 0 or sorted(set(anchors)) != list(anchors):
        raise ArtifactError(f"anchors {anchors} must be sorted, distinct and start with layer 0")
    if anchors[-1] >= num_layers:
        raise ArtifactError(f"anchor layer {anchors[-1]} is past the last layer ({num_layers - 1})")
    if len(head_map) != num_layers or any(len(row) != num_kv_heads for row in head_map):
        raise ArtifactError(f"head_map must be {num_layers} rows (one per layer) of {num_kv_heads} KV-head indices")
    for layer, row in enumerate(head_map):
        if any(not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < num_kv_heads for h in row):
            raise ArtifactError(f"head_map row {layer} {row} has entries outside 0..{num_kv_heads - 1}")
        if layer in anchors and row != list(range(num_kv_heads)):
            raise ArtifactError(f"head_map row {layer} is an anchor layer's and must map each head to itself")


def kascade_to_json(
    anchors: list[int],
    head_map: list[list[int]],
    model: dict[str, Any],
    calibration: dict[str, Any],
    scope: str = "model",
) -> dict[str, Any]:
    """A version-2 Kascade file for `model` ({name, fingerprint}, plus model_type and num_heads for a preset)."""
    if scope not in SCOPES:
        raise ArtifactError(f"Kascade artifact scope {scope!r} must be one of {', '.join(SCOPES)}")
    num_layers, num_kv_heads = len(head_map), len(head_map[0])
    validate_kascade(anchors, head_map, num_layers, num_kv_heads)
    block = {**model, "num_layers": num_layers, "num_kv_heads": num_kv_heads}
    check_model_block(block, "a Kascade artifact", "give the model's name and fingerprint", shape=scope == "shape")
    anchors, head_map = list(anchors), [list(row) for row in head_map]
    return {
        "format": KASCADE_FORMAT,
        "version": VERSION,
        "model": block,
        "scope": scope,
        "anchors": anchors,
        "head_map": head_map,
        "calibration": calibration,
        "sha256": kascade_seal(block, scope, anchors, head_map),
    }


def calibrate_fix(method: str, model_name: str = "") -> str:
    return f"make one with `lychee-bench calibrate --method {method} --model {model_name or 'M'}`"


def load_kascade_file(path: Path, source: str, fix: str | None = None) -> KascadeAnchors:
    """A Kascade file, checked on its own (format, model block, types, seal, plan); `resolve_kascade` also checks
    it against the model it is about to serve."""
    fix = fix or calibrate_fix("kascade")
    data = read_artifact(path, KASCADE_FORMAT, fix=fix)
    sealed = data["version"] >= 2
    scope = data.get("scope", "model") if sealed else "model"
    if scope not in SCOPES:
        raise ArtifactError(f"Kascade artifact {path}: scope {scope!r} is not one of {', '.join(SCOPES)}; {fix}")
    model = check_model_block(data.get("model"), f"Kascade artifact {path}", fix, sealed, shape=scope == "shape")
    anchors, head_map = data.get("anchors"), data.get("head_map")
    if not _index_list(anchors):
        raise ArtifactError(f"Kascade artifact {path}: `anchors` must be a list of layer indices; {fix}")
    if not isinstance(head_map, list) or not head_map or not all(_index_list(row) for row in head_map):
        raise ArtifactError(f"Kascade artifact {path}: `head_map` must be one list of KV-head indices per layer; {fix}")
    num_layers, num_kv_heads = model["num_layers"], model["num_kv_heads"]
    content_id = checksum(kascade_content(num_layers, num_kv_heads, anchors, head_map))
    seal = kascade_seal(model, scope, anchors, head_map) if sealed else content_id
    if data.get("sha256") != seal:
        raise ArtifactError(f"Kascade artifact {path} fails its checksum (edited or corrupt); {fix}")
    try:
        validate_kascade(anchors, head_map, num_layers, num_kv_heads)
    except ArtifactError as error:
        raise ArtifactError(f"Kascade artifact {path} (model.num_layers {num_layers}): {error}; {fix}") from error
    if not sealed:
        warnings.warn(
            f"Kascade artifact {path} is version 1: its checksum does not cover the model it was made for. It is "
            f"read as anchors calibrated for {model['name']!r}; to seal it, regenerate it ({fix})",
            stacklevel=2,
        )
    info = {key: value for key, value in data.items() if key not in ("anchors", "head_map")}
    info["scope"] = scope
    return KascadeAnchors(list(anchors), [list(row) for row in head_map], source, content_id, info)


def shipped_presets(shape: tuple[Any, ...] | None = None) -> list[str]:
    """The shipped Kascade presets (scope "shape"), those fitting `shape` when given."""
    names = []
    for name in shipped_names("kascade"):
        path = shipped_path("kascade", name)
        try:
            preset = load_kascade_file(path, name) if path is not None else None
        except ArtifactError:
            continue
        if preset is not None and preset.scope == "shape" and (shape is None or preset.fits == shape):
            names.append(name)
    return names


def check_kascade_target(anchors: KascadeAnchors, model: TargetModel) -> None:
    """ArtifactError unless `anchors` may serve `model`: a preset by its shape, calibrated anchors by the model's
    name and then its layer and KV-head counts."""
    fix = calibrate_fix("kascade", model.name)
    made_for = anchors.made_for
    if anchors.scope == "shape":
        if anchors.fits != model.shape:
            fitting = shipped_presets(model.shape)
            instead = f"use a preset of this shape (-o anchors={' or '.join(fitting)}), or " if fitting else ""
            raise ArtifactError(
                f"Kascade preset {anchors.source} fits models of shape ({describe_shape(anchors.fits)}), published "
                f"for {made_for['name']!r}; the model {model.key or 'this run uses'} is "
                f"({describe_shape(model.shape)}). A preset serves only its own shape: {instead}{fix}"
            )
        return
    if model.name and Path(made_for["name"]).name != model.key:
        presets = shipped_presets(model.shape)
        preset = f", or a published preset of its shape (-o anchors={' or '.join(presets)})" if presets else ""
        raise ArtifactError(
            f"Kascade anchors {anchors.source} were calibrated for model {made_for['name']!r}, and this run's model "
            f"is {model.key!r}: anchor layers and head maps belong to one model's weights, a shape that matches is "
            f"not enough. Use anchors calibrated for {model.key!r} ({fix}){preset}"
        )
    if (anchors.num_layers, anchors.num_kv_heads) != (model.num_layers, model.num_kv_heads):
        raise ArtifactError(
            f"Kascade anchors {anchors.source} are for ({anchors.num_layers}, {anchors.num_kv_heads}) (layers, KV "
            f"heads) but the model has ({model.num_layers}, {model.num_kv_heads}); {fix}"
        )


def resolve_kascade(spec: str | None, model: TargetModel) -> KascadeAnchors:
    """`spec`: None (the model's shipped artifact, by name), a shipped name (presets included) or a file path;
    checked against the model it is about to serve."""
    fix = calibrate_fix("kascade", model.name)
    names = ", ".join(shipped_names("kascade")) or "none"
    if spec is None:
        path = shipped_path("kascade", model.key)
        if path is None:
            raise ArtifactError(
                f"no Kascade anchor layers ship for model {model.name!r}. Calibrate them: "
                f"`lychee-bench calibrate --method kascade --model {model.name or 'M'}`, then give "
                f"-o anchors=<file>; or name a shipped artifact (-o anchors=NAME, shipped: {names})."
            )
        anchors = load_kascade_file(path, f"shipped:{model.key}", fix)
    elif (path := shipped_path("kascade", spec)) is not None:
        anchors = load_kascade_file(path, f"shipped:{spec}", fix)
    elif Path(spec).expanduser().exists():
        anchors = load_kascade_file(Path(spec).expanduser(), str(Path(spec).expanduser().resolve()), fix)
    else:
        raise ArtifactError(
            f"Kascade anchors {spec!r} is neither a shipped name ({names}) nor an existing file; "
            f"make one with `lychee-bench calibrate --method kascade --model {model.name or 'M'} --out FILE`"
        )
    check_kascade_target(anchors, model)
    return anchors


# --- TidalDecode ---


@dataclass
class TidalReselect:
    selection_layer: int
    reselect_layer: int
    num_layers: int
    source: str
    checksum: str  # the choice's id: the layers with the shape (not the file's seal)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_kv_heads(self) -> int:
        return self.info["model"]["num_kv_heads"]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.checksum, "reselect_layer": self.reselect_layer}


def tidal_content(num_layers: int, num_kv_heads: int, selection_layer: int, reselect_layer: int) -> dict:
    """What a TidalDecode choice's id covers (and a version-1 file's checksum)."""
    return {
        "num_layers": num_layers,
        "num_kv_heads": num_kv_heads,
        "selection_layer": selection_layer,
        "reselect_layer": reselect_layer,
    }


def tidal_seal(model: dict[str, Any], selection_layer: int, reselect_layer: int) -> str:
    """The checksum a version-2 TidalDecode file carries: the model it was made for and the two layers."""
    identity = model_identity(model)
    return checksum({"model": identity, "selection_layer": selection_layer, "reselect_layer": reselect_layer})


def tidal_to_json(
    selection_layer: int,
    reselect_layer: int,
    num_layers: int,
    num_kv_heads: int,
    model: dict[str, Any],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    if not 0 <= selection_layer < reselect_layer < num_layers:
        raise ArtifactError(
            f"re-selection layer {reselect_layer} must lie after selection layer {selection_layer} "
            f"and before {num_layers}"
        )
    block = {**model, "num_layers": num_layers, "num_kv_heads": num_kv_heads}
    check_model_block(block, "a TidalDecode artifact", "give the model's name and fingerprint")
    return {
        "format": TIDAL_FORMAT,
        "version": VERSION,
        "model": block,
        "selection_layer": selection_layer,
        "reselect_layer": reselect_layer,
        "calibration": calibration,
        "sha256": tidal_seal(block, selection_layer, reselect_layer),
    }


def load_tidal_file(path: Path, source: str, fix: str | None = None) -> TidalReselect:
    """A TidalDecode file, checked on its own (format, model block, types, seal, layer order)."""
    fix = fix or calibrate_fix("tidal")
    data = read_artifact(path, TIDAL_FORMAT, fix=fix)
    sealed = data["version"] >= 2
    model = check_model_block(data.get("model"), f"TidalDecode artifact {path}", fix, sealed)
    num_layers, num_kv_heads = model["num_layers"], model["num_kv_heads"]
    selection, reselect = data.get("selection_layer"), data.get("reselect_layer")
    if not _index_list([selection, reselect]):
        raise ArtifactError(f"{path}: selection_layer and reselect_layer must be integer layer indices; {fix}")
    content_id = checksum(tidal_content(num_layers, num_kv_heads, selection, reselect))
    seal = tidal_seal(model, selection, reselect) if sealed else content_id
    if data.get("sha256") != seal:
        raise ArtifactError(f"TidalDecode artifact {path} fails its checksum (edited or corrupt); {fix}")
    if not 0 <= selection < reselect < num_layers:
        raise ArtifactError(
            f"{path}: re-selection layer {reselect} must lie after selection layer {selection} and before "
            f"{num_layers} (the model's layers); {fix}"
        )
    if not sealed:
        warnings.warn(
            f"TidalDecode artifact {path} is version 1: its checksum does not cover the model it was made for. It "
            f"is read as calibrated for {model['name']!r}; to seal it, regenerate it ({fix})",
            stacklevel=2,
        )
    info = {key: value for key, value in data.items() if key not in ("selection_layer", "reselect_layer")}
    return TidalReselect(selection, reselect, num_layers, source, content_id, info)


def check_tidal_target(artifact: TidalReselect, model: TargetModel) -> None:
    """ArtifactError unless the artifact was made for this model (its name) and its layer and KV-head counts."""
    fix = calibrate_fix("tidal", model.name)
    made_for = artifact.info["model"]["name"]
    if model.name and Path(made_for).name != model.key:
        raise ArtifactError(
            f"TidalDecode artifact {artifact.source} was calibrated for model {made_for!r}, not {model.key!r}; {fix}"
        )
    if (artifact.num_layers, artifact.num_kv_heads) != (model.num_layers, model.num_kv_heads):
        raise ArtifactError(
            f"TidalDecode artifact {artifact.source} is for {artifact.num_layers} layers and {artifact.num_kv_heads} "
            f"KV heads, but the model has {model.num_layers} and {model.num_kv_heads}; {fix}"
        )


def shipped_tidal(model: TargetModel) -> TidalReselect | None:
    """The shipped re-selection layer for a model (by its name), checked against the model; None if none ships."""
    path = shipped_path("tidal", model.key)
    if path is None:
        return None
    artifact = load_tidal_file(path, f"shipped:{model.key}", calibrate_fix("tidal", model.name))
    check_tidal_target(artifact, model)
    return artifact
