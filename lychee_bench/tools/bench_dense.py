"""Kernel bench: the shared kernel's all-dense path (``full`` attention's fast path) against torch SDPA flash decode.

Usage (GPU only; CPU tests: tests/test_kernels_sparse.py)::

    python -m lychee_bench.tools.bench_dense --out results/kernels/h200-dense

SPEC §4 wants ``full`` attention on the best dense kernel available; SPEC §6 says how to time it. For each
shape (Llama-3-8B: 32 query heads, 8 KV heads, d 128; SmolLM2-135M: 9, 3, d 64), context and batch, bf16,
one query token per sequence at exactly the context length, it times:

- ``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``, ``sdpa_default``: torch SDPA with that backend forced
  (default: torch's own choice), no mask, ``enable_gqa=True``; the fastest of them is the target (``vs SDPA``
  is time over its time);
- ``general``: the shared kernel as it was, all rows dense through the position-list kernel
  (``specialise_dense=False``);
- ``dense tT wW sS pP``: the all-dense kernel with TILE T, W warps, S stages and P programs per SM (``*`` marks
  the shipped default), and ``dense default partials`` (its first launch alone: the merge costs the rest).

Every variant is first checked against a float32 reference on the run's random inputs (relative error
``|out - ref| / |ref|`` below 1e-2); one that fails to compile or is wrong is reported and not timed. Times are
medians of CUDA-event-timed replays of a CUDA graph of 32 layer calls that rotate over enough K/V copies that
the L2 cache cannot hold them, after warm-up; the copy bandwidth (``torch.mul(src, 1, out=dst)`` over 2 GiB,
read + write counted, in a graph) is measured in the same run. A short table comes last; everything goes to
``DIR/bench_dense.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

from lychee_bench.kernels.timing import l2_bytes, time_in_graph

SHAPES = {"llama3-8b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}  # query heads, KV heads, head dim
CONTEXTS = (32768, 131072)
BATCHES = (1, 4)
LAYERS = 32  # calls per graph replay
SWEEP = dict(tile=(64, 128), warps=(4, 8), stages=(2, 3, 4), programs_per_sm=(1, 2, 3, 4))
MAX_REL_ERROR = 1e-2
DTYPE = torch.bfloat16
DEVICE = "cuda"  # a module constant so the logic can be dry-run on CPU; the timings need CUDA


def fail_without_cuda() -> None:
    if not torch.cuda.is_available():
        print(
            "bench_dense times GPU kernels and needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). On CPU run the correctness tests instead: "
            "python -m pytest tests/test_kernels_sparse.py",
            file=sys.stderr,
        )
        sys.exit(2)


def copy_bandwidth() -> dict[str, Any]:
    """Bytes per second of an elementwise copy on the SMs (read + write of 2 GiB): the ceiling of SPEC §6."""
    src = torch.randn(1 << 30, dtype=DTYPE, device=DEVICE)
    dst = torch.empty_like(src)
    timing = time_in_graph([lambda: torch.mul(src, 1, out=dst)], reps=20)
    nbytes = 2 * src.numel() * src.element_size()
    return dict(**dataclasses.asdict(timing), bytes=nbytes, bytes_per_s=nbytes / (timing.median_ms * 1e-3))


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Float32 attention of q [B, Hq, D] over all of k/v [B, Hkv, S, D], the GQA group folded into rows."""
    batch, hq, dim = q.shape
    hkv = k.shape[1]
    scores = torch.matmul(q.float().view(batch, hkv, hq // hkv, dim), k.float().transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).view(batch, hq, dim)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def variants(
    context: int, scale: float, lengths: torch.Tensor, starts: torch.Tensor
) -> list[tuple[str, dict[str, Any], Callable[..., Any]]]:
    """(name, knobs, make) where make(q, k, v) returns one layer's call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lychee_bench.kernels import sparse_decode as sd

    def sdpa(backends):
        def make(q, k, v):
            def call():
                with sdpa_kernel(backends):
                    return F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)[:, :, 0]

            return call

        return make

    def general(q, k, v):
        return lambda: sd.sparse_decode_attention(
            q, k, v, lengths, starts, None, scale, max_length=context, specialise_dense=False
        )

    def dense(launch):
        def make(q, k, v):
            return lambda: sd.dense_decode_attention(q, k, v, lengths, starts, scale, max_length=context, launch=launch)

        return make

    def partials(q, k, v):
        chunks = sd._dense_chunks(q, k, context, None, sd.DENSE_LAUNCH)
        return lambda: sd._dense_partials(q, k, v, lengths, starts, scale, chunks, sd.DENSE_LAUNCH)

    any_backend = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    out = [
        ("sdpa_flash", {}, sdpa(SDPBackend.FLASH_ATTENTION)),
        ("sdpa_cudnn", {}, sdpa(SDPBackend.CUDNN_ATTENTION)),
        ("sdpa_efficient", {}, sdpa(SDPBackend.EFFICIENT_ATTENTION)),
        ("sdpa_default", {}, sdpa(any_backend)),
    ]
    out.append(("general", {}, general))
    names = list(SWEEP)
    for values in _product([SWEEP[n] for n in names]):
        knobs = dict(zip(names, values, strict=True))
        launch = sd.DenseLaunch(**knobs)
        mark = "*" if launch == sd.DENSE_LAUNCH else ""
        name = f"dense t{launch.tile} w{launch.warps} s{launch.stages} p{launch.programs_per_sm}{mark}"
        out.append((name, knobs, dense(launch)))
    if not any(name.endswith("*") for name, _, _ in out):  # the shipped default outside the sweep grid
        out.append(("dense default*", dataclasses.asdict(sd.DENSE_LAUNCH), dense(sd.DENSE_LAUNCH)))
    out.append(("dense default partials", dataclasses.asdict(sd.DENSE_LAUNCH), partials))
    return out


def _product(lists: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    result: list[tuple[int, ...]] = [()]
    for values in lists:
        result = [r + (v,) for r in result for v in values]
    return result


def bench_config(
    shape_name: str, context: int, batch: int, copy_bps: float, deadline: float, log: Callable[[str], None]
) -> dict[str, Any]:
    hq, hkv, dim = SHAPES[shape_name]
    scale = dim**-0.5
    kv_bytes = 2 * batch * hkv * context * dim * 2
    copies = max(2, min(LAYERS, math.ceil(4 * l2_bytes() / kv_bytes)))  # cold L2: each pass streams >= 4x L2
    sets = []
    for _ in range(copies):
        q = torch.randn(batch, hq, dim, device=DEVICE, dtype=DTYPE)
        k = torch.randn(batch, hkv, context, dim, device=DEVICE, dtype=DTYPE)
        v = torch.randn(batch, hkv, context, dim, device=DEVICE, dtype=DTYPE)
        sets.append((q, k, v))
    lengths = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    starts = torch.zeros(batch, device=DEVICE, dtype=torch.int32)
    refs = {i: reference(*sets[i], scale) for i in (0, copies - 1)}
    bytes_read = kv_bytes + 2 * batch * hq * dim * 2  # K and V, plus q in and out
    config = dict(shape=shape_name, hq=hq, hkv=hkv, head_dim=dim, context=context, batch=batch, copies=copies)
    config.update(bytes=bytes_read, rows=[])
    for name, knobs, make in variants(context, scale, lengths, starts):
        row: dict[str, Any] = dict(name=name, **knobs)
        config["rows"].append(row)
        if time.monotonic() > deadline and name.startswith("dense t") and not name.endswith("*"):
            row["error"] = "skipped: out of time"
            continue
        try:
            if not name.endswith("partials"):  # partials are not an output to check
                with warnings.catch_warnings():  # SDPA explains each backend it cannot use; the error row says it
                    warnings.simplefilter("ignore", UserWarning)
                    errors = [relative_error(make(*sets[i])(), refs[i]) for i in refs]
                row["rel_error"] = max(errors)
                if not row["rel_error"] < MAX_REL_ERROR:  # NaN fails too
                    row["error"] = f"wrong: relative error {row['rel_error']:.3g} >= {MAX_REL_ERROR}"
                    log(f"{shape_name} ctx {context} b{batch} {name}: {row['error']}")
                    continue
            reps = max(5, min(30, int(200 / (LAYERS * kv_bytes / copy_bps * 1e3 + 0.01))))
            timing = time_in_graph([make(*sets[i % copies]) for i in range(LAYERS)], reps)
        except Exception as error:  # a variant that does not compile or launch is a result, not a crash
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            row["error"] = f"{type(error).__name__}: {first_line}"
            log(f"{shape_name} ctx {context} b{batch} {name}: {row['error']}")
            continue
        row.update(dataclasses.asdict(timing))
        row["bw_fraction"] = bytes_read / (timing.median_ms * 1e-3) / copy_bps
    sdpa = [r for r in config["rows"] if r["name"].startswith("sdpa") and "median_ms" in r]
    if sdpa:
        best = min(sdpa, key=lambda r: r["median_ms"])
        config["sdpa_best"] = best["name"]
        for r in config["rows"]:
            if "median_ms" in r:
                r["vs_sdpa"] = r["median_ms"] / best["median_ms"]
    del sets, refs
    torch.cuda.empty_cache()
    return config


def summary_lines(configs: list[dict[str, Any]]) -> list[str]:
    """Per config: SDPA, the old path, the shipped default, the best sweep point; then the knob sets ranked by
    their geometric mean time over SDPA across configs."""
    lines = [
        f"{'shape':<13} {'ctx':>6} {'b':>2} {'variant':<26} {'ms/layer':>9} {'copy BW':>8} {'vs SDPA':>8}",
    ]
    for config in configs:
        rows = [r for r in config["rows"] if "median_ms" in r]
        sweep = [r for r in rows if r["name"].startswith("dense t") or r["name"] == "dense default*"]
        best = min(sweep, key=lambda r: r["median_ms"], default=None)
        shown = ("sdpa_flash", config.get("sdpa_best"), "general", "dense default partials")
        picks = [r for r in rows if r["name"] in shown]
        picks += [r for r in sweep if r["name"].endswith("*")]
        if best is not None and best not in picks:
            picks.append(dict(best, name=f"best: {best['name']}"))
        for r in picks:
            ratio = f"{r['vs_sdpa']:.3f}x" if r.get("vs_sdpa") else "-"
            lines.append(
                f"{config['shape']:<13} {config['context']:>6} {config['batch']:>2} {r['name']:<26} "
                f"{r['median_ms']:>9.4f} {r['bw_fraction']:>8.2f} {ratio:>8}"
            )
        failed = [r["name"] for r in config["rows"] if "error" in r]
        if failed:
            lines.append(f"  not timed ({len(failed)}): " + ", ".join(failed[:6]) + (" ..." if len(failed) > 6 else ""))
    ranks: dict[str, list[float]] = {}
    for config in configs:
        for r in config["rows"]:
            if r["name"].startswith("dense t") and r.get("vs_sdpa"):
                ranks.setdefault(r["name"], []).append(math.log(r["vs_sdpa"]))
    complete = {n: math.exp(sum(v) / len(v)) for n, v in ranks.items() if len(v) == len(configs)}
    ranked = sorted(complete.items(), key=lambda kv: kv[1])[:5]
    lines.append(
        "knob sets by geometric-mean time vs SDPA over all configs: " + ", ".join(f"{n} {g:.3f}x" for n, g in ranked)
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_dense.json")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--budget-s", type=float, default=150.0, help="sweep points after this are skipped")
    args = parser.parse_args(argv)
    fail_without_cuda()
    from tqdm import tqdm

    from lychee_bench.kernels import sparse_decode as sd

    began = time.monotonic()
    deadline = began + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy = copy_bandwidth()
    header = (
        f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, triton {triton.__version__}; "
        f"copy {copy['bytes_per_s'] / 1e12:.2f} TB/s (mul, 2 GiB read + write)"
    )
    print(header, file=sys.stderr)
    points = [(s, c, b) for s in args.shapes for c in args.contexts for b in args.batches]
    configs = []
    for shape_name, context, batch in tqdm(points, desc="configs", file=sys.stderr):
        configs.append(bench_config(shape_name, context, batch, copy["bytes_per_s"], deadline, tqdm.write))
        record = dict(
            device=props.name,
            sms=props.multi_processor_count,
            torch=torch.__version__,
            triton=triton.__version__,
            python=platform.python_version(),
            default_launch=dataclasses.asdict(sd.DENSE_LAUNCH),
            copy=copy,
            configs=configs,
            seconds=time.monotonic() - began,
        )
        (args.out / "bench_dense.json").write_text(json.dumps(record, indent=1))
    print(header)
    for line in summary_lines(configs):
        print(line)
    print(f"({time.monotonic() - began:.0f} s; full results in {args.out / 'bench_dense.json'})")


if __name__ == "__main__":
    main()
