"""Every method's efficient path against its own reference path, on this machine's device, at a real shape.

    python -m lychee_bench.tools.path_check --model llama3-8b-synthetic --ctx 8191 --batch 3 --budget 1024

The CPU tests run the Triton paths in the interpreter at small shapes; this runs the compiled kernels (a GPU) at
the shapes a user benchmarks, before timing them. For each method, each layer gets fresh random queries, keys
and values (one row left-padded, one shorter than the budget); both paths decode the same step and the table
gives the largest difference, the reference's scale, and whether both paths counted the same K/V rows. The
method options are the bench's (`bench.synthetic_defaults`), so what is checked is what the bench times.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import pandas as pd
import torch

from lychee_bench.harness.runner import build_methods, options_taken, parse_method_entry
from lychee_bench.harness.synthetic_models import synthetic_config
from lychee_bench.methods.base import Method, head_dim_of
from lychee_bench.methods.state import DecodeState

# Allowed difference between the paths, relative to the largest reference output (selection ties in low
# precision can swap a boundary position, which moves the output by about one value row's weight).
TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
QUERY_SCALE = 4.0  # peaked attention, so that a wrong selection shows in the output


class _ConfigHolder(torch.nn.Module):
    """What `Method.prepare` reads of a model (its config and device), without building its weights."""

    def __init__(self, config: Any, device: torch.device):
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device), requires_grad=False)


def method_pairs(entries: list[str], options: dict[str, Any], holder: torch.nn.Module) -> list[dict[str, Method]]:
    """Per entry, its method built twice (shared options as the bench gives them), on the reference and Triton
    paths, prepared for the model `holder` stands for."""
    built = {path: build_methods(entries, {**options, "path": path}) for path in ("reference", "triton")}
    pairs = []
    for reference, triton in zip(built["reference"], built["triton"], strict=True):
        pair = {"reference": reference, "triton": triton}
        for path, method in pair.items():
            method.prepare(holder)
            if method.path != path:
                raise ValueError(f"{method.label}: asked for the {path} path, got {method.path}")
        pairs.append(pair)
    return pairs


def check_method(
    paths: dict[str, Method], config: Any, ctx: int, batch: int, dtype: torch.dtype, device: torch.device, seed: int
) -> dict[str, Any]:
    """One method (its two paths), all layers of one decode step, both on the same random inputs."""
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, head_dim_of(config)
    valid = torch.ones(batch, ctx, dtype=torch.bool, device=device)
    if batch > 1:
        valid[1, : ctx // 7] = False  # left padding
    if batch > 2:
        valid[2, : ctx - min(ctx // 2, 300)] = False  # shorter than most budgets and windows
    lengths = valid.sum(-1).tolist()
    states = {path: DecodeState(method=method, phase="decode") for path, method in paths.items()}
    for state in states.values():
        state.begin_step("decode", lengths)
    generator = torch.Generator(device=device).manual_seed(seed)
    worst, scale = 0.0, 0.0
    for layer in range(config.num_hidden_layers):
        query = QUERY_SCALE * torch.randn(batch, heads, 1, dim, generator=generator, device=device, dtype=dtype)
        key = torch.randn(batch, kv_heads, ctx, dim, generator=generator, device=device, dtype=dtype)
        value = torch.randn(batch, kv_heads, ctx, dim, generator=generator, device=device, dtype=dtype)
        outs = {
            path: method.decode_attention(layer, query, key, value, valid, dim**-0.5, states[path]).float()
            for path, method in paths.items()
        }
        if not torch.isfinite(outs["triton"]).all():
            worst = float("inf")
        worst = max(worst, (outs["triton"] - outs["reference"]).abs().max().item())
        scale = max(scale, outs["reference"].abs().max().item())
    reads = {path: state.totals().get("kv_tokens_read") for path, state in states.items()}
    relative = worst / max(scale, 1e-6)
    return {
        "method": paths["triton"].label,
        "max_abs_diff": worst,
        "reference_max": scale,
        "relative": relative,
        "kv_read_reference": reads["reference"],
        "kv_read_triton": reads["triton"],
        "ok": relative <= TOLERANCE[dtype] and _same_reads(reads["reference"], reads["triton"], dtype),
    }


def _same_reads(reference: float, triton: float, dtype: torch.dtype) -> bool:
    """Equal K/V-row counts; in 16-bit types a near-tie at a top-k cut may go the other way (both paths score in
    float32, summing in another order), so a difference of at most 0.01% is accepted there."""
    if dtype == torch.float32:
        return reference == triton
    return abs(reference - triton) <= 1e-4 * max(reference, 1.0)


def efficient_entries(entries: list[str]) -> list[str]:
    """The entries whose method has a `path` option (an efficient path to compare)."""
    from lychee_bench.harness.catalog import METHODS

    kept = []
    for entry in entries:
        cls = METHODS.get(parse_method_entry(entry)[0])
        if "path" in {field.name for field in dataclasses.fields(cls.Config)}:
            kept.append(entry)
    return kept


def check_paths(
    model: str,
    entries: list[str],
    ctx: int,
    batch: int,
    budget: int,
    dtype: str = "bfloat16",
    seed: int = 0,
    device: str | None = None,
) -> pd.DataFrame:
    """The table over every entry with an efficient path (see the module doc)."""
    from lychee_bench.tasks.latency.bench import synthetic_defaults

    config = synthetic_config(model)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = getattr(torch, dtype)
    entries = efficient_entries(entries)
    options = synthetic_defaults(model, config, entries, options_taken(entries, {"budget": budget}))
    rows = []
    for offset, pair in enumerate(method_pairs(entries, options, _ConfigHolder(config, target))):
        rows.append(check_method(pair, config, ctx, batch, torch_dtype, target, seed + offset))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=offset == 0), flush=True)
    return pd.DataFrame(rows)


DEFAULT_ENTRIES = "lychee,lychee[granularity=block],tidal,tidal[per_kv_head=true],kascade,quest,duo,streaming"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b-synthetic", help="a synthetic shape (its config only)")
    parser.add_argument("--methods", default=DEFAULT_ENTRIES, help="comma-separated entries, brackets allowed")
    parser.add_argument("--ctx", type=int, default=8191)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(str(d).removeprefix("torch.") for d in TOLERANCE))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu (set TRITON_INTERPRET=1)")
    parser.add_argument("--out", default=None, help="write the table here as CSV")
    args = parser.parse_args(argv)
    from lychee_bench.harness.runner import split_methods

    table = check_paths(
        args.model,
        split_methods(args.methods),
        args.ctx,
        args.batch,
        args.budget,
        args.dtype,
        args.seed,
        args.device,
    )
    if args.out:
        table.to_csv(args.out, index=False)
    failed = table[~table["ok"]]
    print(f"{len(table) - len(failed)} of {len(table)} methods: efficient path matches the reference")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
