"""Bytes a decode step must read: the weights, plus the K/V the method actually reads (SPEC §6).

The floor of a point is these bytes divided by the copy bandwidth measured in the same run. Each method states
its own K/V traffic on its class, ``Method.bytes_read_per_step(shape, ctx, batch)``, as its efficient path reads
(methods/traffic.py has the shared units); a method that states none gets no floor.
"""

from __future__ import annotations

import math

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.traffic import DTYPE_BYTES, full_kv_bytes, kv_token_bytes

__all__ = ["DTYPE_BYTES", "floor_ms", "full_kv_bytes", "kv_bytes_read", "kv_token_bytes", "weight_bytes_read"]


def kv_bytes_read(method: Method, shape: RunShape, ctx: int, batch: int) -> int | None:
    """K/V bytes the method reads in one decode step (its class's `bytes_read_per_step`), or None when nobody
    knows (no floor reported)."""
    hook = getattr(method, "bytes_read_per_step", None)
    nbytes = hook(shape, ctx, batch) if callable(hook) else None
    return None if nbytes is None else int(nbytes)


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
