"""Choosing the next token on the device: greedy, or temperature / top-p sampling with per-row seeds.

Sampling must not depend on a row's batch-mates (the same sample, decoded in another batch, gives the same
tokens) and must run inside a captured CUDA graph. So there is no shared generator: each row draws its uniform
number from a counter-based hash of (its own seed, the step), computed with integer tensor ops that are exact on
every device, and picks a token by inverse transform over the (top-p filtered) probabilities.
"""

from __future__ import annotations

import hashlib

import torch

MASK32 = 0xFFFFFFFF


def row_seed(*parts: object) -> int:
    """A 31-bit seed from anything that names a row's sample (run seed, task, subtask, index)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values below 2**32 (products stay below 2**63)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & MASK32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[B] float64 in [0, 1) from int64 seeds [B] and the step counter (a 1-element int64 tensor)."""
    base = _mix32(seeds & MASK32)
    high = _mix32((base + step * 0x9E3779B9) & MASK32)
    low = _mix32((high ^ 0x5BD1E995) & MASK32)
    return (high.double() * 2.0**21 + (low >> 11).double()) / 2.0**53


def choose_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, seeds: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """Next token per row [B] (int64) from float logits [B, V]: argmax when `temperature` <= 0, else a draw at
    `temperature` within the smallest set of most likely tokens whose mass reaches `top_p`."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = torch.sort(probs, dim=-1, descending=True)
        outside = torch.cumsum(probs, dim=-1) - probs > top_p  # the token that crosses top_p stays
        probs = probs.masked_fill(outside, 0.0)
    else:
        order = None
    cumulative = torch.cumsum(probs, dim=-1)
    target = uniform(seeds, step)[:, None] * cumulative[:, -1:]
    pick = torch.searchsorted(cumulative, target, right=True).clamp(max=probs.shape[-1] - 1)
    return pick[:, 0] if order is None else order.gather(-1, pick)[:, 0]
