"""GPU benchmark of the token top-k kernel (kernels/token_select.py) against the masked torch.topk it replaces.

Usage (GPU only; CI runs the CPU tests in tests/test_kernels_select.py instead)::

    python -m lychee_bench.tools.bench_select --out results/kernels/h200
    python -m lychee_bench.tools.bench_select --compile-only   # any machine: the sm_90 build and its registers

LycheeDecode's token granularity (SPEC §2): budget 4096 = 128 sink + 256 recent + k = 3712 top-scoring tokens,
float32 scores of the retrieval heads over S cache slots. For S in (32768, 131072) and 1, 3, 8 or 32 selection
rows (heads listed out of 8 KV heads; 32 = batch 4 x 8 heads) it first checks the kernel on fresh inputs —
Gaussian scores, a narrow bulk with large outliers, a clustered passage, half the row tied at the top value
(the tie rule decides), half tied at zero — against the plain-torch reference (exact, ties included) and
against torch.topk (same score multiset); a mismatch stops the run (exit 1). Then it times both, each inside a
captured CUDA graph of several back-to-back calls (launch gaps included, as in a graph-captured decode step),
CUDA events around each replay, median over replays after warm-up: warm (the same scores every call, in L2 as
after the attention kernel that wrote them) and cold (rotating over up to 32 copies, about 3x the L2 cache
when that many fit). Prints a table
last and writes ``select_bench.json`` into ``--out``. Exit 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from lychee_bench.kernels.timing import Timing, l2_bytes, time_eager, time_in_graph

CONTEXTS = (32768, 131072)
ROWS = (1, 3, 8, 32)
K, SINK, RECENT = 3712, 128, 256
KV_HEADS = 8
DEVICE = "cuda"  # a module constant so the logic can be dry-run elsewhere (the timings need CUDA)
DISTRIBUTIONS = ("gaussian", "outliers", "clustered", "half-tied-top", "half-tied-zero")
CALLS_PER_GRAPH = 10  # back-to-back calls in one graph: the per-call time includes the gaps between launches


def layout(rows: int) -> tuple[int, list[int]]:
    """(batch, listed heads of KV_HEADS) for a number of selection rows."""
    if rows == 32:
        return 4, list(range(KV_HEADS))
    return 1, {1: [0], 3: [0, 3, 5], 8: list(range(KV_HEADS))}[rows]


def make_scores(kind: str, batch: int, slots: int, generator: torch.Generator) -> torch.Tensor:
    """[B, KV_HEADS, S] float32 scores on the GPU in one of the DISTRIBUTIONS."""
    shape = (batch, KV_HEADS, slots)
    x = torch.randn(shape, generator=generator, device=DEVICE)
    if kind == "outliers":  # a narrow bulk (many near-equal values) and a few huge logits
        x = x * 0.01
        where = torch.randint(0, slots, (batch, KV_HEADS, 16), generator=generator, device=DEVICE)
        x.scatter_(-1, where, torch.rand(where.shape, generator=generator, device=DEVICE) * 1e4)
    elif kind == "clustered":  # one relevant passage well above the rest
        first = slots // 3
        x[..., first : first + 2048] += 4.0
    elif kind == "half-tied-top":  # the k-th score is tied with half the row: the lowest positions win
        x = torch.where(torch.rand(shape, generator=generator, device=DEVICE) < 0.5, torch.full_like(x, 10.0), x)
    elif kind == "half-tied-zero":
        x = torch.where(torch.rand(shape, generator=generator, device=DEVICE) < 0.5, torch.zeros_like(x), x)
    return x.contiguous()


def candidate_mask(lengths: torch.Tensor, starts: torch.Tensor, slots: int) -> torch.Tensor:
    """[B, S] True on the candidate slots (the caller's mask: real tokens minus sink and recent)."""
    slot = torch.arange(slots, device=lengths.device)[None, :]
    first = (starts + SINK)[:, None]
    return (slot >= first) & (slot < (starts + lengths - RECENT)[:, None])


def masked_topk(scores, lengths, starts, heads, mask):
    """What select_top_tokens replaces (methods/efficient.py top_index, unranked): -inf outside the candidates,
    torch.topk, relative positions, -1 where fewer are selectable."""
    chosen = scores[:, heads].masked_fill(~mask[:, None, :], float("-inf"))
    top = torch.topk(chosen, K, dim=-1, sorted=False)
    relative = top.indices - starts.to(top.indices.dtype)[:, None, None]
    return torch.where(top.values > float("-inf"), relative, torch.full_like(relative, -1)).to(torch.int32)


def check(kind: str, slots: int, rows: int, seed: int) -> dict[str, Any]:
    """Kernel vs the reference (exact sets) and vs torch.topk (the same scores selected) on fresh inputs;
    a left-padded second half of the batch when there is one (slots before each start hold garbage)."""
    from lychee_bench.kernels.token_select import select_top_tokens, select_top_tokens_reference

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    batch, heads = layout(rows)
    scores = make_scores(kind, batch, slots, generator)
    lengths = torch.full((batch,), slots, dtype=torch.int32, device=DEVICE)
    lengths[batch // 2 :] = slots - slots // 8 * torch.arange(1, batch - batch // 2 + 1, device=DEVICE).int()
    starts = (slots - lengths).to(torch.int32)
    for b in range(batch):  # garbage in the padding: it would be selected if it were read
        scores[b, :, : int(starts[b])] = float("inf")
    out = torch.full((batch, KV_HEADS, K), -7, dtype=torch.int32, device=DEVICE)
    select_top_tokens(scores, lengths, starts, K, sink=SINK, recent=RECENT, rows=heads, out=out)
    expected = select_top_tokens_reference(scores, lengths, starts, K, sink=SINK, recent=RECENT, rows=heads)
    got = out[:, heads]
    exact = bool(torch.equal(got.sort(-1).values, expected[:, heads].sort(-1).values))
    untouched = [h for h in range(KV_HEADS) if h not in heads]
    untouched_ok = bool((out[:, untouched] == -7).all()) if untouched else True
    mask = candidate_mask(lengths, starts, slots)
    top = masked_topk(scores, lengths, starts, heads, mask)
    value = lambda idx: torch.gather(scores[:, heads], -1, (idx.long() + starts.long()[:, None, None]).clamp(min=0))  # noqa: E731
    same_values = bool(
        torch.equal(
            value(got).masked_fill(got < 0, float("-inf")).sort(-1).values,
            value(top).masked_fill(top < 0, float("-inf")).sort(-1).values,
        )
    )
    return dict(distribution=kind, slots=slots, rows=rows, exact=exact, topk_values=same_values,
                untouched=untouched_ok, ok=exact and same_values and untouched_ok)  # fmt: skip


def _micro(timing: Timing) -> dict[str, Any]:
    """A timing in microseconds, as this bench reports them."""
    return {
        "median_us": timing.median_ms * 1000,
        "p10_us": timing.p10_ms * 1000,
        "p90_us": timing.p90_ms * 1000,
        "replays": timing.reps,
    }


def time_case(slots: int, rows: int, replays: int, seed: int) -> dict[str, Any]:
    """Kernel and masked torch.topk on Gaussian scores, warm and cold, for one shape."""
    from lychee_bench.kernels.token_select import select_top_tokens

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    batch, heads = layout(rows)
    lengths = torch.full((batch,), slots, dtype=torch.int32, device=DEVICE)
    starts = torch.zeros(batch, dtype=torch.int32, device=DEVICE)
    mask = candidate_mask(lengths, starts, slots)
    one = make_scores("gaussian", batch, slots, generator)
    copies = max(1, min(32, math.ceil(3 * l2_bytes() / one.numel() / one.element_size())))
    cold = [one] + [make_scores("gaussian", batch, slots, generator) for _ in range(copies - 1)]
    out = torch.empty(batch, KV_HEADS, K, dtype=torch.int32, device=DEVICE)

    def kernel_calls(inputs):
        return [lambda s=s: select_top_tokens(s, lengths, starts, K, sink=SINK, recent=RECENT, rows=heads, out=out)
                for s in inputs]  # fmt: skip

    def topk_calls(inputs):
        return [lambda s=s: masked_topk(s, lengths, starts, heads, mask) for s in inputs]

    warm_inputs = [one] * CALLS_PER_GRAPH
    cold_inputs = [cold[i % copies] for i in range(max(CALLS_PER_GRAPH, copies))]
    result: dict[str, Any] = dict(slots=slots, rows=rows, batch=batch, heads=heads, k=K, cold_copies=copies)
    for name, calls in (("kernel", kernel_calls), ("topk", topk_calls)):
        for temperature, inputs in (("warm", warm_inputs), ("cold", cold_inputs)):
            try:
                timing, how = time_in_graph(calls(inputs), replays), "graph"
            except RuntimeError as error:  # keep the run (and its record) going; say how this one was timed
                print(f"graph capture failed for {name} S={slots} rows={rows}: {error}; timing eagerly", flush=True)
                torch.cuda.synchronize()
                timing, how = time_eager(calls(inputs), replays), f"eager (capture failed: {error})"
            result[f"{name}_{temperature}"] = {**_micro(timing), "timed_as": how}
    scores_bytes = rows * slots * 4
    result["scores_bytes"] = scores_bytes
    result["speedup_warm"] = result["topk_warm"]["median_us"] / result["kernel_warm"]["median_us"]
    result["speedup_cold"] = result["topk_cold"]["median_us"] / result["kernel_cold"]["median_us"]
    result["kernel_cold_gbps"] = scores_bytes / (result["kernel_cold"]["median_us"] * 1e3)
    return result


def compile_only(arch: int, as_json: bool) -> None:
    """Compile the three launches for ``sm_<arch>`` with Triton's bundled ptxas (no GPU needed) and print their
    registers, stack, local memory and shared memory."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lychee_bench.kernels import token_select as ts

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    scalars = {"mask0": "i64", "mask1": "i64"}  # the other scalars are int32 (strides and offsets fit)
    # Each launch with and without a head list; the per-row budget and both ends of the parts table ride along.
    variants = []
    for all_heads, has_kpr, parts_pad in ((True, False, 16), (False, True, ts.MAX_PARTS)):
        variants.append((ts._cuts_kernel, ts.CUTS_WARPS, dict(
            SAMPLE=ts.SAMPLE, CUTS=ts.CUTS, SLOTS=ts.SLOTS, BINS=ts.BINS, LEVELS=ts.ZOOM_LEVELS,
            ALL_HEADS=all_heads, HAS_KPR=has_kpr)))  # fmt: skip
        variants.append((ts._count_kernel, ts.PASS_WARPS, dict(
            CUTS=ts.CUTS, SLOTS=ts.SLOTS, BLOCK=ts.BLOCK, ALL_HEADS=all_heads)))  # fmt: skip
        variants.append((ts._select_kernel, ts.PASS_WARPS, dict(
            CUTS=ts.CUTS, SLOTS=ts.SLOTS, PARTS_PAD=parts_pad, BLOCK=ts.BLOCK, LANES=ts.LANES,
            PICK=ts.PICK_BLOCKS * ts.BLOCK, BINS=ts.BINS,
            ALL_HEADS=all_heads, HAS_KPR=has_kpr)))  # fmt: skip
    for kernel, warps, constants in variants:
        names = list(kernel.arg_names)
        signature = {
            n: "constexpr"
            if n in constants
            else ("*fp32" if n == "scores_ptr" else "*i32")
            if n.endswith("_ptr")
            else scalars.get(n, "i32")
            for n in names
        }
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=warps),
        )
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run(
                [str(cuobjdump), "-res-usage", cubin.name], capture_output=True, text=True, check=True
            ).stdout
        field = {name: int(value) for name, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", usage)}
        knobs = {k: v for k, v in constants.items() if k in ("ALL_HEADS", "HAS_KPR", "PARTS_PAD")}
        record = dict(kernel=kernel.__name__, arch=arch, warps=warps, **knobs)
        record.update(registers=field["REG"], stack_bytes=field["STACK"], local_bytes=field["LOCAL"])
        record.update(shared_bytes=compiled.metadata.shared)
        print(json.dumps(record) if as_json else record, flush=True)


def print_table(timings: list[dict[str, Any]]) -> None:
    header = (
        f"{'S':>7} {'rows':>4} | {'kernel warm':>11} {'cold':>7} | {'topk warm':>9} {'cold':>7} | "
        f"{'speedup warm':>12} {'cold':>5} | {'GB/s cold':>9}"
    )
    print(f"\ntoken top-k, k = {K}, microseconds per call (median over CUDA-graph replays; * timed eagerly)")
    print(header)
    print("-" * len(header))

    def cell(timing: dict[str, Any], width: int) -> str:
        eager = "*" if timing.get("timed_as", "graph") != "graph" else ""
        return f"{timing['median_us']:.1f}{eager}".rjust(width)

    for t in timings:
        print(
            f"{t['slots']:>7} {t['rows']:>4} | {cell(t['kernel_warm'], 11)} {cell(t['kernel_cold'], 7)} | "
            f"{cell(t['topk_warm'], 9)} {cell(t['topk_cold'], 7)} | {t['speedup_warm']:>11.1f}x "
            f"{t['speedup_cold']:>4.1f}x | {t['kernel_cold_gbps']:>9.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for select_bench.json (created if missing)")
    parser.add_argument("--replays", type=int, default=100, help="timed graph replays per measurement")
    parser.add_argument("--seed", type=int, default=None, help="input seed (default: fresh)")
    parser.add_argument("--compile-only", action="store_true", help="compile for --arch and print resources; no GPU")
    parser.add_argument("--arch", type=int, default=90, help="compute capability for --compile-only (90: H100/H200)")
    parser.add_argument("--json", action="store_true", help="with --compile-only: one JSON object per line")
    args = parser.parse_args(argv)
    if args.compile_only:
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            parser.error("TRITON_INTERPRET=1 replaces the compiler with the interpreter; run with TRITON_INTERPRET=0")
        compile_only(args.arch, args.json)
        return
    if args.out is None:
        parser.error("--out DIR is required (or --compile-only)")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("bench_select: TRITON_INTERPRET=1 is set; unset it to time the compiled kernels", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available():
        print(
            "bench_select measures GPU kernels and needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). On CPU run the correctness tests instead: "
            "python -m pytest tests/test_kernels_select.py",
            file=sys.stderr,
        )
        sys.exit(2)
    import triton

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31
    device = torch.cuda.get_device_name()
    print(f"bench_select on {device}: torch {torch.__version__}, triton {triton.__version__}, seed {seed}", flush=True)
    started = time.time()
    checks: list[dict[str, Any]] = []
    cases = [(slots, rows, i, kind) for slots in CONTEXTS for rows in ROWS for i, kind in enumerate(DISTRIBUTIONS)]
    for slots, rows, i, kind in cases:
        try:
            result = check(kind, slots, rows, seed + 7919 * i + rows + slots)
        except Exception as error:  # record it; a compile error would fail every case, so stop at the first
            traceback.print_exc()
            checks.append(dict(distribution=kind, slots=slots, rows=rows, ok=False, error=repr(error)))
            break
        checks.append(result)
        print(f"check S={slots} rows={rows} {kind}: {'ok' if result['ok'] else 'MISMATCH ' + str(result)}", flush=True)
    failed = [c for c in checks if not c["ok"]]
    timings = []
    if not failed:
        for slots in CONTEXTS:
            for rows in ROWS:
                timing = time_case(slots, rows, args.replays, seed + rows + slots)
                timings.append(timing)
                print(
                    f"timed S={slots} rows={rows}: kernel {timing['kernel_warm']['median_us']:.1f} us, "
                    f"torch.topk {timing['topk_warm']['median_us']:.1f} us",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    record = dict(
        benchmark="token_select",
        device=device,
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        seed=seed,
        k=K,
        sink=SINK,
        recent=RECENT,
        calls_per_graph=CALLS_PER_GRAPH,
        seconds=round(time.time() - started, 1),
        checks=checks,
        timings=timings,
    )
    path = args.out / "select_bench.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} correctness check(s) failed; no timings taken: {failed}", file=sys.stderr)
        sys.exit(1)
    print_table(timings)


if __name__ == "__main__":
    main()
