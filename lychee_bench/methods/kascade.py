"""Kascade (arXiv 2512.16391, github.com/microsoft/kascade): training-free top-k selection and reuse.

Anchor layers (layer 0 always among them) score every cached token per KV head by the post-softmax attention
probability summed over the group's query heads, keep the top k, and attend only to that set themselves (layer 0
attends densely but still selects). A reuse layer attends to the set of the most recent anchor layer through a
head map: its KV head h reads the set of the anchor's KV head `head_map[layer][h]`, the anchor head found most
similar on calibration data. k = max(128, 10% of the sequence's real tokens), capped at those tokens; the
`budget` option sets k in tokens instead. Anchors and head map come from a per-model artifact
(methods/artifacts.py) written by `lychee-bench calibrate --method kascade`. Sets are rebuilt every step.

Against the public code (SPEC §4 followed where they differ): Kascade's PyTorch path computes k from the padded
cache length of the batch; here each sequence gets its own k from its real tokens (left padding excluded).
Kascade also pools top-k over tiles of 32 queries in prefill and runs prefill sparse; here prefill is dense
(the harness's rule) and only decode uses the sets. Two paths: the reference (plain torch, masked attention)
and the efficient one (the shared Triton kernel over the selected positions; the anchors' scoring stays in torch,
so an anchor layer reads K twice, where Kascade's own kernels fuse it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.artifacts import ArtifactError, KascadeAnchors, resolve_kascade
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import masked_decode_attention
from lychee_bench.methods.efficient import KernelPath, attend, check_path, rows_read, step_geometry, top_index
from lychee_bench.methods.selection import select_tokens
from lychee_bench.methods.state import DecodeState

SLOT = "kascade"
PUBLISHED_ANCHORS = {"llama3.1-8b": [0, 2, 8, 13, 14], "qwen3-8b": [0, 2, 7, 14, 23]}  # the paper's choices


@dataclass
class KascadeConfig:
    """`anchors`: None (the model's shipped artifact), a shipped name (e.g. llama3.1-8b, qwen3-8b) or a file.
    Top-k per sequence: `budget` tokens when given, else max(min_budget, int(budget_ratio * real tokens)).
    `path`: auto (the shared Triton kernel on CUDA), reference or triton."""

    anchors: str | None = None
    budget: int | None = None
    budget_ratio: float = 0.10
    min_budget: int = 128
    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("kascade", self.path)
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"kascade budget {self.budget} must be >= 1 token; give --budget N")
        if not 0.0 < self.budget_ratio <= 1.0:
            raise ValueError(f"kascade budget_ratio {self.budget_ratio} must lie in (0, 1], e.g. 0.1")
        if self.min_budget < 1:
            raise ValueError(f"kascade min_budget {self.min_budget} must be >= 1 token")

    def budget_rule(self) -> str:
        if self.budget is not None:
            return f"k = {self.budget} tokens (budget option)"
        return f"k = max({self.min_budget}, int({self.budget_ratio} * real tokens)), capped at the real tokens"

    def tokens_for(self, length: int) -> int:
        """k for a sequence of `length` real tokens (at most `length`)."""
        k = self.budget if self.budget is not None else max(self.min_budget, int(self.budget_ratio * length))
        return min(k, length)


def group_probabilities(query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """Post-softmax attention over the valid keys, summed over each KV head's query heads: [B, Hkv, S] float32."""
    batch, num_heads, _, head_dim = query.shape
    num_kv_heads = key.shape[1]
    grouped = query.float().view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    logits = torch.einsum("bhgd,bhsd->bhgs", grouped, key.float()) * scaling
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).sum(dim=2)


