"""Methods inside transformers' own forward: an attention function plus the per-step state.

The engine (engine.py) runs every evaluation and the bench without transformers' forward; this hook is for the
places that keep transformers' forward: stock transformers in the bench's comparison rows, training's answer
segment passes, and the tests' reference generation loop. The harness registers `lychee_bench` with
transformers' AttentionInterface and selects it with `model.set_attn_implementation`. Every forward call passes a
`DecodeState` as the `lychee_state` keyword, which transformers hands through to the attention function untouched.
Prefill (more than one query token) is dense in every method; a decode step (one query token) goes to the active
method. Cross-layer data such as selected token sets lives in the state, never in module globals or on the model.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lychee_bench.methods.state import DecodeState

if TYPE_CHECKING:
    from collections.abc import Iterator


ATTENTION_NAME = "lychee_bench"


def key_validity(attention_mask: torch.Tensor | None, batch: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """[batch, kv_len] bool: which cache positions hold real tokens (left padding is False).

    For a single decode query the 4-D mask row of the query is exactly the set of keys it may see.
    """
    if attention_mask is None:
        return torch.ones(batch, kv_len, dtype=torch.bool, device=device)
    row = attention_mask[:, 0, -1, :kv_len]
    if row.dtype != torch.bool:
        row = row > torch.finfo(row.dtype).min / 2
    return row


def lychee_bench_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lychee_state: DecodeState | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, Hq, q, D], key/value [B, Hkv, kv, D] (whole cache)."""
    if lychee_state is None:
        raise RuntimeError(
            "the model uses lychee-bench attention but no `lychee_state` was passed to forward; "
            "run it through lychee_bench.harness.engine.Engine."
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if query.shape[2] > 1 or lychee_state.phase == "prefill":
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    valid = key_validity(attention_mask, query.shape[0], key.shape[2], key.device)
    output = lychee_state.method.decode_attention(module.layer_idx, query, key, value, valid, scaling, lychee_state)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, lychee_bench_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Route the model's attention through the registered attention function `name` for the duration; always
    restores the original."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def method_attention(model: torch.nn.Module) -> AbstractContextManager[None]:
    """Route the model's attention through lychee-bench for the duration; always restores the original."""
    return attention_implementation(model, ATTENTION_NAME)


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword of a transformers model's KV cache: `cache` (transformers >= 5.24) or
    `past_key_values` (earlier releases, e.g. 5.17 on the GPU machine)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
