"""Where a decode step's time goes: the kernels one step runs, their device time, and the gaps between them.

`bench --profile N` runs N more steps of each point (CUDA-graph replays where the step was captured) under
torch.profiler and keeps, per step: the number of kernels, the time the device was busy running them, and the
most expensive kernels. The difference between the timed step and the busy time is what no kernel used (launch
gaps inside the graph, host waits): the part of a step that fusing kernels could win back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TOP_KERNELS = 15


def profile_steps(step: Callable[[], Any], steps: int, on_cuda: bool) -> tuple[dict[str, Any], str]:
    """Profile `steps` calls of `step`; returns (per-step summary, a table of the top kernels per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    if on_cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        if on_cuda:
            torch.cuda.synchronize()
    if on_cuda:
        kernels = [e for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        time_us = lambda e: e.time_range.elapsed_us()  # noqa: E731  (a kernel event's own duration)
    else:  # the CPU smoke mode: the leaf ops stand in for kernels
        kernels = [e for e in profiler.events() if not e.cpu_children]
        time_us = lambda e: e.self_cpu_time_total  # noqa: E731
    per_name: dict[str, list[float]] = {}
    for event in kernels:
        per_name.setdefault(event.name, []).append(time_us(event))
    busy_ms = sum(sum(times) for times in per_name.values()) / steps / 1e3
    summary = {
        "profiled_steps": steps,
        "kernels_per_step": len(kernels) / steps,
        "busy_ms_per_step": busy_ms,
        "measured_on": "cuda kernels" if on_cuda else "cpu leaf ops (smoke)",
    }
    ranked = sorted(per_name.items(), key=lambda item: -sum(item[1]))[:TOP_KERNELS]
    lines = [f"{'ms/step':>9} {'calls/step':>10}  kernel"]
    for name, times in ranked:
        lines.append(f"{sum(times) / steps / 1e3:9.4f} {len(times) / steps:10.1f}  {name[:110]}")
    return summary, "\n".join(lines)
