"""Kascade and the calibration that feeds it (and TidalDecode's re-selection layer): artifact files, the anchor
dynamic programme, the head map, the statistics of the dense pass, refusals, and `lychee-bench calibrate`."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from lychee_bench.calibration.collect import prompt_statistics, record_prompt
from lychee_bench.calibration.kascade import choose_anchors, default_anchor_count, head_mapping, layer_values
from lychee_bench.calibration.tidal import choose_reselect_layer
from lychee_bench.cli import app
from lychee_bench.harness.forward import LayerStack
from lychee_bench.methods.artifacts import (
    ArtifactError,
    TargetModel,
    kascade_to_json,
    load_kascade_file,
    load_tidal_file,
    resolve_kascade,
    shipped_path,
    tidal_to_json,
    write_json,
)
from lychee_bench.methods.base import RunShape
from lychee_bench.methods.kascade import PUBLISHED_ANCHORS, Kascade, KascadeConfig
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.tidal import TidalConfig, TidalDecode
from tests.conftest import tiny_config

MODEL = {"name": "tiny", "fingerprint": "folder:abc"}


def shape(layers=4, heads=6, kv=2, name="tiny", model_type="llama") -> RunShape:
    return RunShape(model_type, layers, heads, kv, 16, "float32", "cpu", 2, 1024, name)


def target(layers=4, kv=2, name="tiny", heads=6, model_type="llama") -> TargetModel:
    return TargetModel(name, model_type, layers, heads, kv)


# --- artifacts ---


def test_kascade_artifact_round_trip_and_checksum(tmp_path):
    head_map = [[0, 1], [1, 1], [0, 1], [1, 0]]
    path = write_json(tmp_path / "a.json", kascade_to_json([0, 2], head_map, MODEL, {"method": "by hand"}))
    loaded = resolve_kascade(str(path), target())
    assert (loaded.anchors, loaded.head_map) == ([0, 2], head_map)
    assert loaded.info["model"]["fingerprint"] == "folder:abc" and loaded.info["calibration"]["method"] == "by hand"
    assert [loaded.governing_anchor(layer) for layer in range(4)] == [0, 0, 2, 2]

    data = json.loads(path.read_text())
    data["head_map"][3] = [1, 1]  # edited by hand, checksum not updated
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_kascade_file(path, "edited")
    with pytest.raises(ArtifactError, match=r"\(4, 2\).*\(6, 2\)"):
        resolve_kascade(str(write_json(tmp_path / "b.json", kascade_to_json([0, 2], head_map, MODEL, {}))), target(6))


@pytest.mark.parametrize(
    "anchors,head_map,match",
    [
        ([1, 2], [[0, 1]] * 4, "start with layer 0"),
        ([0, 2], [[0, 1], [0, 2], [0, 1], [0, 1]], "outside"),
        ([0, 2], [[0, 1], [0, 1], [1, 1], [0, 1]], "map each head to itself"),
    ],
)
def test_kascade_artifact_refuses_bad_plans(anchors, head_map, match):
    with pytest.raises(ArtifactError, match=match):
        kascade_to_json(anchors, head_map, MODEL, {})


def test_published_presets_ship_with_identity_head_maps():
    for name, model_type, layers in (("llama3.1-8b", "llama", 32), ("qwen3-8b", "qwen3", 36)):
        preset = resolve_kascade(name, target(layers, 8, "whatever", 32, model_type))
        assert preset.anchors == PUBLISHED_ANCHORS[name] and preset.source == f"shipped:{name}"
        assert preset.describe()["head_map_origin"].startswith("identity")
        assert all(row == list(range(8)) for row in preset.head_map)
    assert PUBLISHED_ANCHORS == {"llama3.1-8b": [0, 2, 8, 13, 14], "qwen3-8b": [0, 2, 7, 14, 23]}
    reasons = Kascade(KascadeConfig(anchors="llama3.1-8b")).check(shape(layers=30, heads=9, kv=3))
    assert len(reasons) == 1 and "(llama, 32 layers, 32 heads, 8 KV heads)" in reasons[0] and "calibrate" in reasons[0]


def test_default_model_artifact_ships():
    anchors = resolve_kascade(None, target(30, 3, "/cache/models/smollm2-135m", 9))
    assert anchors.source == "shipped:smollm2-135m" and anchors.anchors[0] == 0
    assert len(anchors.anchors) == default_anchor_count(30) == 5
    assert anchors.info["calibration"]["data"]["samples"] >= 1


def test_refusal_without_artifact_says_how_to_fix():
    reasons = Kascade().check(shape(name="no-such-model"))
    assert len(reasons) == 1
    assert "no Kascade anchor layers ship for model 'no-such-model'" in reasons[0]
    assert "lychee-bench calibrate --method kascade --model no-such-model" in reasons[0]
    assert "llama3.1-8b" in reasons[0]  # names what is allowed
    bad = Kascade(KascadeConfig(anchors="nowhere.json")).check(shape())
    assert len(bad) == 1 and "neither a shipped name" in bad[0]


# --- the dynamic programme and the head map ---


def brute_force(values: torch.Tensor, count: int) -> tuple[float, list[int]]:
    num_layers = values.shape[0]
    best = (float("-inf"), [])
    for rest in itertools.combinations(range(1, num_layers), count - 1):
        anchors = [0, *rest]
        total = sum(float(values[max(a for a in anchors if a <= j), j]) for j in range(num_layers))
        best = max(best, (total, anchors), key=lambda x: x[0])
    return best


def test_dp_finds_the_block_structure():
    # Layers {0, 1}, {2, 3, 4}, {5} attend alike within a block (1.0), poorly across (0.1).
    block = [0, 0, 1, 1, 1, 2]
    values = torch.tensor([[1.0 if block[a] == block[j] else 0.1 for j in range(6)] for a in range(6)]).triu()
    values = values.masked_fill(torch.ones(6, 6, dtype=torch.bool).tril(-1), float("-inf"))
    assert choose_anchors(values, 3) == [0, 2, 5]
    assert choose_anchors(values, 2) == [0, 2]  # 2 + 3 + 0.1 beats [0, 3] (4.2) and [0, 5] (3.3)
    assert choose_anchors(values, 1) == [0]
    assert choose_anchors(values, 6) == list(range(6))


def test_dp_matches_brute_force_on_random_values():
    generator = torch.Generator().manual_seed(3)
    for count in (2, 3, 4):
        values = torch.rand(8, 8, generator=generator)
        values = values.masked_fill(torch.ones(8, 8, dtype=torch.bool).tril(-1), float("-inf"))
        anchors = choose_anchors(values, count)
        total = sum(float(values[max(a for a in anchors if a <= j), j]) for j in range(8))
        assert total == pytest.approx(brute_force(values, count)[0])
    with pytest.raises(ValueError, match="anchor count 9"):
        choose_anchors(values, 9)


def test_head_mapping_takes_the_most_similar_anchor_head():
    recall = torch.zeros(4, 4, 3, 3)  # [anchor layer, layer, head of layer, head of anchor]
    recall[0, 1] = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    recall[2, 3] = torch.tensor([[0.2, 0.1, 0.7], [0.2, 0.1, 0.7], [0.9, 0.0, 0.0]])
    recall[0, 3] = 1.0  # layer 0 is not layer 3's governing anchor: must be ignored
    assert head_mapping(recall, [0, 2]) == [[0, 1, 2], [1, 0, 2], [0, 1, 2], [2, 2, 0]]


def test_tidal_reselect_layer_maximises_reuse_recall():
    recall = torch.full((6, 6), 0.5)
    recall[2, 3] = 0.9  # layer 2's set serves layer 3 well, later layers badly
    recall[4, 5] = 1.0
    layer, info = choose_reselect_layer(recall, 2)
    assert layer == 4  # reuse: 3 from layer 2 (0.9), 5 from layer 4 (1.0)
    assert info["reuse_recall_by_layer"]["4"] == pytest.approx(1.9)
    with pytest.raises(ValueError, match="after selection layer 5"):
        choose_reselect_layer(recall, 5)


# --- the dense pass ---


def test_prompt_statistics_recall_is_mass_captured():
    # Two layers, one KV head of two query heads, one query, 4 keys, k = 2.
    first = torch.tensor([[[0.4, 0.3, 0.2, 0.1]], [[0.4, 0.3, 0.2, 0.1]]])
    second = torch.tensor([[[0.1, 0.2, 0.3, 0.4]], [[0.1, 0.2, 0.3, 0.4]]])
    recall, recall_q = prompt_statistics([first, second], num_kv_heads=1, k=2)
    assert recall[0, 0, 0, 0] == pytest.approx(1.0) and recall[1, 1, 0, 0] == pytest.approx(1.0)
    assert recall[0, 1, 0, 0] == pytest.approx(0.3 / 0.7)  # layer 0's set {0, 1} holds 0.3 of layer 1's 0.7
    assert recall_q[0, 1] == pytest.approx(0.3 / 0.7) and recall[1, 0].abs().sum() == 0


@pytest.mark.parametrize("chunk", [None, 7])  # one chunk; five chunks, the recorded queries across two
def test_recorded_probabilities_and_importance_equal_eager_attention(chunk):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen3"), attn_implementation="eager").eval()
    ids = torch.randint(0, 256, (1, 30))
    inputs, outputs = {}, {}  # per layer: the residual stream entering it, its attention's projected output

    def keep_input(module, args, kwargs):
        inputs[module.self_attn.layer_idx] = args[0] if args else kwargs["hidden_states"]

    def keep_output(module, args, output):
        outputs[module.layer_idx] = output[0]

    handles = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in model.model.layers]
    handles += [layer.self_attn.register_forward_hook(keep_output) for layer in model.model.layers]
    with torch.no_grad():
        eager = model(ids, output_attentions=True)
    for handle in handles:
        handle.remove()
    record = record_prompt(LayerStack(model), ids[0].tolist(), queries=5, chunk=chunk)
    for layer, weights in enumerate(eager.attentions):
        torch.testing.assert_close(record.probabilities[layer], weights[0, :, -5:], atol=1e-5, rtol=1e-5)
        x = inputs[layer].float()
        expected = 1 - torch.nn.functional.cosine_similarity(x, x + outputs[layer].float(), dim=-1).mean()
        assert float(record.importance[layer]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    assert all(0.0 < float(x) < 2.0 for x in record.importance)


# --- the method ---


def test_budget_rule_is_explicit_and_recorded(tmp_path):
    config = KascadeConfig()
    assert [config.tokens_for(n) for n in (100, 1000, 5000)] == [100, 128, 500]
    assert KascadeConfig(budget=64).tokens_for(1000) == 64
    with pytest.raises(ValueError, match="budget_ratio"):
        KascadeConfig(budget_ratio=0.0)
    path = write_json(tmp_path / "a.json", kascade_to_json([0, 2], [[0, 1]] * 4, MODEL, {}))
    method = Kascade.from_options({"anchors": str(path)})
    assert method.check(shape()) == []
    described = method.describe()
    assert described["budget_rule"] == "k = max(128, int(0.1 * real tokens)), capped at the real tokens"
    assert described["path"] == "reference" and described["path_option"] == "auto"  # no GPU here
    assert described["anchors_used"]["anchors"] == [0, 2]


def test_per_sequence_k_with_left_padding_uses_host_lengths(tmp_path):
    path = write_json(tmp_path / "a.json", kascade_to_json([0, 2], [[0, 1], [1, 0], [0, 1], [1, 1]], MODEL, {}))
    method = Kascade(KascadeConfig(anchors=str(path), budget_ratio=0.25, min_budget=4))
    assert method.check(shape()) == []
    torch.manual_seed(0)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :20] = False
    state = DecodeState(method=method)
    state.begin_step("decode", lengths=[40, 20])
    read = 0
    for layer in range(4):
        query, key, value = torch.randn(2, 6, 1, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
        method.decode_attention(layer, query, key, value, valid, 0.25, state)
        keep = state.layer_data[("keep", layer)]
        selected = state.slots["kascade"]
        assert selected.sum(-1).tolist() == [[10, 10], [5, 5]]  # k = 25% of 40 and of 20 real tokens
        assert not (selected & ~valid[:, None, :]).any()
        if layer == 1:  # reuse through the map: head 0 reads anchor head 1 and head 1 reads anchor head 0
            assert torch.equal(keep, selected[:, [1, 0]])
        read += int(valid.sum()) * 2 if layer in (0, 2) else int(keep.sum())
    assert state.totals()["kv_tokens_read"] == read


# --- TidalDecode's shipped re-selection layer ---


def test_tidal_uses_the_shipped_artifact_for_the_default_model():
    shipped = load_tidal_file(shipped_path("tidal", "smollm2-135m"), "shipped")
    tidal = TidalDecode()
    assert tidal.check(shape(layers=30, heads=9, kv=3, name="smollm2-135m")) == []
    described = tidal.describe()
    assert described["reselect_layer_used"] == shipped.reselect_layer > 2
    assert described["reselect_layer_source"].startswith("shipped:smollm2-135m")
    assert TidalDecode(TidalConfig(reselect_layer=9)).check(shape(layers=30, heads=9, kv=3, name="smollm2-135m")) == []
    reasons = TidalDecode().check(shape(layers=20, heads=9, kv=3, name="smollm2-135m"))
    assert len(reasons) == 1 and "is for 30 layers" in reasons[0]
    reasons = TidalDecode().check(shape(layers=30, heads=9, kv=3, name="other"))
    assert len(reasons) == 1 and "lychee-bench calibrate --method tidal --model other" in reasons[0]


def test_tidal_artifact_round_trip_and_checksum(tmp_path):
    path = write_json(tmp_path / "t.json", tidal_to_json(2, 5, 8, 2, MODEL, {"method": "by hand"}))
    assert load_tidal_file(path, "t").reselect_layer == 5
    data = json.loads(path.read_text())
    data["reselect_layer"] = 6
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_tidal_file(path, "t")
    with pytest.raises(ArtifactError, match="must lie after"):
        tidal_to_json(2, 2, 8, 2, MODEL, {})


# --- `lychee-bench calibrate` on a tiny model ---


@pytest.fixture
def tiny_folder(tmp_path, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=len(smol_tokenizer), layers=5)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def test_calibrate_command_writes_loadable_artifacts(tiny_folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "kascade.json"
    args = ["calibrate", "--model", str(tiny_folder), "--ctx", "160", "--samples", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--method", "kascade", "--out", str(out)])
    assert result.exit_code == 0, result.output
    anchors = resolve_kascade(str(out), target(5, name=str(tiny_folder)))
    assert len(anchors.anchors) == default_anchor_count(5) == 2 and anchors.anchors[0] == 0
    calibration = anchors.info["calibration"]
    assert calibration["data"]["ctx"] == 160 and calibration["data"]["samples"] == 2 and calibration["topk"] == 128
    assert anchors.info["model"]["fingerprint"].startswith("folder:")
    assert Kascade(KascadeConfig(anchors=str(out))).check(shape(layers=5, name=str(tiny_folder))) == []

    result = runner.invoke(app, [*args, "--method", "kascade", "--anchors", "3", "--out", str(out)])
    assert result.exit_code == 0 and len(resolve_kascade(str(out), target(5, name=str(tiny_folder))).anchors) == 3

    out = tmp_path / "tidal.json"
    result = runner.invoke(app, [*args, "--method", "tidal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tidal = load_tidal_file(out, "t")
    assert tidal.selection_layer == 2 and 2 < tidal.reselect_layer < 5

    result = runner.invoke(app, [*args, "--method", "quest"])
    assert result.exit_code == 2 and "kascade or tidal" in result.output


def test_importance_weighting_is_optional():
    recall = torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    importance = torch.tensor([1.0, 0.5, 2.0])
    plain, weighted = layer_values(recall), layer_values(recall, importance)
    assert torch.allclose(weighted[0], plain[0] * importance) and weighted[1, 0] == float("-inf")
