"""Plain-torch building blocks shared by the reference paths of the methods."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def masked_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """torch's SDPA with `enable_gqa`, as the reference paths call it. With a mask on CUDA it runs the math backend:
    a masked GQA call otherwise lands on cuDNN's attention, whose output for left-padded rows changes from call to
    call on the H200 (17-19 of 20 identical repeats; the math backend 20 of 20, at the same error against float32;
    results/engine/h200/NOTES.md, the recheck), and a reference must give the same tokens every time."""
    backend = sdpa_kernel(SDPBackend.MATH) if mask is not None and query.is_cuda else nullcontext()
    with backend:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)


def masked_decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of one query token over the kept cache positions.

    query [B, Hq, 1, D]; key/value [B, Hkv, S, D]; keep [B, Hkv or Hq, S] bool (per KV head or per query
    head). Returns [B, Hq, 1, D]. Plain SDPA with a boolean mask: the same function as dense attention with
    the dropped positions' logits set to -inf (callers keep at least one position per row).
    """
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    if keep.shape[1] == num_kv_heads and num_heads != num_kv_heads:
        keep = keep.repeat_interleave(num_heads // num_kv_heads, dim=1)
    return masked_sdpa(query, key, value, keep[:, :, None, :], scaling)


def valid_rank(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For [B, S] validity: each position's index among the real tokens, and the count of real tokens [B, 1].

    With left padding the first real token has rank 0, so "the first 128 tokens" means real tokens.
    """
    rank = torch.cumsum(valid.long(), dim=-1) - 1
    count = valid.long().sum(dim=-1, keepdim=True)
    return rank, count


def sink_and_recent(valid: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """[B, S] bool: the first `sink` and the last `recent` real tokens (the current token is the last)."""
    rank, count = valid_rank(valid)
    return valid & ((rank < sink) | (rank >= count - recent))


def streaming_window(method: str, sink: int, recent: int, budget: int | None) -> int:
    """The recent-window size of a sink + recent config: `budget`, when given, sets recent = budget - sink.
    Raises ValueError naming `method` when the window cannot be built."""
    if budget is not None:
        if budget <= sink:
            raise ValueError(
                f"{method} budget {budget} must exceed the {sink} sink tokens; "
                f"give --budget > {sink} or lower the sink option."
            )
        recent = budget - sink
    if sink < 0 or recent < 1:
        raise ValueError(f"{method} needs sink >= 0 and recent >= 1 (got sink={sink}, recent={recent})")
    return recent
