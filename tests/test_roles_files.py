"""Every roles file is checked before use: structure, layers, head indices, checksum and the model it is for."""

from __future__ import annotations

import json

import pytest

from lychee_bench.methods.roles import (
    RolesError,
    file_checksum,
    resolve_roles,
    roles_checksum,
    roles_to_json,
    uniform_roles,
)

LAYERS, HEADS = 4, 2


def _good() -> dict:
    return roles_to_json(uniform_roles(4, LAYERS, HEADS), {"name": "m", "fingerprint": "f"})


def _write(tmp_path, data) -> str:
    path = tmp_path / "roles.json"
    path.write_text(json.dumps(data))
    return str(path)


def _resealed(data: dict) -> dict:
    """The same file with its checksum recomputed: a wrong file that is not merely corrupt."""
    return {**data, "sha256": file_checksum(data["model"], data["retrieval"], data["version"])}


def test_a_good_file_loads_and_its_id_is_the_tables(tmp_path):
    roles = resolve_roles(_write(tmp_path, _good()), LAYERS, HEADS, "m")
    assert roles.num_retrieval == 4
    assert roles.checksum == roles_checksum(LAYERS, HEADS, _good()["retrieval"])  # same id as uniform:4
    assert roles.checksum == resolve_roles("uniform:4", LAYERS, HEADS, "m").checksum


def _cases():
    good = _good()
    yield "a list", [good], "holds a JSON list, not a lychee-bench/head-roles object"
    yield "no model", {k: v for k, v in good.items() if k != "model"}, "does not say which model"
    yield "10 of 30 layers", _resealed({**good, "retrieval": good["retrieval"][:2]}), "lists 2 layers"
    more = {**good, "retrieval": [*good["retrieval"], [0]]}
    yield "more layers", _resealed({**more, "model": {**good["model"], "num_layers": 5}}), "(4, 2)"
    bad_head = [list(row) for row in good["retrieval"]]
    bad_head[2] = [7]
    yield "head out of range", _resealed({**good, "retrieval": bad_head}), "KV heads 0..1"
    yield "head twice", _resealed({**good, "retrieval": [[0, 1], [0, 0], [], []]}), "each once"
    yield "layer not a list", _resealed({**good, "retrieval": [[0, 1], 3, [], []]}), "layer 1 is not a list"
    yield "another model", _resealed({**good, "model": {**good["model"], "name": "other"}}), "learned for model 'other'"
    yield "renamed, not resealed", {**good, "model": {**good["model"], "name": "other"}}, "fails its checksum"
    yield "future version", {**good, "version": 9}, "reads 1..2"


@pytest.mark.parametrize(("data", "words"), [c[1:] for c in _cases()], ids=[c[0] for c in _cases()])
def test_a_wrong_file_is_refused_with_one_clear_message(tmp_path, data, words):
    with pytest.raises(RolesError) as error:
        resolve_roles(_write(tmp_path, data), LAYERS, HEADS, "m")
    assert words in str(error.value)


def test_version_1_files_still_load(tmp_path):
    data = {**_good(), "version": 1}
    data["sha256"] = roles_checksum(LAYERS, HEADS, data["retrieval"])
    assert resolve_roles(_write(tmp_path, data), LAYERS, HEADS, "m").num_retrieval == 4


def test_a_model_without_default_roles_is_told_which_roles_ship_for_it():
    with pytest.raises(RolesError) as refused:
        resolve_roles(None, 24, 2, "qwen2.5-coder-0.5b")
    message = str(refused.value)
    assert "no default LycheeDecode head roles ship for model 'qwen2.5-coder-0.5b'" in message
    assert "qwen2.5-coder-0.5b-hardkuma" in message and "qwen2.5-coder-0.5b-continuous" in message
    assert "uniform:N" in message
