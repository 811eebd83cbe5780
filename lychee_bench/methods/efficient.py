"""The efficient decode path shared by the position-list methods (TidalDecode, Kascade, Quest, DuoAttention,
StreamingLLM): which path runs, the step's sequence geometry, and the call into the shared Triton kernel
(kernels/sparse_decode.py). A method's reference path stays plain torch (methods/common.py); both must keep
the same positions, which tests/test_method_matrix.py checks for every registered method. `KernelPath` gives
such a method its decode step's shape: it states `decode_efficient` and `reference_keep` (and `reference_rows`
where its count differs), and `attend_kept` does the reference path's record-count-attend tail.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

import torch

from lychee_bench.kernels.lychee_plan import SUPPORTED_HEAD_DIMS  # plain torch: importing it needs no Triton
from lychee_bench.methods.base import head_dim_of
from lychee_bench.methods.common import masked_decode_attention
from lychee_bench.methods.state import DecodeState, StepGeometry

PATHS = ("auto", "reference", "triton")


def check_path(method: str, path: str) -> None:
    """Refuse an unknown `path` option, naming the allowed ones."""
    if path not in PATHS:
        raise ValueError(f"{method} path {path!r}: use one of {', '.join(PATHS)}")


def triton_refusals(device: str, head_dim: int) -> list[str]:
    """Why the Triton kernels cannot run here (empty: they can)."""
    reasons = []
    if head_dim not in SUPPORTED_HEAD_DIMS:
        reasons.append(f"the kernels support head dims {SUPPORTED_HEAD_DIMS}, not {head_dim}")
    if importlib.util.find_spec("triton") is None:
        reasons.append("triton is not installed (pip install triton)")
    if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        reasons.append("the kernels need a CUDA GPU (or TRITON_INTERPRET=1 for slow CPU checks)")
    return reasons


def choose_path(path: str, device: str, head_dim: int, extra_refusals: Sequence[str] = ()) -> str:
    """`auto`: the Triton kernels on CUDA where nothing refuses them, else the reference."""
    if path != "auto":
        return path
    usable = device.startswith("cuda") and not triton_refusals(device, head_dim) and not extra_refusals
    return "triton" if usable else "reference"


def path_reasons(method: str, path: str, device: str, head_dim: int, extra_refusals: Sequence[str] = ()) -> list[str]:
    """Reasons to refuse a run that asks for `path=triton` where it cannot run."""
    if path != "triton":
        return []
    return [f"{method} path=triton: {reason}" for reason in [*extra_refusals, *triton_refusals(device, head_dim)]]


def step_geometry(valid: torch.Tensor, state: DecodeState) -> StepGeometry:
    """The step's geometry: the engine's, or derived once per step from `valid` (see DecodeState)."""
    return state.step_geometry(valid)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    geometry: StepGeometry,
    index: torch.Tensor | None,
    *,
    dense_rows: Sequence[bool] | None = None,
    unit: int = 1,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """The shared kernel on the engine's shapes: query [B, Hq, 1, D] -> [B, Hq, 1, D]. `index` None: dense.
    `scores`: the dense rows' token scores are written there (see sparse_decode_attention)."""
    from lychee_bench.kernels.sparse_decode import sparse_decode_attention

    out = sparse_decode_attention(
        query[:, :, 0],
        key,
        value,
        geometry.lengths,
        geometry.starts,
        index,
        scaling,
        dense_rows=dense_rows,
        unit=unit,
        max_length=geometry.longest,
        scores=scores,
    )
    return out[:, :, None, :]


