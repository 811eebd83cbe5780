"""Bytes a decode step must read: the weights, plus the K/V the method actually reads (SPEC §6).

The floor of a point is these bytes divided by the copy bandwidth measured in the same run. A method can state
its own K/V traffic with ``bytes_read_per_step(shape, ctx, batch)`` (the hook proposed for Method); the
built-in formulas below cover the registered methods, each as its efficient path reads, with every K or V row
counted once per reader (a fused kernel that scores and attends in one pass reads K once):

- full: every token of every KV head in every layer.
- lychee: retrieval heads all tokens, sparse heads their budget (whole blocks).
- streaming / duo: sink + recent tokens per head; DuoAttention's retrieval heads all tokens.
- tidal: dense and selection layers all tokens; reuse layers each *query head's* list (the per-query-head sets
  of one group may overlap, but each is read for its own head).
- kascade: layer 0 all tokens; other anchors score every key (all K) and attend to their top-k (V of those);
  reuse layers each KV head's top-k.
- quest: dense layers all tokens; other layers the page bounds (min and max per page, float32) and each query
  head's chosen pages.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lychee_bench.methods.base import Method, RunShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_token_bytes(shape: RunShape) -> int:
    """Bytes of one token's K and V in one KV head."""
    return 2 * shape.head_dim * DTYPE_BYTES[shape.dtype]


def full_kv_bytes(shape: RunShape, ctx: int, batch: int) -> int:
    """Every layer, every KV head, all ``ctx`` tokens, K and V."""
    return shape.num_layers * shape.num_kv_heads * ctx * kv_token_bytes(shape) * batch


def lychee_sparse_tokens(config: Any, ctx: int) -> int:
    """Tokens a sparse head reads at context ``ctx``: its budget (block granularity: whole 64-token blocks)."""
    if config.granularity == "block":
        return min(ctx, config.host_budget_blocks(ctx) * config.block_size)
    return min(ctx, config.host_budget(ctx))


def lychee_kv_bytes(method: Any, shape: RunShape, ctx: int, batch: int) -> int:
    """Retrieval heads read all ``ctx`` tokens, sparse heads their budget; summed over the role table."""
    retrieval = int(method.roles.retrieval.sum())
    sparse = shape.num_layers * shape.num_kv_heads - retrieval
    tokens = retrieval * ctx + sparse * lychee_sparse_tokens(method.config, ctx)
    return tokens * kv_token_bytes(shape) * batch


def tidal_kv_bytes(method: Any, shape: RunShape, ctx: int, batch: int) -> int:
    cfg = method.config
    full_layers = cfg.selection_layer + 1 + (method.reselect_layer is not None)
    rows = shape.num_kv_heads if cfg.per_kv_head else shape.num_heads
    full = full_layers * shape.num_kv_heads * ctx
    reuse = (shape.num_layers - full_layers) * rows * min(ctx, cfg.budget)
    return (full + reuse) * kv_token_bytes(shape) * batch


def kascade_kv_bytes(method: Any, shape: RunShape, ctx: int, batch: int) -> int:
    anchors = method.anchors.anchors
    k = method.config.tokens_for(ctx)
    half = kv_token_bytes(shape) // 2  # K or V of one token
    layer0 = shape.num_kv_heads * ctx * 2 * half
    other_anchors = (len(anchors) - (0 in anchors)) * shape.num_kv_heads * (ctx + k) * half
    reuse = (shape.num_layers - len(anchors)) * shape.num_kv_heads * k * 2 * half
    return (layer0 + other_anchors + reuse) * batch


def quest_kv_bytes(method: Any, shape: RunShape, ctx: int, batch: int) -> int:
    cfg = method.config
    dense = min(cfg.dense_layers, shape.num_layers)
    pages = -(-ctx // cfg.page_size)
    chosen = ctx if ctx <= cfg.budget else min(ctx, cfg.budget // cfg.page_size * cfg.page_size)
    bounds = shape.num_kv_heads * pages * 2 * shape.head_dim * 4  # float32 min and max per page
    per_sparse_layer = bounds + shape.num_heads * chosen * kv_token_bytes(shape)
    return (
        dense * shape.num_kv_heads * ctx * kv_token_bytes(shape) + (shape.num_layers - dense) * per_sparse_layer
    ) * batch


def duo_kv_bytes(method: Any, shape: RunShape, ctx: int, batch: int) -> int:
    retrieval = int(method.roles.retrieval.sum())
    streaming = shape.num_layers * shape.num_kv_heads - retrieval
    window = min(ctx, method.config.sink + method.config.recent)
    return (retrieval * ctx + streaming * window) * kv_token_bytes(shape) * batch


def kv_bytes_read(method: Method, shape: RunShape, ctx: int, batch: int) -> int | None:
    """K/V bytes the method reads in one decode step, or None when nobody knows (no floor reported)."""
    hook = getattr(method, "bytes_read_per_step", None)
    if callable(hook):
        return int(hook(shape, ctx, batch))
    name = getattr(method, "name", "")
    if name == "full":
        return full_kv_bytes(shape, ctx, batch)
    if name == "lychee" and getattr(method, "roles", None) is not None:
        return lychee_kv_bytes(method, shape, ctx, batch)
    if name == "streaming":
        tokens = min(ctx, method.config.sink + method.config.recent)
        return shape.num_layers * shape.num_kv_heads * tokens * kv_token_bytes(shape) * batch
    if name == "duo" and getattr(method, "roles", None) is not None:
        return duo_kv_bytes(method, shape, ctx, batch)
    if name == "tidal":
        return tidal_kv_bytes(method, shape, ctx, batch)
    if name == "kascade" and getattr(method, "anchors", None) is not None:
        return kascade_kv_bytes(method, shape, ctx, batch)
    if name == "quest":
        return quest_kv_bytes(method, shape, ctx, batch)
    return None


def weight_bytes_read(model: torch.nn.Module, batch: int) -> dict[str, int]:
    """Weights one step reads: every parameter except the input embedding table, of which only the ``batch``
    looked-up rows are read (unless it is tied to the LM head, which reads it whole)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    table = embedding.numel() * embedding.element_size()
    read = total if tied else total - table + batch * embedding.shape[1] * embedding.element_size()
    return {"param_bytes": total, "weight_bytes_read": read}


def floor_ms(nbytes: int | None, bandwidth: float | None) -> float | None:
    if nbytes is None or not bandwidth or math.isnan(bandwidth):
        return None
    return nbytes / bandwidth * 1e3
