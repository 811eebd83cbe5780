"""Quest (Tang et al., 2024, arXiv 2406.10774): query-aware page selection.

The cache is cut into pages of 16 real tokens. Each page keeps the element-wise min and max of its keys (per
KV head); a page's score for a query head is sum_d max(q_d·min_d, q_d·max_d), an upper bound of every q·k in
the page. Each query head keeps its top `budget // page_size` pages; the page holding the current token is
always one of them (SPEC §4 does not say; Quest's code always attends to the last, partly filled page).
Layers 0–1 are dense, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lychee_bench.harness.attention import DecodeState
from lychee_bench.methods.base import Method
from lychee_bench.methods.common import masked_decode_attention, valid_rank


@dataclass
class QuestConfig:
    """`budget` tokens per query head (whole pages: budget // page_size of them)."""

    budget: int = 4096
    page_size: int = 16
    dense_layers: int = 2

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"quest page_size {self.page_size} must be >= 1")
        if self.budget < self.page_size:
            raise ValueError(f"quest budget {self.budget} is below one page of {self.page_size} tokens; raise --budget")
        if self.dense_layers < 0:
            raise ValueError(f"quest dense_layers {self.dense_layers} must be >= 0")


def page_bounds(
    key: torch.Tensor, valid: torch.Tensor, page_size: int, longest: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Per page of `page_size` real tokens: key min and max [B, Hkv, P, D], page exists [B, P], page id [B, S].

    `longest`, the most real tokens of any row as a host value, spares the read-back that sizes the pages."""
    rank, count = valid_rank(valid)
    longest = int(count.max().item()) if longest is None else longest
    num_pages = max(1, -(-longest // page_size))
    page_id = torch.where(valid, rank // page_size, torch.full_like(rank, num_pages))  # padding -> spare page
    batch, num_kv_heads, _, head_dim = key.shape
    index = page_id[:, None, :, None].expand(batch, num_kv_heads, -1, head_dim)
    shape = (batch, num_kv_heads, num_pages + 1, head_dim)
    low = torch.full(shape, float("inf"), device=key.device).scatter_reduce(2, index, key.float(), "amin")
    high = torch.full(shape, float("-inf"), device=key.device).scatter_reduce(2, index, key.float(), "amax")
    pages = torch.arange(num_pages, device=key.device)
    exists = pages[None, :] * page_size < count
    return low[:, :, :num_pages], high[:, :, :num_pages], exists, page_id


def page_scores(query: torch.Tensor, low: torch.Tensor, high: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Quest's upper bound sum_d max(q_d·min_d, q_d·max_d): [B, Hq, P] (-inf for pages a row lacks)."""
    group = query.shape[1] // low.shape[1]
    q = query.float()[:, :, 0, None, :]  # [B, Hq, 1, D]
    low, high = low.repeat_interleave(group, dim=1), high.repeat_interleave(group, dim=1)
    bound = torch.maximum(q * low, q * high).sum(-1)
    return bound.masked_fill(~exists[:, None, :], float("-inf"))


class QuestAttention(Method):
    """Top pages by min/max key bound per query head (reference path: masked attention in plain torch)."""

    name: ClassVar[str] = "quest"
    description: ClassVar[str] = "Quest: pages of 16 tokens ranked by a min/max key bound; top pages per head"
    Config: ClassVar[type] = QuestConfig
    graph_safe: ClassVar[bool] = True

    def select(
        self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, lengths: list[int] | None = None
    ) -> torch.Tensor:
        """keep [B, Hq, S]: the top pages (the current token's page always) or everything within budget.
        `lengths`: the real tokens per row on the host, when known."""
        cfg = self.config
        longest = None if lengths is None else max(lengths)
        low, high, exists, page_id = page_bounds(key, valid, cfg.page_size, longest)
        scores = page_scores(query, low, high, exists)
        _, count = valid_rank(valid)
        last_page = (count - 1).clamp(min=0) // cfg.page_size  # [B, 1]
        pages = torch.arange(scores.shape[-1], device=key.device)
        is_last = (pages[None, :] == last_page)[:, None, :]  # [B, 1, P]
        candidates = scores.masked_fill(is_last, float("-inf"))
        k = min(cfg.budget // cfg.page_size - 1, scores.shape[-1])
        chosen = is_last.expand_as(scores).clone()
        if k > 0:
            order = torch.topk(candidates, k, dim=-1).indices
            chosen.scatter_(-1, order, True)
            chosen &= exists[:, None, :]
        keep = torch.gather(
            chosen, -1, page_id.clamp(max=scores.shape[-1] - 1)[:, None, :].expand(-1, scores.shape[1], -1)
        )
        keep &= valid[:, None, :]
        everything = (count[:, 0] <= cfg.budget)[:, None, None]
        return torch.where(everything, valid[:, None, :].expand_as(keep), keep)

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
        num_kv_heads = key.shape[1]
        if layer_idx < self.config.dense_layers:
            keep = valid[:, None, :].expand(-1, num_kv_heads, -1)
        else:
            keep = self.select(query, key, valid, state.host_lengths(valid))
        state.layer_data[("keep", layer_idx)] = keep
        per_kv = keep.view(keep.shape[0], num_kv_heads, -1, keep.shape[-1]).any(dim=2)
        state.count("kv_tokens_read", per_kv.sum())
        return masked_decode_attention(query, key, value, keep, scaling)
