"""LycheeDecode's reference path: roles, selection, slot semantics, and agreement with full attention."""

from __future__ import annotations

import json

import pytest
import torch

from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.methods.common import masked_decode_attention
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.lychee import LycheeConfig, LycheeDecode, ratio_budget
from lychee_bench.methods.roles import RolesError, resolve_roles, roles_to_json, uniform_roles
from lychee_bench.methods.selection import select_blocks, select_tokens
from lychee_bench.methods.state import DecodeState
from tests.conftest import tiny_model


def test_uniform_roles_count_includes_layer_zero():
    table = uniform_roles(11, 30, 3)
    assert int(table.sum()) == 11 and bool(table[0].all())
    assert len({int(i) for i in torch.nonzero(table[1:])[:, 0]}) == 8  # spread over 8 different layers
    with pytest.raises(RolesError, match="layer 0"):
        uniform_roles(2, 30, 3)


def test_roles_file_round_trip_and_checksum(tmp_path):
    table = uniform_roles(5, 4, 2)
    path = tmp_path / "roles.json"
    path.write_text(json.dumps(roles_to_json(table, {"name": "m"}, threshold_rule="test")))
    roles = resolve_roles(str(path), 4, 2, "m")
    assert torch.equal(roles.retrieval, table)
    data = json.loads(path.read_text())
    data["retrieval"][1] = [0, 1]
    path.write_text(json.dumps(data))
    with pytest.raises(RolesError, match="checksum"):
        resolve_roles(str(path), 4, 2, "m")
    with pytest.raises(RolesError, match="uniform:N"):
        resolve_roles(None, 4, 2, "no-such-model")


def test_default_model_ships_trained_roles():
    """`--method lychee` on the default model needs no roles flag: its HardKuma-trained roles ship (issue 4)."""
    from lychee_bench.harness import models

    source = models.resolve_model(None)
    roles = resolve_roles(None, 30, 3, source.name)
    assert roles.source == f"shipped:{source.name}" and roles.num_retrieval == 11 and bool(roles.retrieval[0].all())
    assert roles.info["model"]["fingerprint"] == source.fingerprint
    training = roles.info["training"]
    assert training["gate"] == "hardkuma" and training["steps_completed"] == training["steps"] == 3000


def test_token_granularity_is_the_default_and_block_is_asked_for():
    """The paper's quality numbers come from the token model (128 sink + 256 recent + top-k); block is the speed
    path, `lychee[granularity=block]`."""
    default = LycheeDecode()
    assert (default.config.granularity, default.config.sink, default.config.recent) == ("token", 128, 256)
    assert default.describe()["granularity"] == "token"
    block = LycheeDecode.from_options({"granularity": "block", "budget": "256"})
    assert block.config.granularity == "block" and block.describe()["granularity"] == "block"
    with pytest.raises(ValueError, match="must hold the 128 sink \\+ 256 recent"):
        LycheeConfig(budget=256)  # the token default needs room for its window


def test_budget_ratio_truncates_like_the_official_code():
    """The official code keeps int((1 - r) * L) for its sparsity r; budget_ratio is 1 - r and gives the same
    count at every length, on the host and on the device (float64), e.g. 1 of 20 at budget_ratio 0.1."""
    assert ratio_budget(0.1, 20) == int((1 - 0.9) * 20) == 1 and ratio_budget(0.3, 10) == 3
    lengths = list(range(1, 20001))
    sampled = torch.tensor([*lengths[::97], 20000])
    valid = torch.arange(20000)[None, :] < sampled[:, None]  # one row per sampled length, that many real tokens
    for sparsity in (0.7, 0.8, 0.875, 0.9, 0.95):
        kept = 1 - sparsity
        official = [int((1 - sparsity) * n) for n in lengths]
        assert [ratio_budget(kept, n) for n in lengths] == official
        method = LycheeDecode(LycheeConfig(budget_ratio=kept))
        assert method.budget_for(valid).tolist() == [max(1, official[n - 1]) for n in sampled.tolist()]
        assert method.config.host_budget(20000) == max(1, official[-1])


