"""StreamingLLM (Xiao et al., 2023, arXiv 2309.17453): every head sees only the attention-sink tokens and a
window of recent tokens. The simplest sparse method; it proves the interface carries a real sparse method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lychee_bench.harness.attention import DecodeState
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import masked_decode_attention, sink_and_recent, streaming_window


@dataclass
class StreamingConfig:
    """`budget`, when given, sets the window: recent = budget - sink."""

    sink: int = 128
    recent: int = 256
    budget: int | None = None

    def __post_init__(self) -> None:
        self.recent = streaming_window("streaming", self.sink, self.recent, self.budget)


class StreamingAttention(Method):
    """Sink + recent window in every head (reference path: masked attention in plain torch)."""

    name: ClassVar[str] = "streaming"
    description: ClassVar[str] = "StreamingLLM: every head sees 128 sink + 256 recent tokens only"
    Config: ClassVar[type] = StreamingConfig
    graph_safe: ClassVar[bool] = True

    def check_config(self, shape: RunShape) -> list[str]:
        return []

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
        keep = sink_and_recent(valid, self.config.sink, self.config.recent)
        state.count("kv_tokens_read", keep.sum() * key.shape[1])
        return masked_decode_attention(query, key, value, keep[:, None, :].expand(-1, key.shape[1], -1), scaling)
