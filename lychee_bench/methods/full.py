"""Full attention: every head reads the whole cache. The baseline every sparse method is compared with.

Two paths (SPEC §4: the fast path must be the best dense kernel available). `reference`: torch's
scaled_dot_product_attention (its cuDNN / flash backends) when every row's context fills the cache exactly, as in
the latency bench's fixed-context steps; anything else (left padding, a static cache longer than the context)
needs a mask, and a masked call runs SDPA's math backend on CUDA (`common.masked_sdpa`: the masked GQA call's
cuDNN kernel is not reproducible run to run there). `triton`: the dense split-KV kernel
(kernels/sparse_decode.py), which reads each row's own length and start on the device, so the engine's growing
context needs no mask; on the H200 it is within 1-4% of SDPA's fastest backend (results/kernels/h200-dense). The
default on CUDA; the latency bench times both and takes the faster as the reference for speedups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import masked_sdpa
from lychee_bench.methods.efficient import KernelPath, attend, check_path, step_geometry
from lychee_bench.methods.naive import naive_rows
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import full_kv_bytes


@dataclass
class FullConfig:
    """`path`: auto (triton on CUDA where the kernel supports the head dim, else reference), reference (torch
    SDPA) or triton."""

    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("full", self.path)


class FullAttention(KernelPath, Method):
    """Dense decode through the dense Triton kernel or torch SDPA."""

    name: ClassVar[str] = "full"
    plot_style: ClassVar[tuple[str, str]] = ("#000000", "s")  # colour, marker in every figure
    description: ClassVar[str] = "dense attention over the whole cache (Triton split-KV or torch SDPA); the baseline"
    Config: ClassVar[type] = FullConfig
    graph_safe: ClassVar[bool] = True
    decode_only: ClassVar[bool] = False
    is_dense_baseline: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = "nothing gathered: dense attention over the process's own KV heads"

    def check_config(self, shape: RunShape) -> list[str]:
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        self.resolve_path_for(model)

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int:
        """Every token of every KV head in every layer."""
        return full_kv_bytes(shape, ctx, batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """Every real token, in every head."""
        return [row.all_heads(set(row.real)) for row in naive_rows(query, key, valid)]

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
        geometry = step_geometry(valid, state)
        state.count("kv_tokens_read", lambda: geometry.lengths.sum() * key.shape[1])
        if self.path == "triton":
            return attend(query, key, value, scaling, geometry, None)
        mask = None if geometry.shortest == key.shape[2] else valid[:, None, None, :]
        return masked_sdpa(query, key, value, mask, scaling)