def test_token_selection_keeps_sink_recent_and_top_scores():
    length, sink, recent, budget = 40, 3, 5, 12
    valid = torch.ones(1, length, dtype=torch.bool)
    valid_padded = torch.cat([torch.zeros(1, 7, dtype=torch.bool), valid], dim=1)  # left padding
    scores = torch.randn(1, 2, length)
    for v, s in ((valid, scores), (valid_padded, torch.cat([torch.randn(1, 2, 7), scores], dim=-1))):
        keep = select_tokens(s, v, torch.tensor([budget]), sink, recent)
        offset = v.shape[1] - length
        kept = keep[..., offset:]
        assert kept.sum(-1).tolist() == [[budget, budget]]
        assert bool(kept[..., :sink].all()) and bool(kept[..., -recent:].all())
        assert not bool(keep[..., :offset].any())
        middle = scores[..., sink : length - recent]
        top = torch.topk(middle, budget - sink - recent, dim=-1).indices + sink
        for head in range(2):
            assert set(top[0, head].tolist()) <= set(torch.nonzero(kept[0, head]).flatten().tolist())


def test_block_selection_keeps_whole_top_blocks():
    length, block = 200, 64  # 4 blocks, the last one partial (8 tokens)
    valid = torch.ones(1, length, dtype=torch.bool)
    scores = torch.randn(1, 1, length)
    scores[0, 0, 195] = 50.0  # the partial last block must win
    keep = select_blocks(scores, valid, torch.tensor([2]), block)
    kept = torch.nonzero(keep[0, 0]).flatten()
    assert 195 in kept.tolist() and len(kept) in (64 + 8, 2 * 64)
    blocks = {int(i) // block for i in kept}
    assert len(blocks) == 2


def test_retrieval_head_reads_the_whole_cache_and_sparse_heads_read_their_slot():
    """Layer 1 has one retrieval head; the slots hold tiny sets from 'layer 0'. The retrieval head's output must
    equal dense attention (a skipped part of the cache would change it) and refill its slot; sparse heads must
    attend only to their slots."""
    batch, num_kv, group, dim, length = 2, 3, 2, 16, 150
    method = LycheeDecode(LycheeConfig(roles="uniform:4", budget=64, granularity="block"))
    method.roles = resolve_roles("uniform:4", 2, num_kv, "m")
    method.roles.retrieval[1] = torch.tensor([False, True, False])
    query = torch.randn(batch, num_kv * group, 1, dim)
    key, value = torch.randn(batch, num_kv, length, dim), torch.randn(batch, num_kv, length, dim)
    key[:, 1, 3] = query[:, 2:4, 0].mean(1) * 4  # a key the retrieval head must find, far outside its slot
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :20] = False
    state = DecodeState(method=method, phase="decode")
    old_slots = {h: torch.zeros(batch, length, dtype=torch.bool) for h in range(num_kv)}
    for h in range(num_kv):
        old_slots[h][:, 100 + h * 10 : 110 + h * 10] = True
    state.slots.update({h: s.clone() for h, s in old_slots.items()})
    out = method.decode_attention(1, query, key, value, valid, 0.25, state)

    dense = masked_decode_attention(query, key, value, valid[:, None, :].expand(-1, num_kv, -1), 0.25)
    torch.testing.assert_close(out[:, 2:4], dense[:, 2:4])
    assert not torch.equal(state.slots[1], old_slots[1]), "the retrieval head refills its slot"
    assert bool(state.slots[1][0, 3]), "the planted key's block is selected"
    expected_sparse = masked_decode_attention(query, key, value, torch.stack([old_slots[h] for h in range(3)], 1), 0.25)
    torch.testing.assert_close(out[:, 0:2], expected_sparse[:, 0:2])
    torch.testing.assert_close(out[:, 4:6], expected_sparse[:, 4:6])


@pytest.mark.parametrize("granularity", ["token", "block"])
def test_all_retrieval_heads_give_exactly_full_tokens(smol_tokenizer, arch, granularity):
    model = tiny_model(arch, vocab_size=len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer, exercise_chars=60)
    text = "The quick brown fox jumps over the lazy dog. " * 40 + "What does the fox jump over?"
    inputs = [formatter.format(text, " Answer:"), formatter.format(text[200:], " Answer:")]
    lychee = LycheeDecode(LycheeConfig(roles="all", budget=512, granularity=granularity))
    lychee.prepare(model)
    outputs = Engine(model, smol_tokenizer).generate(inputs, GenerationSettings(12), [FullAttention(), lychee])
    assert [g.text for g in outputs["lychee"]] == [g.text for g in outputs["full"]]


def test_small_budget_changes_the_output(smol_tokenizer):
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer, exercise_chars=60)
    text = "The quick brown fox jumps over the lazy dog. " * 40 + "What does the fox jump over?"
    inputs = [formatter.format(text, " Answer:")]
    lychee = LycheeDecode(LycheeConfig(roles="uniform:4", budget=64, granularity="block"))
    lychee.prepare(model)
    engine = Engine(model, smol_tokenizer)
    outputs = engine.generate(inputs, GenerationSettings(12), [FullAttention(), lychee])
    assert outputs["lychee"][0].text != outputs["full"][0].text


