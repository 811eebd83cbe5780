"""Kernel-level benchmark: one LycheeDecode decode layer against torch SDPA (SPEC §6; LycheeDecode, arXiv 2602.04541).

Usage (GPU only; CI runs the CPU tests in tests/test_kernels_lychee.py instead)::

    python -m lychee_bench.tools.bench_lychee --out results/kernels/h200

Llama-3-8B attention shape (32 query heads, 8 KV heads, head dim 128, bf16), one query token per sequence,
every sequence at the full context. For each context × batch × number of retrieval KV heads it reports the
median time (CUDA-graph replay, cold L2: inputs rotate over enough copies to exceed the L2 cache), the bytes
that must be read, the achieved bandwidth as a fraction of the device-to-device copy bandwidth measured in the
same run, and the speedup over the fastest SDPA variant. Breakdown rows time each step of the layer alone.
Correctness is checked against the plain-torch reference first, on fresh random inputs; a mismatch stops
the run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

from lychee_bench.kernels.timing import Timing, l2_bytes, time_in_graph

HQ, HKV, HEAD_DIM, DTYPE = 32, 8, 128, torch.bfloat16
CONTEXTS = (8192, 32768, 65536, 131072)
BATCHES = (1, 4, 8)
RETRIEVAL_HEADS = (0, 1, 2, 8)
BUDGET_TOKENS = 4096
BLOCK = 64
DEVICE = "cuda"  # a module constant so the logic can be dry-run elsewhere; the timings need CUDA
ELEMENT = 2  # bytes per bf16 element


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "bench_lychee measures GPU kernels and needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). On CPU run the correctness tests instead: "
            "TRITON_INTERPRET=1 pytest tests/test_kernels_lychee.py"
        )


def copies_for(kv_bytes: int) -> int:
    """Rotated input copies: one pass streams at least 4x the L2 cache (cold-L2 timings), and at least 4 calls
    share one graph so the graph's own launch cost is amortised as it is inside a whole decode step."""
    wanted = max(4, min(16, math.ceil(4 * l2_bytes() / kv_bytes)))
    return max(1, min(wanted, (24 << 30) // kv_bytes))  # at most 24 GiB of inputs


def copy_bandwidth(reps: int) -> tuple[Timing, int]:
    """Device-to-device copy of 2 GiB: the practical ceiling every kernel's bandwidth is compared with.

    Two ways, the faster counts: `copy_` (a memcpy, which inside a CUDA graph may run on the copy engines)
    and an elementwise kernel on the SMs (`mul(src, 1)`) that reads and writes the same bytes."""
    src = torch.randn(1 << 30, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    memcpy = time_in_graph([lambda: dst.copy_(src)], reps)
    elementwise = time_in_graph([lambda: torch.mul(src, 1, out=dst)], reps)
    print(
        f"copy: memcpy {memcpy.median_ms:.3f} ms, SM elementwise {elementwise.median_ms:.3f} ms for 2 GiB",
        file=sys.stderr,
    )
    return min(memcpy, elementwise, key=lambda t: t.median_ms), 2 * src.numel() * src.element_size()


def random_inputs(batch: int, context: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    shape = (batch, HKV, context, HEAD_DIM)
    q = torch.randn(batch, HQ, HEAD_DIM, device=DEVICE, dtype=DTYPE, generator=generator)
    k = torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=generator)
    v = torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=generator)
    return q, k, v


def roles(num_retrieval: int) -> torch.Tensor:
    return torch.arange(HKV, device=DEVICE) < num_retrieval


def check_correctness(seed: int, log: Callable[[str], None], quick: bool = False) -> list[dict[str, Any]]:
    """Triton layer vs the fp32 reference on a small mixed-length case and (unless ``quick``) one 128K case; stop
    on mismatch. Each case runs twice on the same plan and buffers, as a replayed graph does (the merge tickets
    must come back to zero), the second time on other queries."""
    from lychee_bench.kernels import lychee_triton as lt
    from lychee_bench.kernels import reference as ref
    from lychee_bench.kernels.lychee_plan import plan_decode_work

    cases = [(3, 5000, [5000, 4031, 1337], 2, 16), (1, 131072, [131071], 2, BUDGET_TOKENS // BLOCK)]
    checks = []
    for batch, max_len, lengths_list, num_retrieval, budget_blocks in cases[: 1 if quick else None]:
        q, k, v = random_inputs(batch, max_len, seed)
        lengths = torch.tensor(lengths_list, device=DEVICE, dtype=torch.int32)
        scale = HEAD_DIM**-0.5
        _, slots = lt.lychee_decode_layer(q, k, v, lengths, roles(HKV), None, budget_blocks, scale)
        mixed = torch.randperm(HKV, device=DEVICE) < num_retrieval
        plan = plan_decode_work(lengths_list, mixed.tolist(), max_len, budget_blocks, DEVICE)
        buffers = lt.DecodeBuffers.allocate(plan, q)
        for attempt in range(2):
            if attempt:
                q = torch.randn_like(q)
            out, new_slots = lt.lychee_decode_layer(
                q, k, v, lengths, mixed, slots, budget_blocks, scale, plan=plan, buffers=buffers
            )
            want_out, want_slots = ref.lychee_decode_layer_reference(
                q, k, v, lengths, mixed, slots, budget_blocks, scale
            )
            error = (out.float() - want_out).abs().max().item()
            problems = ref.block_set_mismatches(new_slots, want_slots, ref.block_max_scores(q, k, lengths))
            tickets = int(buffers.tickets.abs().sum())
            record = dict(batch=batch, max_len=max_len, lengths=lengths_list, call=attempt + 1, max_abs_error=error)
            record.update(slot_problems=problems, tickets_left=tickets)
            log(f"correctness {record}")
            if not error <= 2e-2 or problems or tickets:
                raise SystemExit(f"the Triton layer disagrees with the reference: {record}")
            checks.append(record)
        del q, k, v
    return checks


def kv_bytes(batch: int, heads: int, tokens: int) -> int:
    return 2 * batch * heads * tokens * HEAD_DIM * ELEMENT  # K and V


def bench_config(
    context: int, batch: int, reps: int, copy_bw: float, seed: int, programs_per_sm: int | None = None
) -> list[dict[str, Any]]:
    """All rows for one context × batch: SDPA variants, then the lychee layer and its steps per role mix."""
    copies = copies_for(kv_bytes(batch, HKV, context))
    inputs = [random_inputs(batch, context, seed + i) for i in range(copies)]
    lengths = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    scale = HEAD_DIM**-0.5
    group = HQ // HKV
    qo_bytes = 2 * batch * HQ * HEAD_DIM * ELEMENT
    base = dict(context=context, batch=batch, budget_tokens=BUDGET_TOKENS, copies=copies)
    rows: list[dict[str, Any]] = []

    def row(kind: str, timing: Timing, nbytes: int, **extra: Any) -> dict[str, Any]:
        achieved = nbytes / (timing.median_ms * 1e-3)
        record = dict(base, kind=kind, **dataclasses.asdict(timing), bytes=nbytes, **extra)
        record.update(tb_per_s=achieved / 1e12, bw_fraction=achieved / copy_bw)
        rows.append(record)
        return record

    # Dense baselines. With one query token, folding a KV head's G query heads into G "query positions" is
    # exact (no causal mask between them) and lets SDPA's flash kernel read each KV head once.
    def sdpa_gqa(q, k, v):
        return lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)

    def sdpa_fold(q, k, v):
        return lambda: F.scaled_dot_product_attention(q.view(batch, HKV, group, HEAD_DIM), k, v, scale=scale)

    dense_bytes = kv_bytes(batch, HKV, context) + qo_bytes
    best_dense = math.inf
    for name, make in (("sdpa_enable_gqa", sdpa_gqa), ("sdpa_fold_group", sdpa_fold)):
        try:
            timing = time_in_graph([make(*x) for x in inputs], reps)
        except RuntimeError as error:  # a backend refusing a layout is a result, not a crash
            rows.append(dict(base, kind=name, error=str(error).splitlines()[0]))
            continue
        row(name, timing, dense_bytes)
        best_dense = min(best_dense, timing.median_ms)

    for num_retrieval in RETRIEVAL_HEADS:
        lychee_rows(inputs, lengths, num_retrieval, reps, row, best_dense, programs_per_sm)
    return rows


def layer_setup(
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lengths: torch.Tensor,
    num_retrieval: int,
    programs_per_sm: int | None,
) -> tuple[Any, Any, list[torch.Tensor], list[Callable[[], Any]]]:
    """Plan, buffers, realistic slots and one whole-layer call per input copy, for one role mix."""
    from lychee_bench.kernels import lychee_triton as lt
    from lychee_bench.kernels.lychee_plan import plan_decode_work

    batch, _, context, _ = inputs[0][1].shape
    scale = HEAD_DIM**-0.5
    budget_blocks = BUDGET_TOKENS // BLOCK
    is_retrieval = roles(num_retrieval)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 4
    target = programs_per_sm * sms if programs_per_sm else None  # None: the plan's default rule
    plan = plan_decode_work(
        [context] * batch, is_retrieval.tolist(), context, budget_blocks, DEVICE, target_programs=target
    )
    buffers = lt.DecodeBuffers.allocate(plan, inputs[0][0])
    # Realistic slots: what a layer-0 (all retrieval) pass selects on the same cache.
    slots = [lt.lychee_decode_layer(q, k, v, lengths, roles(HKV), None, budget_blocks, scale)[1] for q, k, v in inputs]
    layer = [
        functools.partial(
            lt.lychee_decode_layer,
            q,
            k,
            v,
            lengths,
            is_retrieval,
            s,
            budget_blocks,
            scale,
            plan=plan,
            buffers=buffers,
            inplace_slots=True,
        )
        for (q, k, v), s in zip(inputs, slots, strict=True)
    ]
    return plan, buffers, slots, layer


def layer_bytes(batch: int, context: int, num_retrieval: int) -> tuple[int, int, int]:
    """(retrieval heads' K/V bytes, sparse heads' K/V bytes, query + output bytes) the layer must move."""
    retrieval = kv_bytes(batch, num_retrieval, context)
    sparse = kv_bytes(batch, HKV - num_retrieval, min(BUDGET_TOKENS, context))
    return retrieval, sparse, 2 * batch * HQ * HEAD_DIM * ELEMENT


def lychee_rows(
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lengths: torch.Tensor,
    num_retrieval: int,
    reps: int,
    row: Callable[..., dict[str, Any]],
    best_dense_ms: float,
    programs_per_sm: int | None = None,
) -> None:
    """The whole lychee layer, then each of its steps alone (same plan and buffers), for one role mix."""
    from lychee_bench.kernels import lychee_triton as lt
    from lychee_bench.kernels.lychee_plan import ITEM_RETRIEVAL

    batch, _, context, _ = inputs[0][1].shape
    scale = HEAD_DIM**-0.5
    plan, buffers, slots, layer = layer_setup(inputs, lengths, num_retrieval, programs_per_sm)
    retrieval_bytes, sparse_bytes, qo_bytes = layer_bytes(batch, context, num_retrieval)
    extra = dict(retrieval_heads=num_retrieval, chunk_blocks=plan.chunk_blocks, programs=plan.num_items)
    extra.update(programs_per_sm=programs_per_sm)
    timing = time_in_graph(layer, reps)
    row(
        "lychee_layer",
        timing,
        retrieval_bytes + sparse_bytes + qo_bytes,
        speedup_vs_sdpa=best_dense_ms / timing.median_ms,
        **extra,
    )

    # Where the fused launch's time goes: stopped after the attention, then after the merge.
    for kind, finish in (("layer:attention_only", 0), ("layer:attention+merge", 1)):
        lt.FUSED_FINISH = finish
        try:
            row(kind, time_in_graph(layer, reps), retrieval_bytes + sparse_bytes + qo_bytes, **extra)
        finally:
            lt.FUSED_FINISH = 2
    # Each kind of item alone, and the top-k alone, as separate launches.
    for kind, flag, nbytes in (("step:retrieval_kernel", 1, retrieval_bytes), ("step:sparse_kernel", 0, sparse_bytes)):
        items = plan.items[plan.items[:, ITEM_RETRIEVAL] == flag].contiguous()
        if len(items):
            sub = dataclasses.replace(plan, items=items)
            calls = [
                functools.partial(lt.attention_partials, q, k, v, lengths, s, sub, buffers, scale)
                for (q, k, v), s in zip(inputs, slots, strict=True)
            ]
            row(kind, time_in_graph(calls, reps), nbytes, **extra)
    if num_retrieval:
        calls = [functools.partial(lt.select_into_slots, buffers.scores, s, plan, lengths) for s in slots]
        row("step:topk", time_in_graph(calls, reps), buffers.scores.numel() * 4, **extra)


KNOBS = {  # launch knob -> the module that holds it
    "FUSED": "lychee_triton",
    "FUSED_FINISH": "lychee_triton",
    "STEP_BLOCKS": "lychee_triton",
    "ATTENTION_WARPS": "lychee_triton",
    "ATTENTION_STAGES": "lychee_triton",
    "MERGE_ROWS": "lychee_triton",
    "SMALL_WARPS": "lychee_triton",
    "TOPK_WAYS": "lychee_triton",
    "MERGE_GROUP": "lychee_plan",
    "RETRIEVAL_FIRST": "lychee_plan",
}


def knob_module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"lychee_bench.kernels.{KNOBS[name]}")


def set_knob(name: str, value: int) -> None:
    setattr(knob_module(name), name, type(getattr(knob_module(name), name))(value))


def knob_values() -> dict[str, int]:
    return {name: int(getattr(knob_module(name), name)) for name in KNOBS}


DEFAULT_KNOBS: dict[str, int] = {}  # the module's values, read when a sweep starts


def time_variant(
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    variant: dict[str, Any],
    reps: int,
    copy_bw: float,
    seed: int,
) -> dict[str, Any]:
    """Set the variant's knobs (others at their defaults), check it against the reference, time the layer."""
    from lychee_bench.kernels import lychee_triton as lt

    for knob in KNOBS:
        set_knob(knob, variant.get(knob, DEFAULT_KNOBS[knob]))
    if lt.FUSED_FINISH == 2:
        check_correctness(seed, lambda message: None, quick=True)
    batch, _, context, _ = inputs[0][1].shape
    lengths = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    _, _, _, layer = layer_setup(inputs, lengths, 1, variant["pps"])
    timing = time_in_graph(layer, reps)
    nbytes = sum(layer_bytes(batch, context, 1))
    # No `kind`: the report names a sweep row by its knobs (regress/sources.py).
    record = dict(context=context, batch=batch, retrieval_heads=1, **variant, **dataclasses.asdict(timing))
    record.update(bytes=nbytes, bw_fraction=nbytes / (timing.median_ms * 1e-3) / copy_bw)
    print(f"sweep {record}", file=sys.stderr)
    return record


def sweep(contexts: list[int], batches: list[int], reps: int, copy_bw: float, seed: int) -> list[dict[str, Any]]:
    """Launch-knob variants of the whole layer with one retrieval head of eight (the issue's target case),
    including the fused launch stopped after the attention (FUSED_FINISH 0) and after the merge (1), which
    splits its time. Each variant is checked against the reference before it is timed (except the stopped ones)."""

    DEFAULT_KNOBS.update(knob_values())
    base = dict(pps=None)
    variants = [
        base,
        dict(base, FUSED_FINISH=1),
        dict(base, FUSED_FINISH=0),
        *(dict(base, MERGE_GROUP=group) for group in (8, 32)),
        dict(base, MERGE_ROWS=16),
        dict(base, MERGE_ROWS=128),
        dict(base, RETRIEVAL_FIRST=0),
    ]
    rows: list[dict[str, Any]] = []
    try:
        for context in contexts:
            for batch in batches:
                copies = copies_for(kv_bytes(batch, HKV, context))
                inputs = [random_inputs(batch, context, seed + i) for i in range(copies)]
                for variant in variants:
                    try:
                        rows.append(time_variant(inputs, variant, reps, copy_bw, seed))
                    except triton.runtime.errors.OutOfResources as error:  # a knob set that does not fit is a result
                        rows.append(dict(context=context, batch=batch, **variant, error=str(error)[:200]))
                del inputs
                torch.cuda.empty_cache()
    finally:
        for knob, value in DEFAULT_KNOBS.items():
            set_knob(knob, value)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and CSV results")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--reps", type=int, default=50, help="timed graph replays per row")
    parser.add_argument("--seed", type=int, default=None, help="input seed (default: fresh, recorded)")
    parser.add_argument(
        "--programs-per-sm", type=int, default=None, help="split-KV work items per SM (default: the plan's rule)"
    )
    parser.add_argument(
        "--knob", action="append", default=[], metavar="NAME=INT", help=f"set a launch knob: {', '.join(KNOBS)}"
    )
    parser.add_argument("--sweep", action="store_true", help="launch-knob sweep at one retrieval head instead")
    args = parser.parse_args(argv)

    for pair in args.knob:
        name, _, value = pair.partition("=")
        if name not in KNOBS or not value.lstrip("-").isdigit():
            parser.error(f"--knob {pair!r}: use NAME=INT with NAME one of {', '.join(KNOBS)}")
        set_knob(name, int(value))
    require_cuda()

    import pandas as pd
    import triton
    from tqdm import tqdm

    from lychee_bench.harness import provenance
    from lychee_bench.harness.records import write_manifest

    seed = args.seed if args.seed is not None else int(time.time()) % 2**31
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    checks = check_correctness(seed, log)
    copy_timing, copy_bytes = copy_bandwidth(args.reps)
    copy_bw = copy_bytes / (copy_timing.median_ms * 1e-3)
    log(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s")

    rows: list[dict[str, Any]] = [
        dict(kind="copy", **dataclasses.asdict(copy_timing), bytes=copy_bytes, tb_per_s=copy_bw / 1e12, bw_fraction=1.0)
    ]
    if args.sweep:
        rows += sweep(args.contexts, args.batches, args.reps, copy_bw, seed)
    else:
        configs = [(c, b) for c in args.contexts for b in args.batches]
        for context, batch in tqdm(configs, desc="configs", file=sys.stderr):
            rows += bench_config(context, batch, args.reps, copy_bw, seed, args.programs_per_sm)
            torch.cuda.empty_cache()

    result = dict(
        kind="lychee-kernel-bench",
        provenance=provenance.collect("cuda"),
        triton_version=triton.__version__,
        torch_version=torch.__version__,
        device_name=torch.cuda.get_device_name(),
        shape=dict(hq=HQ, hkv=HKV, head_dim=HEAD_DIM, dtype=str(DTYPE), block=BLOCK, budget_tokens=BUDGET_TOKENS),
        seed=seed,
        programs_per_sm=args.programs_per_sm,
        knobs=knob_values(),
        timing="CUDA graph replay, CUDA events, median over reps; inputs rotated over copies (cold L2)",
        correctness=checks,
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = args.out / "lychee_kernel_bench.json", args.out / "lychee_kernel_bench.csv"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    columns = sorted({key for r in rows for key in r})
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    write_manifest(args.out, dict(kind="lychee-kernel-bench", files=[json_path.name, csv_path.name], seed=seed))
    log(f"wrote {json_path} and {csv_path}")
    table = pd.DataFrame(rows)
    table["median_us"] = table["median_ms"] * 1e3
    for column in ("context", "batch", "retrieval_heads"):
        table[column] = table[column].astype("Int64")
    shown = [
        "context",
        "batch",
        "retrieval_heads",
        "kind",
        *KNOBS,
        "pps",
        "median_us",
        "bw_fraction",
        "speedup_vs_sdpa",
    ]
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.float_format", "{:.3f}".format):
        print(table[[c for c in shown if c in table]].to_string(index=False))


if __name__ == "__main__":
    main()
