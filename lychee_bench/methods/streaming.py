"""StreamingLLM (Xiao et al., 2023, arXiv 2309.17453): every head sees only the attention-sink tokens and a
window of recent tokens. The simplest sparse method; it proves the interface carries a real sparse method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import masked_decode_attention, sink_and_recent, streaming_window
from lychee_bench.methods.efficient import KernelPath, attend, check_path, step_geometry, step_window
from lychee_bench.methods.naive import naive_rows, sink_recent_positions
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import head_tokens_bytes


@dataclass
class StreamingConfig:
    """`budget`, when given, sets the window: recent = budget - sink. `path`: auto (the shared Triton kernel on
    CUDA), reference or triton."""

    sink: int = 128
    recent: int = 256
    budget: int | None = None
    path: str = "auto"

    def __post_init__(self) -> None:
        self.recent = streaming_window("streaming", self.sink, self.recent, self.budget)
        check_path("streaming", self.path)


class StreamingAttention(KernelPath, Method):
    """Sink + recent window in every head (reference path: masked attention in plain torch; efficient path: the
    shared kernel over the window's positions)."""

    name: ClassVar[str] = "streaming"
    plot_style: ClassVar[tuple[str, str]] = ("#8c564b", "X")  # colour, marker in every figure
    description: ClassVar[str] = "StreamingLLM: every head sees 128 sink + 256 recent tokens only"
    Config: ClassVar[type] = StreamingConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = "nothing gathered: the same sink and recent window in every head"

    def check_config(self, shape: RunShape) -> list[str]:
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        self.resolve_path_for(model)

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int:
        """Sink + recent tokens in every head."""
        tokens = min(ctx, self.config.sink + self.config.recent)
        return head_tokens_bytes(shape, shape.num_layers * shape.num_kv_heads * tokens, batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """The first `sink` and last `recent` real tokens, in every head."""
        cfg = self.config
        rows = naive_rows(query, key, valid)
        return [row.all_heads(sink_recent_positions(row.real, cfg.sink, cfg.recent)) for row in rows]

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
        if self.path == "triton":
            geometry = step_geometry(valid, state)
            window = step_window(state, geometry, self.config.sink, self.config.recent)  # same in every layer
            state.count("kv_tokens_read", lambda: (window >= 0).sum() * key.shape[1])
            return attend(query, key, value, scaling, geometry, window[:, None, :].expand(-1, key.shape[1], -1))
        keep = sink_and_recent(valid, self.config.sink, self.config.recent)
        state.count("kv_tokens_read", lambda: keep.sum() * key.shape[1])
        state.layer_data[("keep", layer_idx)] = keep[:, None, :]  # what selected_positions reads (every head's)
        return masked_decode_attention(query, key, value, keep[:, None, :].expand(-1, key.shape[1], -1), scaling)