def test_one_roles_table_under_two_names_is_decoded_once(smol_tokenizer, tmp_path):
    """`lychee[roles=uniform:4]` and a roles file holding the same table decode identically by construction: the
    engine decodes them once and says so; another budget is decoded on its own."""
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    config = model.config
    table = uniform_roles(4, config.num_hidden_layers, config.num_key_value_heads)
    path = tmp_path / "same.json"
    path.write_text(json.dumps(roles_to_json(table, {"name": "tiny"}, threshold_rule="test")))
    methods = []
    for label, roles, budget in (("named", "uniform:4", 64), ("file", str(path), 64), ("other", "uniform:4", 128)):
        method = LycheeDecode(LycheeConfig(roles=roles, budget=budget, granularity="block"))
        method.prepare(model)
        method.label = label
        methods.append(method)
    formatter = InputFormatter(smol_tokenizer, exercise_chars=60)
    inputs = [formatter.format("The quick brown fox jumps over the lazy dog. " * 40 + "What does the fox do?", " A:")]
    engine = Engine(model, smol_tokenizer)
    outputs = engine.generate(inputs, GenerationSettings(8), methods)
    assert engine.last_shared == {"file": "named"}
    alone = engine.generate(inputs, GenerationSettings(8), [methods[1]])["file"]
    assert [g.text for g in outputs["file"]] == [g.text for g in outputs["named"]] == [g.text for g in alone]


def test_cache_correction_rewrites_sparse_kv_densely(smol_tokenizer):
    model = tiny_model("qwen3", vocab_size=len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer, exercise_chars=60)
    text = "The quick brown fox jumps over the lazy dog. " * 40 + "What does the fox jump over?"
    inputs = [formatter.format(text, " Answer:")]
    engine = Engine(model, smol_tokenizer, count=True)
    small = dict(budget=64, sink=8, recent=16)  # token granularity, the default, at a budget that bites here
    dense_roles = LycheeDecode(LycheeConfig(roles="all", correction_period=4, **small))
    dense_roles.prepare(model)
    outputs = engine.generate(inputs, GenerationSettings(16), [FullAttention(), dense_roles])
    assert outputs["lychee"][0].text == outputs["full"][0].text  # correcting dense K/V changes nothing
    assert engine.last_counters["corrections"] >= 4

    sparse = LycheeDecode(LycheeConfig(roles="uniform:2", correction_period=4, **small))
    sparse.prepare(model)
    plain = LycheeDecode(LycheeConfig(roles="uniform:2", **small))
    plain.prepare(model)
    corrected = engine.generate(inputs, GenerationSettings(32), [sparse])["lychee"][0].text
    uncorrected = engine.generate(inputs, GenerationSettings(32), [plain])["lychee"][0].text
    assert corrected != uncorrected


def test_reference_and_triton_paths_give_the_same_tokens(smol_tokenizer, monkeypatch):
    """Same greedy tokens from the torch reference and the Triton kernels (interpreter mode, CPU, fp32), on
    a batch of three left-padded sequences of different lengths with a GQA group of 3 and head dim 64."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = tiny_model("llama", vocab_size=len(smol_tokenizer), num_heads=6, num_kv_heads=2, head_dim=64)
    formatter = InputFormatter(smol_tokenizer, exercise_chars=40)
    text = "The quick brown fox jumps over the lazy dog near the river bank. " * 12 + "What does the fox do?"
    inputs = [formatter.format(text[i * 50 :], " Answer:") for i in range(3)]
    methods = []
    for path in ("reference", "triton"):
        method = LycheeDecode(LycheeConfig(roles="uniform:3", budget=64, granularity="block", path=path))
        method.prepare(model)
        methods.append(method)
    assert [m.path for m in methods] == ["reference", "triton"]
    engine = Engine(model, smol_tokenizer, count=True)
    reference = engine.generate(inputs, GenerationSettings(6), [methods[0]])["lychee"]
    reference_read = engine.last_counters["kv_tokens_read"]
    efficient = engine.generate(inputs, GenerationSettings(6), [methods[1]])["lychee"]
    assert [g.text for g in efficient] == [g.text for g in reference]
    # The efficient path counts whole blocks (a partial last block as full), the reference exact positions.
    assert reference_read <= engine.last_counters["kv_tokens_read"] <= 1.05 * reference_read
    full = engine.generate(inputs, GenerationSettings(6), [FullAttention()])["full"]
    assert [g.text for g in full] != [g.text for g in reference], "the budget must bite in this test"
