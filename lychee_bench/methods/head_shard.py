"""The KV heads one process holds under tensor parallelism, as a method sees them.

Under tensor parallelism (harness/tensor_parallel.py) each of W processes holds a contiguous slice of every
layer's KV heads, with the query heads of their groups (transformers' plan shards q/k/v by output rows, so rank r
holds KV heads [r * Hkv / W, (r + 1) * Hkv / W) and exactly the query heads that share them). A method then sees
query [B, Hq / W, 1, D] and keys [B, Hkv / W, S, D]; its per-head tables (head roles, head maps) are indexed by
global head, so it slices them with `local_heads`. A method that needs another rank's heads (Kascade's head map
may point a reuse head at an anchor head held elsewhere) gathers them with `HeadShard.gather`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lychee_bench.methods.base import RunShape


@dataclass(frozen=True)
class HeadShard:
    """KV heads [first, first + count) of `total`, held by process `rank` of `world`. `gather(t)` all-gathers a
    tensor [B, count, ...] from every process into [B, total, ...] in head order (None in a single process)."""

    rank: int
    world: int
    first: int
    count: int
    total: int
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def for_rank(
        cls, total: int, rank: int, world: int, gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> HeadShard:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: a rank must lie in 0..world-1")
        if total % world:
            raise ValueError(f"{total} KV heads do not split evenly over {world} processes")
        count = total // world
        return cls(rank=rank, world=world, first=rank * count, count=count, total=total, gather=gather)

    @property
    def heads(self) -> slice:
        return slice(self.first, self.first + self.count)

    def describe(self) -> dict[str, int]:
        return {"rank": self.rank, "world": self.world, "first_kv_head": self.first, "kv_heads": self.count}


def local_heads(table: torch.Tensor, shard: HeadShard | None) -> torch.Tensor:
    """The rank's columns of a per-KV-head table [..., Hkv] (all of it without a shard)."""
    return table if shard is None else table[..., shard.heads]


def gather_heads(local: torch.Tensor, shard: HeadShard | None) -> torch.Tensor:
    """Every rank's [B, count, ...] as one [B, total, ...] (the tensor itself without a shard or in one process)."""
    if shard is None or shard.world == 1:
        return local
    if shard.gather is None:
        raise RuntimeError("this head shard has no gather: the harness builds it with one under tensor parallelism")
    return shard.gather(local)


def local_shape(shape: RunShape, world: int) -> RunShape:
    """The shape one of `world` processes runs: its share of the query and KV heads (byte floors per GPU)."""
    if world == 1:
        return shape
    return dataclasses.replace(shape, num_heads=shape.num_heads // world, num_kv_heads=shape.num_kv_heads // world)
