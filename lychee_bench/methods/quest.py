"""Quest (Tang et al., 2024, arXiv 2406.10774): query-aware page selection.

The cache is cut into pages of 16 real tokens. Each page keeps the element-wise min and max of its keys (per
KV head); a page's score for a query head is sum_d max(q_d·min_d, q_d·max_d), an upper bound of every q·k in
the page. Each query head keeps its top `budget // page_size` pages; the page holding the current token is
always one of them (SPEC §4 does not say; Quest's code always attends to the last, partly filled page).
Layers 0–1 are dense, as in the paper.

Two paths. The reference recomputes every page's bounds from the cache at every step (plain torch, masked
attention). The efficient path keeps the bounds from step to step as Quest does (computed in full at the first
decode step after a prefill, then only the page receiving the new token is recomputed), scores pages with two
matmuls (sum_d max(q_d·min_d, q_d·max_d) = q⁺·max + q⁻·min), and attends to the chosen pages with the shared
Triton kernel (16-token units, one row per query head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import valid_rank
from lychee_bench.methods.efficient import KernelPath, StepGeometry, attend, check_path, distinct_rows, step_geometry
from lychee_bench.methods.naive import naive_rows
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import kv_token_bytes


@dataclass
class QuestConfig:
    """`budget` tokens per query head (whole pages: budget // page_size of them). `path`: auto (the shared
    Triton kernel on CUDA), reference or triton."""

    budget: int = 4096
    page_size: int = 16
    dense_layers: int = 2
    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("quest", self.path)
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


class QuestAttention(KernelPath, Method):
    """Top pages by min/max key bound per query head (reference path: masked attention in plain torch;
    efficient path: kept page bounds and the shared kernel over the chosen pages)."""

    name: ClassVar[str] = "quest"
    plot_style: ClassVar[tuple[str, str]] = ("#9467bd", "D")  # colour, marker in every figure
    description: ClassVar[str] = "Quest: pages of 16 tokens ranked by a min/max key bound; top pages per head"
    Config: ClassVar[type] = QuestConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = (
        "nothing gathered: page bounds per KV head, pages chosen per query head from its own KV head's bounds"
    )

    def check_config(self, shape: RunShape) -> list[str]:
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        self.resolve_path_for(model)

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int:
        """Dense layers all tokens; other layers the page bounds (min and max per page, float32) and each query
        head's chosen pages."""
        cfg = self.config
        dense = min(cfg.dense_layers, shape.num_layers)
        pages = -(-ctx // cfg.page_size)
        chosen = ctx if ctx <= cfg.budget else min(ctx, cfg.budget // cfg.page_size * cfg.page_size)
        bounds = shape.num_kv_heads * pages * 2 * shape.head_dim * 4  # float32 min and max per page
        per_sparse_layer = bounds + shape.num_heads * chosen * kv_token_bytes(shape)
        return (
            dense * shape.num_kv_heads * ctx * kv_token_bytes(shape) + (shape.num_layers - dense) * per_sparse_layer
        ) * batch

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """Dense layers, and rows within budget, attend to every real token; otherwise each query head takes the
        real tokens' last page and the `budget // page_size - 1` other pages with the highest bound
        sum_d max(q_d·min_d, q_d·max_d) over the page's keys."""
        cfg = self.config
        out = []
        for row in naive_rows(query, key, valid):
            real = row.real
            if layer_idx < cfg.dense_layers or len(real) <= cfg.budget:
                out.append(row.all_heads(set(real)))
                continue
            pages = [real[i : i + cfg.page_size] for i in range(0, len(real), cfg.page_size)]
            heads = []
            for h in range(row.num_heads):
                q, kv = row.query[h], key[row.b, h // row.group].double()
                bound = [
                    float(sum(max(q[d] * kv[p, d].min(), q[d] * kv[p, d].max()) for d in range(q.shape[-1])))
                    for p in pages
                ]
                others = sorted(range(len(pages) - 1), key=lambda i: -bound[i])[: cfg.budget // cfg.page_size - 1]
                heads.append({pos for i in [*others, len(pages) - 1] for pos in pages[i]})
            out.append(heads)
        return out

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

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """Dense layers every real token; the others `select`'s pages (per query head). K/V rows read: the union
        of the group's pages per KV head."""
        if layer_idx < self.config.dense_layers:
            return valid[:, None, :].expand(-1, key.shape[1], -1)
        return self.select(query, key, valid, state.host_lengths(valid))

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
        geometry = step_geometry(valid, state)
        num_kv_heads = key.shape[1]
        if layer_idx < self.config.dense_layers:
            state.count("kv_tokens_read", lambda: geometry.lengths.sum() * num_kv_heads)
            return attend(query, key, value, scaling, geometry, None)
        low, high = self._bounds(layer_idx, key, valid, geometry, state)
        index = self.select_pages(query, low, high, geometry)
        # The page table is read whole (both bounds, float32); the union of the group's pages per KV head.
        state.count("quest_summary_pages", float(low.shape[0] * num_kv_heads * low.shape[2]))
        state.count("kv_tokens_read", lambda: self._pages_to_tokens(index, num_kv_heads, key.shape[2], geometry))
        return attend(query, key, value, scaling, geometry, index, unit=self.config.page_size)

    def _bounds(
        self, layer_idx: int, key: torch.Tensor, valid: torch.Tensor, geometry: StepGeometry, state: DecodeState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's page bounds [B, Hkv, P, D] in the cache's dtype (a min or max of keys is one of the keys,
        so nothing is rounded), kept in `state.persistent` across steps: built whole when missing or too short,
        else only the page holding each sequence's newest token is recomputed."""
        page = self.config.page_size
        pages = max(1, -(-geometry.longest // page))
        kept = state.persistent.get(("quest", layer_idx))
        if kept is None or kept[0].shape[2] < pages:
            low, high, _, _ = page_bounds(key, valid, page, geometry.longest)
            low, high = low.to(key.dtype), high.to(key.dtype)
            state.persistent[("quest", layer_idx)] = (low, high)
            return low, high
        low, high = kept
        last = (geometry.lengths.long() - 1) // page  # [B] the page of the newest token
        offsets = last[:, None] * page + torch.arange(page, device=key.device)[None, :]  # [B, page] relative
        inside = offsets < geometry.lengths.long()[:, None]
        rows = (geometry.starts.long()[:, None] + offsets).clamp(max=key.shape[2] - 1)
        gathered = key.gather(2, rows[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[3]))
        mask = inside[:, None, :, None]
        new_low = gathered.masked_fill(~mask, float("inf")).amin(2)  # [B, Hkv, D]
        new_high = gathered.masked_fill(~mask, float("-inf")).amax(2)
        at = last[:, None, None, None].expand(-1, key.shape[1], 1, key.shape[3])
        low.scatter_(2, at, new_low[:, :, None, :])
        high.scatter_(2, at, new_high[:, :, None, :])
        return low, high

    def select_pages(
        self, query: torch.Tensor, low: torch.Tensor, high: torch.Tensor, geometry: StepGeometry
    ) -> torch.Tensor:
        """[B, Hq, budget // page_size] page indices per query head (the newest page last, -1 unused): the same
        pages as `select`, or all pages of a sequence that fits the budget."""
        from lychee_bench.kernels.token_logits import token_logits

        cfg = self.config
        batch, num_heads = query.shape[:2]
        count = geometry.lengths.long()
        num_pages = (count + cfg.page_size - 1) // cfg.page_size  # [B]
        # The bound as two products over the kept pages (q+ . max + q- . min), each in one pass over the bounds;
        # -inf past a sequence's pages.
        q = query[:, :, 0]
        first = torch.zeros_like(geometry.starts)
        pages_held = num_pages.to(torch.int32)
        scores = token_logits(q.clamp(min=0), high, pages_held, first) + token_logits(
            q.clamp(max=0), low, pages_held, first
        )
        pages = torch.arange(scores.shape[-1], device=scores.device)
        last = num_pages - 1
        allowed = (pages[None, :] < last[:, None])[:, None, :]  # existing pages other than the newest
        width = cfg.budget // cfg.page_size
        k = min(width - 1, scores.shape[-1])
        chosen = torch.empty(batch, num_heads, 0, dtype=torch.long, device=scores.device)
        if k > 0:
            top = torch.topk(scores.masked_fill(~allowed, float("-inf")), k, dim=-1, sorted=False)  # a set
            chosen = torch.where(top.values > float("-inf"), top.indices, -1)
        newest = last[:, None, None].expand(-1, num_heads, 1)
        selected = torch.cat([chosen, newest], dim=-1)
        selected = torch.nn.functional.pad(selected, (0, width - selected.shape[-1]), value=-1)
        every = torch.arange(width, device=scores.device)[None, None, :].expand(batch, num_heads, -1)
        every = torch.where(every < num_pages[:, None, None], every, -1)
        fits = (count <= cfg.budget)[:, None, None]
        return torch.where(fits, every, selected).to(torch.int32)

    def _pages_to_tokens(
        self, index: torch.Tensor, num_kv_heads: int, cache_len: int, geometry: StepGeometry
    ) -> torch.Tensor:
        """Distinct K/V token rows per KV head behind a page index (the group's pages pooled)."""
        page = self.config.page_size
        tokens = index.long()[..., None] * page + torch.arange(page, device=index.device)
        tokens = torch.where(
            (index[..., None] >= 0) & (tokens < geometry.lengths.long()[:, None, None, None]), tokens, -1
        )
        return distinct_rows(tokens.flatten(2).to(torch.int32), num_kv_heads, cache_len)
