"""Several processes under `torchrun`: who this process is, how the samples are dealt, and the few collective
steps a data-parallel `run` needs.

`torchrun` (torch.distributed.run) starts the processes and, across nodes, does the rendezvous; this module only
reads what it sets (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE) and joins the process group it describes.
Without those variables, or with a world of one, everything here is a no-op and a run is one plain process.

Data parallel has no tensor traffic: every rank holds the whole model and runs its own share of the samples. The
collectives are control only (agree on errors, share the set of finished samples, wait for every rank), so they
run on a gloo group even when the default group is NCCL (which tensor parallel uses).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

# How long a rank waits in a collective for the others: long, because rank 0 builds the samples while the others
# wait, and a rank that finished its share waits for the slowest one. A rank that dies is noticed by torchrun,
# which stops the whole launch, so this bounds only a hang outside torchrun.
TIMEOUT_ENV = "LYCHEE_BENCH_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 360.0


class DistributedError(RuntimeError):
    """The torchrun environment cannot be used as it is (bad variables, a device that does not exist)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch (torchrun's variables); a plain process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks_from_env(env: dict[str, str] | None = None) -> Ranks:
    """The ranks torchrun gave this process, or rank 0 of 1 when it was not launched by torchrun."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Ranks()
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    try:
        values = {name: int(env.get(name, "0" if name != "LOCAL_WORLD_SIZE" else env["WORLD_SIZE"])) for name in names}
    except ValueError:
        shown = ", ".join(f"{name}={env.get(name)!r}" for name in names)
        raise DistributedError(f"torchrun variables must be integers, got {shown}; launch with torchrun") from None
    ranks = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if not (0 <= ranks.rank < ranks.world_size and 0 <= ranks.local_rank < ranks.local_world_size):
        raise DistributedError(
            f"RANK={ranks.rank} of WORLD_SIZE={ranks.world_size}, LOCAL_RANK={ranks.local_rank} of "
            f"LOCAL_WORLD_SIZE={ranks.local_world_size} do not describe a process of the launch; launch with torchrun"
        )
    return ranks


def rank_device(device: str, ranks: Ranks) -> str:
    """The device this rank runs on: with several ranks, `cuda` becomes `cuda:LOCAL_RANK` (one GPU per process,
    as torchrun's --nproc-per-node counts them); `cpu` stays. A fixed `cuda:N` cannot serve several ranks."""
    if not ranks.parallel or not device.startswith("cuda"):
        return device
    if device != "cuda" and device != f"cuda:{ranks.local_rank}":
        raise DistributedError(
            f"--device {device} under torchrun with {ranks.world_size} processes: each process takes the GPU of its "
            "LOCAL_RANK; pass --device cuda (or auto), and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    import torch

    if ranks.local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {ranks.local_rank} needs GPU {ranks.local_rank}, but this node shows "
            f"{torch.cuda.device_count()}; give torchrun --nproc-per-node at most the GPU count"
        )
    return f"cuda:{ranks.local_rank}"


class Group:
    """The launch's process group as `run` uses it. A world of one needs no group: every step is then local."""

    def __init__(self, ranks: Ranks, device: str):
        self.ranks = ranks
        self.control: Any = None  # the gloo group the control collectives use
        self._owns_default = False
        if not ranks.parallel:
            return
        import torch
        import torch.distributed as dist

        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # kernels, graphs and memory queries use the rank's own GPU
        timeout = timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN)))
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend, timeout=timeout)
            self._owns_default = True
        self.control = dist.group.WORLD
        if dist.get_backend() != "gloo":
            self.control = dist.new_group(backend="gloo", timeout=timeout)

    def barrier(self) -> None:
        if self.ranks.parallel:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.ranks.parallel:
            return [value]
        import torch.distributed as dist

        found: list[Any] = [None] * self.ranks.world_size
        dist.all_gather_object(found, value, group=self.control)
        return found

    def from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank (the others pass anything, e.g. None)."""
        if not self.ranks.parallel:
            return value
        import torch.distributed as dist

        box = [value if self.ranks.main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def agree(self, step: Callable[[], T], on_error: Callable[[list[str]], Exception]) -> T:
        """Runs `step` on every rank; if it raised on any rank, every rank raises `on_error(reasons)` with each
        failing rank's message (so no rank waits forever for one that gave up). Ranks that fail alike say so once."""
        result: Any = None
        error: str | None = None
        try:
            result = step()
        except Exception as caught:  # any failure must reach the other ranks, or they would hang
            error = _message(caught)
            if not self.ranks.parallel:
                raise
        errors = self.gather(error)
        if any(errors):
            raised = on_error(_reasons(errors))
            raised.on_every_rank = True  # type: ignore[attr-defined]  # rank 0 alone needs to print it
            raise raised
        return result

    @contextlib.contextmanager
    def node_main_first(self) -> Iterator[None]:
        """The block runs first on each node's local rank 0 and then on the others, so a cache that the block
        fills (converted model, generated samples) is built once per node and read by the rest."""
        if self.ranks.parallel and self.ranks.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.ranks.parallel and self.ranks.local_rank == 0:
                self.barrier()

    def close(self) -> None:
        if self._owns_default:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_default = False


