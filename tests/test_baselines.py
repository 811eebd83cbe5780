"""Method-specific semantics of the baselines on hand-made tensors: TidalDecode's layer plan, Quest's page
bound, DuoAttention's retrieval vs streaming heads."""

from __future__ import annotations

import json

import torch

from lychee_bench.methods.base import RunShape
from lychee_bench.methods.common import masked_decode_attention, sink_and_recent
from lychee_bench.methods.duo import DuoAttention, DuoConfig
from lychee_bench.methods.quest import QuestAttention, QuestConfig, page_bounds, page_scores
from lychee_bench.methods.roles import roles_to_json
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.tidal import TidalConfig, TidalDecode


def shape(model_type="llama", layers=32, heads=32, kv=8, dim=128, name="m") -> RunShape:
    return RunShape(model_type, layers, heads, kv, dim, "bfloat16", "cpu", 1, 4096, name)


def test_tidal_layer_plan_for_llama3_and_refusal_elsewhere():
    tidal = TidalDecode()
    assert tidal.check(shape()) == []
    plan = [tidal.layer_role(layer) for layer in range(32)]
    assert plan[:2] == ["dense", "dense"] and plan[2] == "select" and plan[13] == "select"
    assert set(plan[3:13]) == {"reuse"} and set(plan[14:]) == {"reuse"}
    assert tidal.describe()["reselect_layer_used"] == 13
    reasons = TidalDecode().check(shape("qwen3", layers=36))
    assert len(reasons) == 1 and "reselect_layer" in reasons[0]
    assert TidalDecode(TidalConfig(reselect_layer=20)).check(shape("qwen3", layers=36)) == []
    assert (
        "past the model's last layer" in TidalDecode(TidalConfig(reselect_layer=40)).check(shape("qwen3", layers=36))[0]
    )


def _topk_set(scores: torch.Tensor, k: int) -> set[int]:
    return set(torch.topk(scores, k).indices.tolist())


