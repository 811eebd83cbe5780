"""Timing on the device: CUDA events around graph replays, medians and spread (SPEC §6), and a wall-clock
stand-in for the CPU smoke mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}_ms": self.median_ms,
            f"{prefix}_p10_ms": self.p10_ms,
            f"{prefix}_p90_ms": self.p90_ms,
            f"{prefix}_reps": self.reps,
        }


def summarize_times(times: list[float]) -> Timing:
    ordered = sorted(times)

    def pick(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return Timing(pick(0.5), pick(0.1), pick(0.9), len(ordered))


def time_cuda(run: Callable[[], Any], reps: int, warmup: int = 3) -> Timing:
    """Median of ``reps`` runs, each bracketed by CUDA events and synchronised before its time is read."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summarize_times(times)


def time_wall(run: Callable[[], Any], reps: int, warmup: int = 1) -> Timing:
    """Wall-clock timing for the CPU smoke mode (not a measurement of anything that matters)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize_times(times)


def capture_graph(calls: Callable[[], Any], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Warm ``calls`` up on a side stream and capture it once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            calls()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    return graph
