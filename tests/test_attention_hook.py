"""The attention hook on tiny random Llama, Qwen2 and Qwen3 models (CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from lychee_bench.harness.attention import cache_keyword, method_attention
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.streaming import StreamingAttention, StreamingConfig
from tests.conftest import tiny_model


def _prefill_then_step(model, method, prompt: torch.Tensor, next_token: torch.Tensor):
    """Dense prefill of `prompt` [1, n] then one decode step; returns the decode logits and the state."""
    keyword = cache_keyword(model)
    state = DecodeState(method=method)
    cache = DynamicCache(config=model.config)
    n = prompt.shape[1]
    with torch.no_grad(), method_attention(model):
        state.begin_step("prefill")
        model(input_ids=prompt, use_cache=True, lychee_state=state, **{keyword: cache})
        state.begin_step("decode")
        out = model(
            input_ids=next_token,
            position_ids=torch.tensor([[n]]),
            use_cache=True,
            lychee_state=state,
            **{keyword: cache},
        )
    return out.logits[0, -1], state


def _plain_logits(model, prompt, next_token):
    with torch.no_grad():
        full = torch.cat([prompt, next_token], dim=1)
        return model(input_ids=full).logits[0, -1]


def test_full_method_matches_plain_model(arch):
    model = tiny_model(arch)
    prompt = torch.randint(0, 256, (1, 40))
    token = torch.randint(0, 256, (1, 1))
    logits, state = _prefill_then_step(model, FullAttention(), prompt, token)
    torch.testing.assert_close(logits, _plain_logits(model, prompt, token), atol=1e-4, rtol=1e-4)
    assert state.counters["kv_tokens_read"] == 41 * 2 * 3  # tokens x kv heads x layers
    assert model.config._attn_implementation == "sdpa"  # restored afterwards


def test_streaming_with_window_covering_everything_is_full(arch):
    model = tiny_model(arch)
    prompt = torch.randint(0, 256, (1, 40))
    token = torch.randint(0, 256, (1, 1))
    logits, _ = _prefill_then_step(model, StreamingAttention(StreamingConfig(sink=8, recent=64)), prompt, token)
    torch.testing.assert_close(logits, _plain_logits(model, prompt, token), atol=1e-4, rtol=1e-4)


def test_streaming_equals_an_independent_truncated_cache(arch):
    """Naive twin: copy the dense cache keeping only sink + recent positions, then attend to all of it."""
    model = tiny_model(arch)
    sink, recent, n = 4, 8, 50
    prompt = torch.randint(0, 256, (1, n))
    token = torch.randint(0, 256, (1, 1))
    logits, _ = _prefill_then_step(model, StreamingAttention(StreamingConfig(sink=sink, recent=recent)), prompt, token)

    keyword = cache_keyword(model)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, use_cache=True, **{keyword: cache})
        # The new token is among the `recent` most recent, so keep recent - 1 of the prompt.
        keep = list(range(sink)) + list(range(n - (recent - 1), n))
        kept = DynamicCache(config=model.config)
        for layer_idx, layer in enumerate(cache.layers):
            kept.update(layer.keys[:, :, keep].clone(), layer.values[:, :, keep].clone(), layer_idx)
        expected = model(input_ids=token, position_ids=torch.tensor([[n]]), use_cache=True, **{keyword: kept}).logits[
            0, -1
        ]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    dense = _plain_logits(model, prompt, token)
    assert not torch.allclose(logits, dense, atol=1e-3), "the window should change the output"


def test_state_slots_are_emptied_every_step():
    state = DecodeState(method=FullAttention())
    state.begin_step("decode")
    state.slots[0] = torch.tensor([1, 2])
    state.begin_step("decode")
    assert state.slots == {} and state.step == 2


def test_missing_state_is_an_error():
    model = tiny_model("llama")
    with method_attention(model), pytest.raises(RuntimeError, match="lychee_state"):
        model(input_ids=torch.randint(0, 256, (1, 5)))


def test_statistics_cost_nothing_when_not_counting():
    """A timed step (the bench's state) keeps no statistics: the functions that would compute them never run."""
    from lychee_bench.methods.full import FullAttention
    from lychee_bench.methods.state import DecodeState

    def must_not_run():
        raise AssertionError("a statistic was computed while not counting")

    timed = DecodeState(method=FullAttention(), counting=False)
    timed.count("kv_tokens_read", must_not_run)
    assert timed.totals() == {}
    counted = DecodeState(method=FullAttention())
    counted.count("kv_tokens_read", lambda: torch.tensor(5))
    counted.count("kv_tokens_read", 2.0)
    assert counted.totals() == {"kv_tokens_read": 7.0}
