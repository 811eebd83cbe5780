"""The needle-recall diagnosis (tools/needle_recall.py): the read-only selection hooks say what every method's
reference step attended to (checked against each method's naive model, for every registered method), the needle
is placed on the right tokens, and a whole diagnosis on a tiny model reports what those hooks say."""

from __future__ import annotations

import json

import pytest
import torch

from lychee_bench.harness.task import Sample
from lychee_bench.methods.artifacts import kascade_to_json, write_json
from lychee_bench.methods.base import RunShape
from lychee_bench.methods.naive import real_positions
from lychee_bench.methods.state import DecodeState
from lychee_bench.tools import needle_recall
from tests.conftest import tiny_model
from tests.test_method_matrix import ALL_METHODS, NUM_LAYERS, SCALING, build, kascade_artifact, method_class

__all__ = ["kascade_artifact"]  # the matrix's fixture (the Kascade artifact `build` names), used here too


@pytest.mark.parametrize("name", ALL_METHODS)
def test_selected_positions_after_the_step_are_each_layers_naive_set(name):
    """What the diagnosis reads once a whole decode step has run: every layer's recorded selection is the set the
    method's naive model says that layer attended to, and LycheeDecode's picks are its retrieval heads' sets."""
    batch, num_heads, num_kv, dim, length = 2, 6, 2, 16, 70
    method = build(name, budget=20)
    shape = RunShape("llama", NUM_LAYERS, num_heads, num_kv, dim, "float32", "cpu", batch, length, "tiny")
    assert method.check(shape) == []
    torch.manual_seed(3)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :9] = False  # left padding
    state = DecodeState(method=method, phase="decode")
    state.begin_step("decode")
    memory: dict = {}
    expected, expected_picks = [], []
    for layer in range(NUM_LAYERS):
        query = torch.randn(batch, num_heads, 1, dim)
        key, value = torch.randn(batch, num_kv, length, dim), torch.randn(batch, num_kv, length, dim)
        before = dict(memory)
        expected.append(method.naive_selection(layer, query, key, valid, SCALING, memory))
        expected_picks.append({k: v for k, v in memory.items() if before.get(k) is not v})
        method.decode_attention(layer, query, key, value, valid, SCALING, state)
    for layer in range(NUM_LAYERS):
        keep = method.selected_positions(layer, state)
        if keep is None:
            assert method_class(name).is_dense_baseline, f"{name} records no selection for layer {layer}"
            continue
        keep = keep.repeat_interleave(num_heads // keep.shape[1], dim=1)
        got = [[set(real_positions(keep[b, h])) for h in range(num_heads)] for b in range(batch)]
        assert got == expected[layer], f"{name} layer {layer}"
        picks = method.chosen_positions(layer, state)
        got_picks = {h: [set(real_positions(p[b])) for b in range(batch)] for h, p in picks.items()}
        if name != "lychee":
            assert got_picks == {}
            continue
        naive: dict[int, dict[int, set[int]]] = {}
        for (b, kv_head), chosen in expected_picks[layer].items():  # lychee's naive memory: (row, KV head) -> set
            naive.setdefault(kv_head, {})[b] = chosen
        assert got_picks == {kv: [rows[b] for b in range(batch)] for kv, rows in naive.items()}, f"layer {layer}"
        assert layer > 0 or sorted(got_picks) == list(range(num_kv)), "layer 0 picks for every KV head"


def test_needle_is_the_tokens_of_the_gold_value(smol_tokenizer):
    formatter = needle_recall.InputFormatter(smol_tokenizer)
    prompt = "Some text. One of the special magic numbers for red-fox is: 5520417. More text after it."
    sample = Sample("ruler", "niah_single_1", 0, prompt, " Answer:", ["5520417"], 16, "string_match_all")
    ids = formatter.format(sample.prompt, sample.answer_prefix).input_ids
    needle = needle_recall.needle_positions(formatter, sample, ids)
    assert needle == list(range(needle[0], needle[-1] + 1))
    assert "5520417" in smol_tokenizer.decode([ids[i] for i in needle])
    assert "5520" not in smol_tokenizer.decode([ids[i] for i in range(needle[0])])
    missing = Sample("ruler", "niah_single_1", 0, prompt, " Answer:", ["9999999"], 16, "string_match_all")
    assert needle_recall.needle_positions(formatter, missing, ids) == []


@pytest.fixture
def tiny_folder(tmp_path, smol_tokenizer):
    """A tiny random Qwen2 model with the default model's tokenizer, as a model folder `--model` takes."""
    folder = tmp_path / "tiny-qwen2"
    tiny_model("qwen2", layers=NUM_LAYERS, vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    anchors = kascade_to_json(
        [0, 2, 4], [[0, 1], [1, 0], [0, 1], [1, 1], [0, 1], [0, 0]], {"name": folder.name, "fingerprint": "-"}, {}
    )
    write_json(tmp_path / "anchors.json", anchors)
    return folder


@pytest.mark.slow
def test_diagnosis_on_a_tiny_model_reports_what_the_hooks_record(tiny_folder, tmp_path, capsys):
    methods = (
        "lychee[roles=uniform:4;sink=4;recent=8],tidal[reselect_layer=4],quest[page_size=4],streaming[sink=4;recent=8],"
        f"kascade[anchors={tmp_path / 'anchors.json'}],duo[roles=uniform:4;sink=4;recent=8]"
    )
    out = tmp_path / "recall"
    argv = [
        "--model",
        str(tiny_folder),
        "--task",
        "ruler[sizing=tight]/niah_single_1",
        "--ctx",
        "768",
        "--samples",
        "1",
        "--steps",
        "2",
        "--exercise-chars",
        "12",
        "--budget",
        "64",
        "--method",
        methods,
        "--out",
        str(out),
    ]
    assert needle_recall.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("mean")  # the table is printed last
    result = json.loads((out / "needle_recall.json").read_text())
    (sample,) = result["samples"]
    assert sample["needle_tokens"] == len(sample["needle_positions"]) > 0
    by_label = sample["methods"]
    assert list(by_label)[0] == "full" and len(by_label) == 7
    for label, steps in by_label.items():
        assert len(steps) == 2 and all(len(step["layers"]) == NUM_LAYERS for step in steps)
        assert result["methods"][label]["path"] == "reference"
    assert all(layer["recall"] == [1.0] for step in by_label["full"] for layer in step["layers"])
    # StreamingLLM reads the sink and the recent window: its recall is the needle's share inside them.
    streaming = "streaming[sink=4;recent=8]"
    sink, recent = (result["methods"][streaming][key] for key in ("sink", "recent"))  # --budget sets recent
    for step in by_label[streaming]:
        length = step["length"]
        assert length == sample["input_tokens"] - sample["exercise_tokens"] + step["step"] + 1
        inside = [p for p in sample["needle_positions"] if p < sink or p >= length - recent]
        assert all(layer["set_size"] == [sink + recent] for layer in step["layers"])
        assert all(layer["recall"] == [len(inside) / sample["needle_tokens"]] for layer in step["layers"])
    # LycheeDecode: layer 0 reads everything and picks for both KV heads; a sparse head reads the picks of the
    # last retrieval head of its KV head, so its recall is that pick's.
    lychee = by_label["lychee[roles=uniform:4;sink=4;recent=8]"]
    for step in lychee:
        layer0 = step["layers"][0]
        assert layer0["recall"] == [1.0, 1.0] and layer0["picks"]["kv_heads"] == [0, 1]
        last_pick: dict[int, float] = {}
        for layer in step["layers"]:
            picks = layer.get("picks", {"kv_heads": [], "recall": []})
            for head, recall in enumerate(layer["recall"]):
                if head not in picks["kv_heads"]:
                    assert recall == last_pick[head]
                    assert layer["set_size"][head] <= 64
            last_pick.update(zip(picks["kv_heads"], picks["recall"], strict=True))
    table = result["table"]
    assert table["mean"]["full"] == 1.0 and "lychee[roles=uniform:4;sink=4;recent=8] picks" in table["0"]
    # A second diagnosis into the same folder is refused and changes nothing.
    before = (out / "needle_recall.json").read_text()
    assert needle_recall.main(argv) == 2
    assert (out / "needle_recall.json").read_text() == before
    assert "exists; give another --out" in capsys.readouterr().err


def test_a_method_that_records_no_selection_is_refused():
    method = build("full", budget=64)
    method.is_dense_baseline = False  # a sparse method that records nothing
    state = DecodeState(method=method, phase="decode")
    with pytest.raises(needle_recall.RecallError, match="records no selection"):
        needle_recall.layer_selection(method, 0, state, torch.tensor([1]), 4)


def test_bad_options_are_refused_before_anything_loads(tmp_path, capsys):
    base = ["--out", str(tmp_path / "r"), "--ctx", "768"]
    assert needle_recall.main([*base, "-o", "path=triton"]) == 2
    assert "reference path" in capsys.readouterr().err
    assert needle_recall.main([*base, "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert needle_recall.main([*base, "--method", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
