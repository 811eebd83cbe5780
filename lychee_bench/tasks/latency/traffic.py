"""Bytes a decode step must read: the weights, plus the K/V the method actually reads (SPEC §6).

The floor of a point is these bytes divided by the copy bandwidth measured in the same run. A method can state
its own K/V traffic with ``bytes_read_per_step(shape, ctx, batch)`` (the hook proposed for Method); the
built-in formulas below cover full, lychee and streaming until they do.
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
