"""Where the time of one `train-heads` step goes.

    python -m lychee_bench.tools.training_step [--model NAME] [--steps N] [--ctx-min A] [--ctx-max B]
                                               [--device auto|cpu|cuda] [--profile N]

Loads the model as `train-heads` does and runs the real `train_heads` in a throwaway folder, each time for 2
warm-up steps plus N measured ones, each run on samples of its own (a new context length is a new shape, so
repeating samples would flatter whatever caches per shape). The first run synchronises the device at every
phase boundary and prints the median time of each phase; the second runs untouched and gives the steps/s of the
loop as training runs it (the synchronised phases add up to more, since they forbid the host from queueing work
ahead of the device). On CUDA a third run lets SDPA use cuDNN too, which training leaves out. `--profile N`
adds a run under torch.profiler and prints its N most expensive ops (device time on CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend

from lychee_bench.harness import models
from lychee_bench.harness.runner import resolve_device, resolve_dtype
from lychee_bench.training.trainer import TRAINING_SDPA_BACKENDS, TrainConfig, train_heads

WARMUP = 2
PHASES = ("sample", "prefill", "teacher", "student", "backward", "logging")


class PhaseClock:
    """train_heads' `on_phase` hook: the time each phase begins and each step ends, optionally synchronised."""

    def __init__(self, device: torch.device, synchronise: bool) -> None:
        self.synchronise = synchronise and device.type == "cuda"
        self.device = device
        self.marks: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        if self.synchronise:
            torch.cuda.synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def phase_medians(self) -> dict[str, float]:
        """Median seconds of each phase over the steps after the warm-up."""
        spans: dict[str, list[float]] = {name: [] for name in PHASES}
        step = 0
        for (name, began), (_, ended) in zip(self.marks, self.marks[1:], strict=False):
            if name == "end":
                step += 1
            elif step >= WARMUP:
                spans[name].append(ended - began)
        return {name: statistics.median(times) for name, times in spans.items()}

    def steps_per_second(self) -> float:
        ends = [t for name, t in self.marks if name == "end"][WARMUP - 1 :]
        return (len(ends) - 1) / (ends[-1] - ends[0])


def profile_steps(model: Any, tokenizer: Any, settings: TrainConfig, folder: Path, top: int) -> str:
    """torch.profiler over the measured steps of one more run (`settings` in `folder`, a seed of its own): the
    `top` ops by device (else CPU) time."""
    from torch.profiler import ProfilerActivity, profile, schedule

    device = next(model.parameters()).device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = settings.steps - WARMUP
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables: list[str] = []

    def keep_table(profiler: Any) -> None:
        tables.append(profiler.key_averages().table(sort_by=key, row_limit=top))

    plan = schedule(wait=0, warmup=WARMUP, active=steps, repeat=1)
    with profile(activities=activities, schedule=plan, on_trace_ready=keep_table) as profiler:

        def on_phase(name: str) -> None:
            if name == "end":
                profiler.step()

        train_heads(model, tokenizer, replace(settings, out_dir=folder, seed=len(PHASES)), on_phase=on_phase)
    return tables[0] if tables else "(no profile: too few steps)"


def bench(
    model_name: str | None, steps: int, ctx_min: int, ctx_max: int, device_name: str, profile_top: int = 0
) -> None:
    device_name = resolve_device(device_name)
    dtype = resolve_dtype("auto", device_name)
    source = models.resolve_model(model_name)
    config = models.load_config(source)
    reasons = models.check_architecture(config) + models.check_context(config, ctx_max, source.name)
    if reasons:
        raise models.ModelError("; ".join(reasons))
    model = models.load_model(source, config, device_name, dtype)
    tokenizer = models.load_tokenizer(source)
    device = next(model.parameters()).device
    settings = TrainConfig(
        out_dir=Path(tempfile.gettempdir()),  # a placeholder: every run below is given a throwaway folder of its own
        target_density=0.1,
        steps=WARMUP + steps,
        ctx_min=ctx_min,
        ctx_max=ctx_max,
        checkpoint_every=WARMUP + steps,
        progress=False,
        model_info={"name": source.name, "fingerprint": source.fingerprint},
    )
    runs = {"synchronised": (True, TRAINING_SDPA_BACKENDS), "free": (False, TRAINING_SDPA_BACKENDS)}
    if device.type == "cuda":
        runs["free, cuDNN allowed"] = (False, (*TRAINING_SDPA_BACKENDS, SDPBackend.CUDNN_ATTENTION))
    clocks = {name: PhaseClock(device, synchronise) for name, (synchronise, _) in runs.items()}
    with tempfile.TemporaryDirectory(prefix="lychee-bench-step-") as folder:
        for seed, (name, (_, backends)) in enumerate(runs.items()):
            clock = clocks[name]
            run = replace(settings, out_dir=Path(folder) / str(seed), seed=seed, sdpa_backends=backends)
            train_heads(model, tokenizer, run, on_phase=clock)
    medians = clocks["synchronised"].phase_medians()
    print(f"{source.name} on {device} ({dtype}), contexts {ctx_min}..{ctx_max}, {steps} steps after {WARMUP} warm-up")
    print(f"{'phase':<12}{'median ms':>10}")
    for name, seconds in [*medians.items(), ("sum", sum(medians.values()))]:
        print(f"{name:<12}{1000 * seconds:>10.1f}")
    for name in list(runs)[1:]:
        rate = clocks[name].steps_per_second()
        print(f"{name + ' loop:':<28}{rate:.3f} steps/s ({1000 / rate:.1f} ms/step)")
    if profile_top:
        with tempfile.TemporaryDirectory(prefix="lychee-bench-profile-") as folder:
            print(profile_steps(model, tokenizer, settings, Path(folder), profile_top))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="embedded model name, a local folder or a hub id")
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after 2 warm-up steps)")
    parser.add_argument("--ctx-min", type=int, default=1000)
    parser.add_argument("--ctx-max", type=int, default=10000)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also profile the steps: top N ops")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.profile < 0:
        parser.error("--steps must be at least 1 and --profile at least 0")
    bench(args.model, args.steps, args.ctx_min, args.ctx_max, args.device, args.profile)


if __name__ == "__main__":
    main()
