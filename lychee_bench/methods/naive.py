"""Helpers for `Method.naive_selection`: the deliberately naive (Python sets, float64) models of which positions
a method attends to, which tests/test_method_matrix.py checks every registered method's decode step against."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NaiveRow:
    """One batch row of a decode step, in float64: its real positions and the raw logits q·k."""

    b: int
    real: list[int]  # positions of the real tokens (left padding excluded), in order
    query: torch.Tensor  # [Hq, D] float64
    logits: torch.Tensor  # [Hq, S] q·k per query head against its KV head
    mean_logits: torch.Tensor  # [Hkv, S] the group-mean query against each KV head
    num_heads: int
    num_kv_heads: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def all_heads(self, positions: set[int]) -> list[set[int]]:
        """The same set for every query head."""
        return [set(positions) for _ in range(self.num_heads)]


def naive_rows(query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor) -> list[NaiveRow]:
    """Per batch row of query [B, Hq, 1, D], key [B, Hkv, S, D], valid [B, S]: what a naive model starts from."""
    batch, num_heads = query.shape[:2]
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    rows = []
    for b in range(batch):
        q = query[b, :, 0].double()
        logits = torch.einsum("hd,hsd->hs", q, key[b].double().repeat_interleave(group, 0))
        mean_logits = torch.einsum("hd,hsd->hs", q.view(-1, group, q.shape[-1]).mean(1), key[b].double())
        rows.append(NaiveRow(b, real_positions(valid[b]), q, logits, mean_logits, num_heads, num_kv_heads))
    return rows


def real_positions(valid_row: torch.Tensor) -> list[int]:
    """The positions where `valid_row` [S] is true."""
    return torch.nonzero(valid_row).flatten().tolist()


def top_positions(positions: list[int], scores: torch.Tensor, k: int) -> set[int]:
    """The `k` of `positions` with the highest `scores` (ties: the earlier position)."""
    return set(sorted(positions, key=lambda p: -float(scores[p]))[:k])


def sink_recent_positions(positions: list[int], sink: int, recent: int) -> set[int]:
    """The first `sink` and the last `recent` of `positions`."""
    return set(positions[:sink]) | set(positions[len(positions) - recent :])