def test_tidal_selects_at_layer_two_reuses_then_reselects():
    batch, heads, kv, dim, length, budget = 1, 4, 2, 8, 40, 5
    tidal = TidalDecode(TidalConfig(budget=budget, reselect_layer=4))
    assert tidal.check(shape(layers=6, heads=heads, kv=kv, dim=dim)) == []
    state = DecodeState(method=tidal, phase="decode")
    valid = torch.ones(batch, length, dtype=torch.bool)
    torch.manual_seed(0)
    chosen = {}
    for layer in range(6):
        query = torch.randn(batch, heads, 1, dim)
        key, value = torch.randn(batch, kv, length, dim), torch.randn(batch, kv, length, dim)
        out = tidal.decode_attention(layer, query, key, value, valid, 0.3, state)
        keep = state.layer_data[("keep", layer)]
        if layer in (0, 1, 2, 4):  # dense and selection layers attend to everything
            torch.testing.assert_close(
                out, masked_decode_attention(query, key, value, valid[:, None].expand(-1, kv, -1), 0.3)
            )
        if layer in (2, 4):  # each query head its own top-k by raw logit of this layer
            logits = torch.einsum("hd,hsd->hs", query[0, :, 0], key[0].repeat_interleave(heads // kv, 0))
            chosen[layer] = [_topk_set(logits[h], budget) for h in range(heads)]
            assert [set(torch.nonzero(state.slots["tidal"][0, h]).flatten().tolist()) for h in range(heads)] == chosen[
                layer
            ]
        if layer in (3, 5):  # reuse the nearest earlier selection, whatever this layer's keys say
            source = 2 if layer == 3 else 4
            assert [set(torch.nonzero(keep[0, h]).flatten().tolist()) for h in range(heads)] == chosen[source]
    assert chosen[2] != chosen[4]


def test_tidal_per_kv_head_uses_the_group_mean_query():
    heads, kv, dim, length, budget = 4, 2, 8, 30, 6
    tidal = TidalDecode(TidalConfig(budget=budget, reselect_layer=3, per_kv_head=True))
    query, key = torch.randn(1, heads, 1, dim), torch.randn(1, kv, length, dim)
    keep = tidal.select(query, key, torch.ones(1, length, dtype=torch.bool))
    assert keep.shape == (1, kv, length)
    mean = query[0, :, 0].view(kv, heads // kv, dim).mean(1)
    for h in range(kv):
        assert set(torch.nonzero(keep[0, h]).flatten().tolist()) == _topk_set(key[0, h] @ mean[h], budget)


def test_quest_page_score_upper_bounds_every_token_in_the_page():
    torch.manual_seed(0)
    batch, heads, kv, dim, length, page = 2, 4, 2, 16, 70, 16
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :13] = False
    query, key = torch.randn(batch, heads, 1, dim), torch.randn(batch, kv, length, dim)
    low, high, exists, page_id = page_bounds(key, valid, page)
    bound = page_scores(query, low, high, exists)  # [B, Hq, P]
    logits = torch.einsum("bhd,bhsd->bhs", query[:, :, 0], key.repeat_interleave(heads // kv, 1))
    for b in range(batch):
        real = torch.nonzero(valid[b]).flatten()
        assert int(exists[b].sum()) == -(-len(real) // page)
        for pos in real.tolist():
            assert bool((logits[b, :, pos] <= bound[b, :, page_id[b, pos]] + 1e-5).all())
    # Page ids count real tokens: row 1's first real token starts page 0.
    assert int(page_id[1, 13]) == 0 and int(page_id[1, 13 + page]) == 1


def test_quest_keeps_the_top_pages_and_the_current_page():
    torch.manual_seed(1)
    heads, kv, dim, length, page = 2, 1, 8, 100, 16  # 7 pages, the last one partial (4 tokens)
    quest = QuestAttention(QuestConfig(budget=48, page_size=page))  # 3 pages: current + top 2
    query, key = torch.randn(1, heads, 1, dim), torch.randn(1, kv, length, dim) * 0.1
    key[0, 0, 20] = query[0, 0, 0] * 10  # page 1 wins for head 0
    key[0, 0, 70] = query[0, 1, 0] * 10  # page 4 wins for head 1
    key[0, 0, 40] = (query[0, 0, 0] + query[0, 1, 0]) * 6  # page 2 is good for both
    keep = quest.select(query, key, torch.ones(1, length, dtype=torch.bool))
    pages = [{p // page for p in torch.nonzero(keep[0, h]).flatten().tolist()} for h in range(heads)]
    assert 1 in pages[0] and 4 in pages[1] and all(6 in s for s in pages) and all(len(s) == 3 for s in pages)
    assert all(2 in s for s in pages)
    # Layers 0-1 are dense.
    state = DecodeState(method=quest, phase="decode")
    quest.decode_attention(1, query, key, key, torch.ones(1, length, dtype=torch.bool), 0.3, state)
    assert bool(state.layer_data[("keep", 1)].all())


def test_duo_retrieval_heads_full_streaming_heads_sink_and_recent(tmp_path):
    table = torch.tensor([[True, True], [False, True]])
    path = tmp_path / "roles.json"
    path.write_text(json.dumps(roles_to_json(table, {"name": "m"})))
    duo = DuoAttention(DuoConfig(roles=str(path), sink=3, recent=5))
    assert duo.check(shape(layers=2, heads=4, kv=2, dim=8)) == []
    torch.manual_seed(2)
    query, key, value = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 50, 8), torch.randn(2, 2, 50, 8)
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[0, :7] = False
    out = duo.decode_attention(1, query, key, value, valid, 0.3, DecodeState(method=duo, phase="decode"))
    dense = masked_decode_attention(query, key, value, valid[:, None].expand(-1, 2, -1), 0.3)
    window = sink_and_recent(valid, 3, 5)
    assert window.sum(-1).tolist() == [8, 8] and bool(window[0, 7:10].all())  # sinks are the first real tokens
    streaming = masked_decode_attention(query, key, value, window[:, None].expand(-1, 2, -1), 0.3)
    torch.testing.assert_close(out[:, 2:], dense[:, 2:])  # KV head 1: retrieval
    torch.testing.assert_close(out[:, :2], streaming[:, :2])  # KV head 0: streaming
    assert not torch.allclose(out[:, :2], dense[:, :2])


def test_duo_refuses_without_roles_and_budget_sets_the_window():
    reasons = DuoAttention().check(shape(name="no-such-model"))
    assert len(reasons) == 1 and "uniform:N" in reasons[0]
    assert DuoAttention.from_options({"budget": "1024"}).config.recent == 1024 - 128


def test_duo_defaults_to_the_shipped_continuous_gate_roles():
    duo = DuoAttention()
    assert duo.check(shape(layers=30, heads=9, kv=3, dim=64, name="smollm2-135m")) == []
    assert duo.roles is not None and duo.roles.source == "shipped:smollm2-135m-continuous"


def test_quest_efficient_path_keeps_page_bounds_across_steps():
    """Steps that grow the cache by one token (crossing page boundaries): the kept bounds, updated only for the
    newest page, give the same output as the reference that rebuilds every page each step."""
    from lychee_bench.methods.state import DecodeState

    batch, num_heads, num_kv, dim = 2, 4, 2, 64
    shape_ = RunShape("llama", 4, num_heads, num_kv, dim, "float32", "cpu", batch, 64, "tiny")
    methods = {}
    for path in ("reference", "triton"):
        method = QuestAttention.from_options({"budget": "16", "page_size": "4", "path": path})
        assert method.check(shape_) == [] and method.path == path
        methods[path] = method
    states = {path: DecodeState(method=m) for path, m in methods.items()}
    for state in states.values():
        state.begin_step("prefill")
    key, value = torch.randn(batch, num_kv, 50, dim), torch.randn(batch, num_kv, 50, dim)
    valid = torch.ones(batch, 50, dtype=torch.bool)
    valid[1, :13] = False  # left padding: 37 real tokens
    for step in range(20):
        lengths = valid.sum(-1).tolist()
        query = torch.randn(batch, num_heads, 1, dim)
        outs = {}
        for path, method in methods.items():
            states[path].begin_step("decode", lengths)
            outs[path] = method.decode_attention(2, query, key, value, valid, 0.3, states[path])
        torch.testing.assert_close(outs["triton"], outs["reference"], atol=2e-4, rtol=2e-4, msg=f"step {step}")
        key = torch.cat([key, torch.randn(batch, num_kv, 1, dim) * 10], dim=2)  # large keys move the bounds
        value = torch.cat([value, torch.randn(batch, num_kv, 1, dim)], dim=2)
        valid = torch.cat([valid, torch.ones(batch, 1, dtype=torch.bool)], dim=1)
    assert ("quest", 2) in states["triton"].persistent
