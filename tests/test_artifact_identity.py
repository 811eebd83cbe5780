"""Kascade and TidalDecode artifacts carry the model they were made for inside their seal, and every loader checks
structure, indices, layer counts and that model, with one clear message each. Published Kascade presets fit a
shape: any model of that architecture shape, recorded as a preset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from lychee_bench.harness.synthetic_models import synthetic_config
from lychee_bench.methods.artifacts import (
    ArtifactError,
    TargetModel,
    check_tidal_target,
    checksum,
    kascade_content,
    kascade_seal,
    kascade_to_json,
    load_kascade_file,
    load_tidal_file,
    resolve_kascade,
    shipped_names,
    shipped_path,
    shipped_presets,
    shipped_tidal,
    tidal_content,
    tidal_seal,
    tidal_to_json,
)
from lychee_bench.methods.base import RunShape
from lychee_bench.methods.kascade import KASCADE_PRESET_FOR_SHAPE, Kascade, KascadeConfig
from lychee_bench.methods.tidal import TidalDecode
from lychee_bench.tasks.latency.bench import synthetic_defaults

MODEL = {"name": "tiny", "fingerprint": "folder:abc", "model_type": "llama", "num_heads": 6}
TINY = TargetModel("tiny", "llama", 4, 6, 2)
ANCHORS, HEAD_MAP = [0, 2], [[0, 1], [1, 1], [0, 1], [1, 0]]
FIX = "lychee-bench calibrate --method kascade --model tiny"
# The ids of the shipped artifacts (the smollm2 and preset plans are unchanged since their version-1 files; the
# qwen2.5-coder-0.5b ones were calibrated on an H200 at 16384, results/qwen2.5-coder-0.5b/calibration).
SHIPPED_IDS = {
    ("kascade", "llama3.1-8b"): "b8d6221d7c9f5c4b2e34983d2049931f71518b3ff5c5b48fe7e76051a2fe59b1",
    ("kascade", "qwen3-8b"): "0ecafdfe2dd9e4307f5dbb0635a03e7a1bce4cd1fc0c26555c1b336322236be2",
    ("kascade", "qwen2.5-coder-0.5b"): "5f9cb5f9503012342f900ce1c1b4d8fa428beb931055945768b7bbb834792039",
    ("kascade", "smollm2-135m"): "9f4d0a154acad334247d17193fd6c4dec49720aeb6417913881300ba45d6e05b",
    ("tidal", "qwen2.5-coder-0.5b"): "d0cd582290a0c912abc469a572c769fb36944c507ca422195b92b17dcbfc3d91",
    ("tidal", "smollm2-135m"): "d02965a1d34bb1ee1ede7dc6b4480bb66d6149ad365d7bc22a06acbeb1a4b956",
}


def _kascade(scope: str = "model", **model) -> dict:
    return kascade_to_json(ANCHORS, HEAD_MAP, {**MODEL, **model}, {"method": "by hand"}, scope)


def _resealed(data: dict) -> dict:
    """The same file with its seal recomputed: a wrong file that is not merely corrupt."""
    return {**data, "sha256": kascade_seal(data["model"], data["scope"], data["anchors"], data["head_map"])}


def _write(tmp_path, data, name="a.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# --- Kascade: the seal covers the model ---


def test_the_seal_covers_name_fingerprint_and_scope():
    good = _kascade()
    for key, value in (("name", "other"), ("fingerprint", "folder:xyz"), ("num_heads", 8), ("model_type", "qwen3")):
        changed = {**good["model"], key: value}
        assert kascade_seal(changed, "model", ANCHORS, HEAD_MAP) != good["sha256"], key
    assert kascade_seal(good["model"], "shape", ANCHORS, HEAD_MAP) != good["sha256"]


def test_a_calibrated_file_serves_its_model_and_keeps_the_plans_id(tmp_path):
    loaded = resolve_kascade(_write(tmp_path, _kascade()), TargetModel("/models/tiny", "llama", 4, 6, 2))
    assert loaded.checksum == checksum(kascade_content(4, 2, ANCHORS, HEAD_MAP))  # the plan's id, not the seal
    assert loaded.scope == "model" and "scope" not in loaded.describe()


def _kascade_cases():
    good = _kascade()
    yield "a list", [good], "holds a JSON list, not a lychee-bench/kascade-anchors object"
    yield "empty file", "", "is empty"
    yield "truncated JSON", json.dumps(good)[:200], "is not valid JSON"
    yield "another format", {**good, "format": "lychee-bench/head-roles"}, "is not a lychee-bench/kascade-anchors file"
    yield "future version", {**good, "version": 9}, "reads 1..2"
    yield "no model", {k: v for k, v in good.items() if k != "model"}, "does not say which model"
    no_fingerprint = {k: v for k, v in good["model"].items() if k != "fingerprint"}
    yield "no fingerprint", _resealed({**good, "model": no_fingerprint}), "has no fingerprint"
    yield "layers not a number", _resealed({**good, "model": {**good["model"], "num_layers": "4"}}), "positive integers"
    yield "unknown scope", {**good, "scope": "any"}, "scope 'any' is not one of model, shape"
    yield "anchors not a list", _resealed({**good, "anchors": "0,2"}), "`anchors` must be a list of layer indices"
    yield "head map not rows", _resealed({**good, "head_map": [0, 1]}), "`head_map` must be one list"
    yield "head out of range", _resealed({**good, "head_map": [[0, 1], [1, 5], [0, 1], [1, 0]]}), "outside 0..1"
    yield "too few layers", _resealed({**good, "head_map": HEAD_MAP[:3]}), "head_map must be 4 rows"
    yield "anchor past the end", _resealed({**good, "anchors": [0, 7]}), "anchor layer 7 is past the last layer (3)"
    yield "anchors from 1", _resealed({**good, "anchors": [1, 2]}), "must be sorted, distinct and start with layer 0"
    yield "edited plan", {**good, "anchors": [0, 1]}, "fails its checksum"
    yield "renamed, not resealed", {**good, "model": {**good["model"], "name": "other"}}, "fails its checksum"
    yield (
        "another model",
        _resealed({**good, "model": {**good["model"], "name": "other"}}),
        "calibrated for model 'other'",
    )
    more = {**good, "model": {**good["model"], "num_layers": 5}, "head_map": [*HEAD_MAP, [0, 1]]}
    yield "more layers than the model", _resealed(more), "are for (5, 2) (layers, KV heads) but the model has (4, 2)"
    yield (
        "preset of another shape",
        _resealed({**good, "scope": "shape", "model": {**good["model"], "num_heads": 8}}),
        "fits models of shape (llama, 4 layers, 8 heads, 2 KV heads)",
    )
    no_heads = {k: v for k, v in good["model"].items() if k != "num_heads"}
    yield (
        "preset without its shape",
        _resealed({**good, "scope": "shape", "model": no_heads}),
        "shape it fits is unknown",
    )


@pytest.mark.parametrize(("data", "words"), [c[1:] for c in _kascade_cases()], ids=[c[0] for c in _kascade_cases()])
def test_a_wrong_kascade_file_is_refused_with_one_clear_message(tmp_path, data, words):
    with pytest.raises(ArtifactError) as error:
        resolve_kascade(_write(tmp_path, data), TINY)
    message = str(error.value)
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message
    if "reads 1..2" not in message:  # every other fault names the fix
        assert FIX in message, message


def test_a_folder_in_place_of_the_file_is_named(tmp_path):
    (tmp_path / "anchors").mkdir()
    with pytest.raises(ArtifactError, match="is a folder; give the artifact's JSON file"):
        resolve_kascade(str(tmp_path / "anchors"), TINY)


def test_a_version_1_file_loads_with_a_warning_and_the_same_id(tmp_path):
    old = {k: v for k, v in _kascade().items() if k != "scope"} | {"version": 1}
    old["sha256"] = checksum(kascade_content(4, 2, ANCHORS, HEAD_MAP))
    with pytest.warns(UserWarning, match="is version 1: its checksum does not cover the model"):
        loaded = resolve_kascade(_write(tmp_path, old), TINY)
    assert loaded.checksum == resolve_kascade(_write(tmp_path, _kascade(), "b.json"), TINY).checksum
    with pytest.warns(UserWarning), pytest.raises(ArtifactError, match="calibrated for model 'tiny'"):
        resolve_kascade(_write(tmp_path, old), TargetModel("other", "llama", 4, 6, 2))  # still checked by name


# --- Kascade: presets fit a shape ---


def test_a_preset_fits_any_model_of_its_shape_and_is_recorded_as_a_preset(tmp_path):
    path = _write(tmp_path, _kascade("shape"))
    for name in ("tiny", "tiny-synthetic", "/models/another-tiny"):
        described = resolve_kascade(path, TargetModel(name, "llama", 4, 6, 2)).describe()
        assert described["scope"] == "shape" and described["made_for"] == "tiny"
        assert described["fits"] == "llama, 4 layers, 6 heads, 2 KV heads"
    for other in (TargetModel("tiny", "qwen3", 4, 6, 2), TargetModel("tiny", "llama", 4, 4, 2)):
        with pytest.raises(ArtifactError, match="A preset serves only its own shape"):
            resolve_kascade(path, other)


def test_the_shipped_presets_fit_the_bench_shapes_by_shape():
    assert shipped_presets() == ["llama3.1-8b", "qwen3-8b"]  # the calibrated smollm2-135m file is not a preset
    for model, preset in KASCADE_PRESET_FOR_SHAPE.items():
        config = synthetic_config(model)
        assert synthetic_defaults(model, config, ["kascade"], {})["anchors"] == preset
        method = Kascade(KascadeConfig(anchors=preset))
        assert method.check(RunShape.from_config(config, "float32", "cpu", 1, 4096, model)) == []
        described = method.describe()["anchors_used"]
        assert described["scope"] == "shape" and described["source"] == f"shipped:{preset}"
        assert shipped_presets(TargetModel.from_config(config, model).shape) == [preset]
    config = synthetic_config("qwen3-8b-synthetic")
    reasons = Kascade(KascadeConfig(anchors="llama3.1-8b")).check(
        RunShape.from_config(config, "float32", "cpu", 1, 4096, "qwen3-8b-synthetic")
    )
    assert any("use a preset of this shape (-o anchors=qwen3-8b)" in reason for reason in reasons)


def test_calibrated_anchors_of_another_model_name_the_presets_of_its_shape():
    llama8b = TargetModel("/models/Llama-3-8B", "llama", 32, 32, 8)
    with pytest.raises(ArtifactError) as error:
        resolve_kascade("smollm2-135m", llama8b)
    assert "calibrated for model 'smollm2-135m'" in str(error.value)
    assert "(-o anchors=llama3.1-8b)" in str(error.value)


# --- the shipped files ---


SHIPPED = [(kind, name) for kind in ("kascade", "tidal") for name in shipped_names(kind)]


@pytest.mark.parametrize(("kind", "name"), SHIPPED)
def test_every_shipped_artifact_is_sealed_version_2(kind, name):
    path = shipped_path(kind, name)
    data = json.loads(path.read_text())
    assert data["version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-1 file would warn
        loaded = load_kascade_file(path, name) if kind == "kascade" else load_tidal_file(path, name)
    assert data["model"]["fingerprint"] and data["model"]["num_heads"] and data["model"]["model_type"]
    if (kind, name) in SHIPPED_IDS:  # resealed from version 1: the same plan, so the same id
        assert loaded.checksum == SHIPPED_IDS[(kind, name)]
    if kind == "kascade" and name not in shipped_presets():  # calibrated: for the model it is named after
        assert Path(data["model"]["name"]).name == name


def test_the_resealed_files_are_all_still_shipped():
    assert set(SHIPPED_IDS) <= set(SHIPPED)


# --- TidalDecode ---


def _tidal(**model) -> dict:
    return tidal_to_json(2, 5, 8, 2, {**MODEL, **model}, {"method": "by hand"})


def _tidal_resealed(data: dict) -> dict:
    return {**data, "sha256": tidal_seal(data["model"], data["selection_layer"], data["reselect_layer"])}


TIDAL_TARGET = TargetModel("tiny", "llama", 8, 6, 2)


def _tidal_cases():
    good = _tidal()
    yield "a list", [good], "holds a JSON list"
    yield "empty file", "", "is empty"
    yield "no model", {k: v for k, v in good.items() if k != "model"}, "does not say which model"
    no_fingerprint = {k: v for k, v in good["model"].items() if k != "fingerprint"}
    yield "no fingerprint", _tidal_resealed({**good, "model": no_fingerprint}), "has no fingerprint"
    yield "layer not a number", _tidal_resealed({**good, "reselect_layer": "5"}), "must be integer layer indices"
    yield "reselect past the end", _tidal_resealed({**good, "reselect_layer": 9}), "re-selection layer 9 must lie"
    yield "renamed, not resealed", {**good, "model": {**good["model"], "name": "other"}}, "fails its checksum"
    yield (
        "another model",
        _tidal_resealed({**good, "model": {**good["model"], "name": "other"}}),
        "calibrated for model 'other', not 'tiny'",
    )
    yield (
        "other KV heads",
        _tidal_resealed({**good, "model": {**good["model"], "num_kv_heads": 4}}),
        "is for 8 layers and 4 KV heads, but the model has 8 and 2",
    )


@pytest.mark.parametrize(("data", "words"), [c[1:] for c in _tidal_cases()], ids=[c[0] for c in _tidal_cases()])
def test_a_wrong_tidal_file_is_refused_with_one_clear_message(tmp_path, data, words):
    path = _write(tmp_path, data)
    with pytest.raises(ArtifactError) as error:
        check_tidal_target(load_tidal_file(tmp_path / "a.json", path), TIDAL_TARGET)
    assert words in str(error.value), str(error.value)
    assert "lychee-bench calibrate --method tidal" in str(error.value)


def test_tidal_seal_covers_the_model_and_the_id_does_not(tmp_path):
    good = _tidal()
    assert tidal_seal({**good["model"], "fingerprint": "x"}, 2, 5) != good["sha256"]
    _write(tmp_path, good, "t.json")
    loaded = load_tidal_file(tmp_path / "t.json", "t")
    assert loaded.checksum == checksum(tidal_content(8, 2, 2, 5))
    _write(tmp_path, {**good, "version": 1, "sha256": loaded.checksum}, "t1.json")
    with pytest.warns(UserWarning, match="is version 1"):
        assert load_tidal_file(tmp_path / "t1.json", "t").reselect_layer == 5


def test_the_shipped_tidal_layer_serves_only_its_model():
    smol = TargetModel("smollm2-135m", "llama", 30, 9, 3)
    assert shipped_tidal(smol).reselect_layer == 6
    with pytest.raises(ArtifactError, match="is for 30 layers and 3 KV heads, but the model has 30 and 1"):
        shipped_tidal(TargetModel("smollm2-135m", "llama", 30, 9, 1))
    reasons = TidalDecode().check(RunShape("llama", 30, 9, 1, 64, "float32", "cpu", 1, 1024, "smollm2-135m"))
    assert len(reasons) == 1 and "its shipped artifact is unusable" in reasons[0]
    assert "lychee-bench calibrate --method tidal --model smollm2-135m" in reasons[0]