def window_index(lengths: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """[B, sink + recent] int32 positions of the first ``sink`` and last ``recent`` real tokens, counted from the
    first real token; a sequence with no more tokens than that lists each of its tokens once (-1 after)."""
    width = sink + recent
    i = torch.arange(width, device=lengths.device, dtype=torch.int32)[None, :]
    n = lengths.to(torch.int32)[:, None]
    short = torch.where(i < n, i, torch.full_like(i, -1))
    long = torch.where(i < sink, i, n - width + i)
    return torch.where(n <= width, short, long).to(torch.int32)


def step_window(state: DecodeState, geometry: StepGeometry, sink: int, recent: int) -> torch.Tensor:
    """`window_index` of this decode step, built once and shared by every layer (one method per state)."""
    window = state.layer_data.get("window")
    if window is None:
        window = window_index(geometry.lengths, sink, recent)
        state.layer_data["window"] = window
    return window


def top_index(scores: torch.Tensor, k: int, starts: torch.Tensor, ranked: bool = True) -> torch.Tensor:
    """[B, H, min(k, S)] int32: the top-``k`` positions of ``scores`` [B, H, S] (absolute cache positions, -inf
    where not allowed), counted from each sequence's first real token (``starts`` [B]); -1 where fewer than
    ``k`` positions are allowed. Same choice as torch.topk on the same scores; in rank order only when
    ``ranked`` (a caller that cuts the list per sequence needs it; sorting a long list costs time)."""
    top = torch.topk(scores, min(k, scores.shape[-1]), dim=-1, sorted=ranked)
    relative = top.indices - starts.to(top.indices.dtype)[:, None, None]
    return torch.where(top.values > float("-inf"), relative, torch.full_like(relative, -1)).to(torch.int32)


def rows_read(index: torch.Tensor, unit: int, lengths: torch.Tensor) -> torch.Tensor:
    """K/V token rows [B, H] that a listed index [B, H, W] reads (entries past a sequence's end excluded, -1
    entries none), on the device."""
    first = index.long() * unit
    tokens = (lengths.long()[:, None, None] - first).clamp(min=0, max=unit)
    return (tokens * (index >= 0)).sum(-1)


def distinct_rows(index: torch.Tensor, num_kv_heads: int, cache_len: int) -> torch.Tensor:
    """Distinct token positions per KV head that a per-row token index [B, HS, W] names (the rows of one KV
    head pooled, -1 entries none), summed on the device: what must be read, however often a kernel re-reads."""
    batch, rows, width = index.shape
    pooled = index.reshape(batch, num_kv_heads, rows // num_kv_heads * width).long()
    seen = torch.zeros(batch, num_kv_heads, cache_len + 1, dtype=torch.bool, device=index.device)
    seen.scatter_(-1, torch.where(pooled >= 0, pooled, cache_len), True)  # -1 entries land in a spare column
    return seen[..., :cache_len].sum()


def union_rows(keep: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """K/V token rows a keep mask [B, Hkv or Hq, S] reads: per KV head, the union of its query heads' sets."""
    return keep.view(keep.shape[0], num_kv_heads, -1, keep.shape[-1]).any(dim=2).sum()


def attend_kept(
    layer_idx: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    keep: torch.Tensor,
    scaling: float,
    state: DecodeState,
    rows: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A reference path's tail: record the kept positions (`state.layer_data[("keep", layer)]`, which the method
    matrix checks against the method's naive model), count the K/V rows read (`rows`, default `union_rows`) and
    attend over the kept positions (masked attention in plain torch). keep [B, Hkv or Hq, S] bool."""
    state.layer_data[("keep", layer_idx)] = keep
    state.count("kv_tokens_read", rows if rows is not None else lambda: union_rows(keep, key.shape[1]))
    return masked_decode_attention(query, key, value, keep, scaling)


class KernelPath:
    """Mixin for a method whose config has a `path` option (auto, reference, triton) and whose efficient path is
    a Triton kernel: call `resolve_path` from check_config and `resolve_path_for` from prepare."""

    _path: str | None = None

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
        """The shape of a two-path position-selection method: `decode_efficient` where the Triton path runs,
        else the reference: the positions `reference_keep` chooses, through `attend_kept` (recorded, counted by
        `reference_rows`, masked attention). A method states only those hooks (or overrides this whole)."""
        if self.path == "triton":
            return self.decode_efficient(layer_idx, query, key, value, valid, scaling, state)
        keep = self.reference_keep(layer_idx, query, key, valid, scaling, state)
        rows = self.reference_rows(layer_idx, keep, key, valid)
        return attend_kept(layer_idx, query, key, value, keep, scaling, state, rows)

    def decode_efficient(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """The efficient path's decode step (same arguments and result as `Method.decode_attention`)."""
        raise NotImplementedError(f"{type(self).__name__} has no efficient path")

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """The reference path's kept positions, keep [B, Hkv or Hq, S] bool (at least one per row)."""
        raise NotImplementedError(f"{type(self).__name__} states no reference selection")

    def reference_rows(
        self, layer_idx: int, keep: torch.Tensor, key: torch.Tensor, valid: torch.Tensor
    ) -> Callable[[], torch.Tensor] | None:
        """The K/V rows the reference path counts for this layer; None: the union of each KV head's sets."""
        return None

    def kernel_refusals(self) -> list[str]:
        """Reasons this method's config keeps its kernels from running (none by default)."""
        return []

    def resolve_path(self, device: str, head_dim: int) -> list[str]:
        """Pick the path for a run shape; returns the reasons to refuse an impossible `path=triton`."""
        extra = self.kernel_refusals()
        self._path = choose_path(self.config.path, device, head_dim, extra)
        return path_reasons(self.name, self.config.path, device, head_dim, extra)

    def resolve_path_for(self, model: torch.nn.Module) -> None:
        reasons = self.resolve_path(str(next(model.parameters()).device), head_dim_of(model.config))
        if reasons:
            raise ValueError("; ".join(reasons))

    @property
    def path(self) -> str:
        """The path that runs: resolved for the run's device, else the option as given (auto: reference)."""
        return self._path or (self.config.path if self.config.path != "auto" else "reference")

    def graph_refusal(self) -> str | None:
        if self.path != "triton":
            return (
                f"{self.name}'s reference path reads each step's lengths back from the device; its Triton path "
                "(path=triton, the default on CUDA) is the graph-safe one"
            )
        return super().graph_refusal()
