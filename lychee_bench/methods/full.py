"""Full attention: every head reads the whole cache. The baseline every sparse method is compared with.

Two paths (SPEC §4: the fast path must be the best dense kernel available). `sdpa`: torch's
scaled_dot_product_attention (flash / cuDNN backends) when every row's context fills the cache exactly, as in
the latency bench's fixed-context steps; anything else (left padding, a static cache longer than the context)
needs a mask, which sends SDPA to its slow masked kernels. `triton`: the shared split-KV kernel with every row
dense (kernels/sparse_decode.py), which reads each row's own length and start on the device, so the engine's
growing context needs no mask; the default on CUDA. The bench times both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.efficient import attend, choose_path, path_reasons, step_geometry
from lychee_bench.methods.state import DecodeState

FULL_PATHS = ("auto", "sdpa", "reference", "triton")  # reference: sdpa, the name every method's plain path has


@dataclass
class FullConfig:
    """`path`: auto (triton on CUDA where the kernel supports the head dim, else sdpa), sdpa (also called
    reference, as every method's plain-torch path is) or triton."""

    path: str = "auto"

    def __post_init__(self) -> None:
        if self.path not in FULL_PATHS:
            raise ValueError(f"full path {self.path!r}: use one of {', '.join(FULL_PATHS)}")


class FullAttention(Method):
    """Dense decode through torch SDPA or the shared Triton kernel with every row dense."""

    name: ClassVar[str] = "full"
    description: ClassVar[str] = "dense attention over the whole cache (Triton split-KV or torch SDPA); the baseline"
    Config: ClassVar[type] = FullConfig
    graph_safe: ClassVar[bool] = True
    decode_only: ClassVar[bool] = False

    def __init__(self, config: FullConfig | None = None):
        super().__init__(config)
        self._path: str | None = None

    def check_config(self, shape: RunShape) -> list[str]:
        self._path = self._choose(shape.device, shape.head_dim)
        return path_reasons(self.name, self.config.path, shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._path = self._choose(str(next(model.parameters()).device), head_dim)

    def _choose(self, device: str, head_dim: int) -> str:
        if self.config.path in ("sdpa", "reference"):
            return "sdpa"
        return "triton" if choose_path(self.config.path, device, head_dim) == "triton" else "sdpa"

    @property
    def path(self) -> str:
        return self._path or ("triton" if self.config.path == "triton" else "sdpa")

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
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