def _message(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "\n".join(str(reason) for reason in reasons)
    return f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error)


def _reasons(errors: Sequence[str | None]) -> list[str]:
    """One reason per distinct message, naming the ranks that gave it when not all did."""
    by_message: dict[str, list[int]] = {}
    for rank, error in enumerate(errors):
        if error:
            by_message.setdefault(error, []).append(rank)
    if len(by_message) == 1 and len(next(iter(by_message.values()))) == len(errors):
        return next(iter(by_message)).split("\n")
    reasons = []
    for message, ranks in by_message.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        reasons += [f"{who}: {line}" for line in message.split("\n")]
    return reasons


def deal(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Deals work items to ranks, balanced by cost: the most costly first, each to the least-loaded rank (the
    lower rank on a tie). Returns each rank's item positions in their original order. Depends only on the costs
    and the world size, so every rank computes the same deal without talking to the others."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for position in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[position]
        shares[rank].append(position)
    return [sorted(share) for share in shares]


def describe(ranks: Ranks, devices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The launch's parallel layout, for the run manifest: world size, nodes, and each rank's host and device."""
    if not ranks.parallel:
        return {"layout": "single process", "world_size": 1}
    return {
        "layout": "data parallel",
        "world_size": ranks.world_size,
        "nodes": len({(d.get("host"), d.get("node")) for d in devices}),
        "launcher": "torchrun",
        "ranks": [{"rank": rank, **device} for rank, device in enumerate(devices)],
    }


def this_process(device: str, ranks: Ranks) -> dict[str, Any]:
    """What `describe` lists for this rank."""
    node = int(os.environ.get("GROUP_RANK", "0") or 0)  # torchrun's node rank
    return {"host": socket.gethostname(), "node": node, "local_rank": ranks.local_rank, "device": device}


def shown_by_another_rank(error: BaseException) -> bool:
    """True on ranks other than 0 for an error every rank raised alike (Group.agree): rank 0 prints it."""
    return bool(getattr(error, "on_every_rank", False)) and not ranks_from_env().main


def rank_fields(ranks: Ranks) -> dict[str, Any]:
    """What a data-parallel rank's records say about where they were made."""
    return {"layout": "data parallel", "rank": ranks.rank, "world_size": ranks.world_size}


def holder(ranks: Ranks) -> str:
    """How a folder lock names the launch that holds it."""
    return f"rank 0 of a {ranks.world_size}-process torchrun launch"


class SharedProgress:
    """Rank 0's progress bar over the whole launch: each update moves it by the sample records every rank's
    shard gained (`counter.count()`, e.g. records.NewSamples), not by rank 0's own alone."""

    def __init__(self, bar: Any, counter: Any):
        self.bar = bar
        self.counter = counter

    def update(self, _count: int = 1) -> None:
        self.bar.update(self.counter.count())

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text)