def group_probabilities_kernel(query: torch.Tensor, key: torch.Tensor, geometry: Any, scaling: float) -> torch.Tensor:
    """`group_probabilities` with the logits from one pass over K in its own dtype (kernels/token_logits.py;
    they are -inf outside the real tokens already)."""
    from lychee_bench.kernels.token_logits import token_logits

    batch, num_heads = query.shape[:2]
    logits = token_logits(query[:, :, 0], key, geometry.lengths, geometry.starts)
    logits = logits.view(batch, key.shape[1], num_heads // key.shape[1], -1) * scaling
    return torch.softmax(logits, dim=-1).sum(dim=2)


class Kascade(KernelPath, Method):
    """Anchor layers select top-k by pooled post-softmax probability; reuse layers borrow it via a head map."""

    name: ClassVar[str] = "kascade"
    description: ClassVar[str] = "Kascade: anchor layers pick top-k by post-softmax mass, others reuse via a head map"
    Config: ClassVar[type] = KascadeConfig
    graph_safe: ClassVar[bool] = True

    def __init__(self, config: KascadeConfig | None = None):
        super().__init__(config)
        self.anchors: KascadeAnchors | None = None
        self._head_map: dict[torch.device, torch.Tensor] = {}

    def _load(self, num_layers: int, num_kv_heads: int, model_name: str) -> None:
        self.anchors = resolve_kascade(self.config.anchors, num_layers, num_kv_heads, model_name)
        self._head_map = {}

    def check_config(self, shape: RunShape) -> list[str]:
        try:
            self._load(shape.num_layers, shape.num_kv_heads, shape.model_name)
        except ArtifactError as error:
            return [str(error)]
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        if self.anchors is None:
            config = model.config
            name = getattr(config, "_name_or_path", "")
            self._load(config.num_hidden_layers, config.num_key_value_heads, name)
        self.resolve_path_for(model)

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "budget_rule": self.config.budget_rule()}
        if self.anchors is not None:
            described["anchors_used"] = self.anchors.describe()
        return described

    def resolved_artifacts(self) -> dict[str, str]:
        return {} if self.anchors is None else {"anchors": self.anchors.checksum}

    def head_map(self, device: torch.device) -> torch.Tensor:
        """[num_layers, num_kv_heads] long on `device` (built once per device: no per-step copy)."""
        assert self.anchors is not None, "prepare() loads the anchors before decoding"
        if device not in self._head_map:
            self._head_map[device] = torch.tensor(self.anchors.head_map, dtype=torch.long, device=device)
        return self._head_map[device]

    def token_budget(self, valid: torch.Tensor) -> torch.Tensor:
        """k per sequence [B] on the device (tokens_for's rule): no per-layer copy from the host."""
        cfg = self.config
        count = valid.sum(-1)
        if cfg.budget is not None:
            return count.clamp(max=cfg.budget)
        return torch.minimum((count.double() * cfg.budget_ratio).floor().long().clamp(min=cfg.min_budget), count)

    def select(
        self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float, lengths: list[int]
    ) -> torch.Tensor:
        """keep [B, Hkv, S]: each KV head's top-k tokens by group-summed post-softmax probability."""
        scores = group_probabilities(query, key, valid, scaling)
        bound = max(self.config.tokens_for(n) for n in lengths)
        return select_tokens(scores, valid, self.token_budget(valid), sink=0, recent=0, max_budget=bound)

    def select_index(
        self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float, geometry: Any
    ) -> torch.Tensor:
        """The same sets as `select`, as position lists [B, Hkv, k_max] (-1 past each sequence's own k); the
        efficient path's scoring (the logits kernel)."""
        scores = group_probabilities_kernel(query, key, geometry, scaling)
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        bound = max(self.config.tokens_for(n) for n in geometry.lengths_max)
        # A fixed k that every sequence holds at every step the geometry serves cuts no list: no rank order needed.
        cut = self.config.budget is None or geometry.shortest < self.config.budget
        index = top_index(scores, bound, geometry.starts, ranked=cut)
        if not cut:
            return index
        rank = torch.arange(index.shape[-1], device=index.device)
        beyond = rank[None, None, :] >= self.token_budget(valid)[:, None, None]
        return index.masked_fill(beyond, -1)

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
        assert self.anchors is not None, "prepare() loads the anchors before decoding"
        if self.path == "triton":
            return self._decode_triton(layer_idx, query, key, value, valid, scaling, state)
        num_kv_heads = key.shape[1]
        if layer_idx in self.anchors.anchors:
            keep = self.select(query, key, valid, scaling, state.host_lengths(valid))
            state.slots[SLOT] = keep
            if layer_idx == 0:
                keep = valid[:, None, :].expand(-1, num_kv_heads, -1)
            # An anchor scores every cached key, so it reads the whole cache.
            state.count("kv_tokens_read", lambda: valid.sum() * num_kv_heads)
        else:
            if SLOT not in state.slots:
                raise RuntimeError(f"kascade layer {layer_idx} reuses a set, but no anchor layer has run this step")
            keep = state.slots[SLOT].index_select(1, self.head_map(key.device)[layer_idx])
            state.count("kv_tokens_read", keep.sum)
        state.layer_data[("keep", layer_idx)] = keep
        return masked_decode_attention(query, key, value, keep, scaling)

    def _decode_triton(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """Slots hold each KV head's positions [B, Hkv, k_max], counted from the first real token."""
        assert self.anchors is not None
        geometry = step_geometry(valid, state)
        if layer_idx in self.anchors.anchors:
            index = self.select_index(query, key, valid, scaling, geometry)
            state.slots[SLOT] = index
            state.count("kv_tokens_read", lambda: geometry.lengths.sum() * key.shape[1])  # the anchor scores every key
            return attend(query, key, value, scaling, geometry, None if layer_idx == 0 else index)
        if SLOT not in state.slots:
            raise RuntimeError(f"kascade layer {layer_idx} reuses a set, but no anchor layer has run this step")
        index = state.slots[SLOT].index_select(1, self.head_map(key.device)[layer_idx])
        state.count("kv_tokens_read", lambda: rows_read(index, 1, geometry.lengths).sum())
        return attend(query, key, value, scaling, geometry, index)
