"""Full attention: every head reads the whole cache. The baseline every sparse method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from lychee_bench.harness.attention import DecodeState
from lychee_bench.methods.base import Method


@dataclass
class FullConfig:
    """Full attention has no options."""


class FullAttention(Method):
    """Dense decode through torch SDPA (its flash / cuDNN / efficient backends where the device has them)."""

    name: ClassVar[str] = "full"
    description: ClassVar[str] = "dense attention over the whole cache (torch SDPA); the baseline"
    Config: ClassVar[type] = FullConfig
    graph_safe: ClassVar[bool] = True
    decode_only: ClassVar[bool] = False

    @property
    def path(self) -> str:
        return "sdpa"

    def decode_attention(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        lengths = state.host_lengths(valid)
        state.count("kv_tokens_read", sum(lengths) * key.shape[1])
        mask = None if min(lengths) == key.shape[2] else valid[:, None, None, :]
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
