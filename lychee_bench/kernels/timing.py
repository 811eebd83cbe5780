"""Timing on the device (SPEC §6): CUDA events around graph replays, medians and spread, one copy for every
benchmark of the project (the kernel benches here, the latency bench in tasks/latency), and a wall-clock stand-in
for the CPU smoke mode. Warm up first (compiles kernels), capture, replay; synchronise before reading a time."""

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


def time_in_graph(calls: list[Callable[[], Any]], reps: int, warmup: int = 3) -> Timing:
    """Per-call time of ``calls`` captured back to back in one CUDA graph (pass time / len(calls)): eager warm-up
    on a side stream, capture, warm replays, then each replay between CUDA events."""
    graph = capture_graph(lambda: [call() for call in calls], warmup)
    for _ in range(warmup):
        graph.replay()
    timing = time_cuda(graph.replay, reps, warmup=0)
    del graph
    return scaled(timing, 1.0 / len(calls))


def time_eager(calls: list[Callable[[], Any]], reps: int, warmup: int = 3) -> Timing:
    """The fallback when a graph cannot be captured: the calls launched eagerly between CUDA events (host launch
    overhead included, so slower than a graph); per call."""
    return scaled(time_cuda(lambda: [call() for call in calls], reps, warmup), 1.0 / len(calls))


def scaled(timing: Timing, factor: float) -> Timing:
    return Timing(timing.median_ms * factor, timing.p10_ms * factor, timing.p90_ms * factor, timing.reps)


def l2_bytes() -> int:
    """The device's L2 cache size (inputs rotated over several times this measure cold-L2 times)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or 50 << 20)
