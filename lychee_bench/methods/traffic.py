"""Byte counts for `Method.bytes_read_per_step`: the K/V bytes a decode step reads (SPEC §6).

Each method states its own count on its class, as its efficient path reads, with every K or V row counted once
per reader (a fused kernel that scores and attends in one pass reads K once). These are the shared units; the
bench (tasks/latency/traffic.py) adds the weights and divides by the measured copy bandwidth for the floor.
"""

from __future__ import annotations

from lychee_bench.methods.base import RunShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_token_bytes(shape: RunShape) -> int:
    """Bytes of one token's K and V in one KV head."""
    return 2 * shape.head_dim * DTYPE_BYTES[shape.dtype]


def full_kv_bytes(shape: RunShape, ctx: int, batch: int) -> int:
    """Every layer, every KV head, all ``ctx`` tokens, K and V."""
    return shape.num_layers * shape.num_kv_heads * ctx * kv_token_bytes(shape) * batch


def head_tokens_bytes(shape: RunShape, tokens: int, batch: int) -> int:
    """K and V of ``tokens`` token rows (summed over layers and heads), for ``batch`` sequences."""
    return tokens * kv_token_bytes(shape) * batch
