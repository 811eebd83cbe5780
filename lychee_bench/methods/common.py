"""Plain-torch building blocks shared by the reference paths of the methods."""

from __future__ import annotations

import torch


def masked_decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of one query token over the kept cache positions, computed in float32.

    query [B, Hq, 1, D]; key/value [B, Hkv, S, D]; keep [B, Hkv or Hq, S] bool (per KV head or per query
    head). Returns [B, Hq, 1, D] in the query's dtype.
    """
    batch, num_heads, _, head_dim = query.shape
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    q = query.float().view(batch, num_kv_heads, group, head_dim)
    logits = torch.einsum("bhgd,bhsd->bhgs", q, key.float()) * scaling
    if keep.shape[1] == num_kv_heads:
        keep = keep[:, :, None, :]
    else:
        keep = keep.view(batch, num_kv_heads, group, -1)
    logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhgs,bhsd->bhgd", weights, value.float())
    return out.reshape(batch, num_heads, 1, head_dim).to(query.dtype)


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
