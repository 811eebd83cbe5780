"""`run`'s decode step against stock transformers `generate`, on the same model, inputs and batch (issue 14).

    python -m lychee_bench.tasks.latency.versus_transformers --model smollm2-135m --rope-scaling yarn:16 \
        --ctx 131072 --batch 2 --methods 'full,lychee[granularity=block]' --out runs/versus

The default methods time lychee's block path (the fast kernel), as before plain `lychee` became token granularity.

Inputs: RULER niah_single_1 prompts at the context, formatted as `run` formats them (chat template, no decode
exercise), each cut to the shortest one's length from the front, so every row has the same length and stock
transformers needs no padding mask (its fastest setting: SDPA's causal kernels, no mask). Both sides decode
greedily for exactly `--new-tokens` tokens (end of sequence ignored).

- transformers: `model.generate` with its default DynamicCache and SDPA attention, timed with `max_new_tokens=N`
  and with `max_new_tokens=1`; its per-step time is the difference over N - 1 (prefill excluded).
- lychee-bench: the engine `run` uses (static cache, CUDA graph), per method; its per-step time is the steady
  decode steps' time (after the warm-up step and the capture), prefill excluded.

Both in one process, one after the other, on the same GPU. Prints a table and writes `versus.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lychee_bench.harness import models, provenance
from lychee_bench.harness.attention import attention_implementation
from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import FormattedInput, InputFormatter


def equal_length_inputs(tokenizer: Any, ctx: int, batch: int, new_tokens: int, seed: int) -> list[list[int]]:
    """`batch` RULER niah_single_1 inputs at `ctx`, cut from the front to one common length."""
    from lychee_bench.harness.catalog import TASKS
    from lychee_bench.harness.sample_cache import cached_samples

    formatter = InputFormatter(tokenizer)
    task = TASKS.get("ruler")()
    samples = cached_samples(task, "niah_single_1", ctx, batch, seed, formatter)
    ids = [formatter.format(s.prompt, s.answer_prefix).input_ids for s in samples]
    length = min(min(len(x) for x in ids), ctx - new_tokens)
    return [x[len(x) - length :] for x in ids]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_stock_generate(model: torch.nn.Module, rows: list[list[int]], new_tokens: int) -> dict[str, float]:
    """transformers generate, greedy, default cache: seconds for 1 and for N new tokens, and per step."""
    device = next(model.parameters()).device
    input_ids = torch.tensor(rows, device=device)
    mask = torch.ones_like(input_ids)
    times: dict[int, float] = {}
    with attention_implementation(model, "sdpa"):
        for count in (1, new_tokens, 1, new_tokens):  # the first pair warms up; each count keeps its faster run
            _sync(device)
            began = time.perf_counter()
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                pad_token_id=model.generation_config.pad_token_id or 0,
            )
            _sync(device)
            times[count] = min(times.get(count, float("inf")), time.perf_counter() - began)
            assert out.shape[1] == input_ids.shape[1] + count
    return {
        "generate_1_s": times[1],
        f"generate_{new_tokens}_s": times[new_tokens],
        "ms_per_step": 1000 * (times[new_tokens] - times[1]) / (new_tokens - 1),
    }


def compare(
    model_name: str | None,
    rope_scaling: str | None,
    ctx: int,
    batch: int,
    methods: list[str],
    new_tokens: int,
    device: str,
    seed: int = 42,
    log: Any = print,
) -> dict[str, Any]:
    from lychee_bench.harness.runner import build_methods

    source = models.resolve_model(model_name)
    config = models.load_config(source, rope_scaling)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    tokenizer = models.load_tokenizer(source)
    rows = equal_length_inputs(tokenizer, ctx, batch, new_tokens, seed)
    log(f"{batch} rows of {len(rows[0])} tokens; loading {source.name} ({dtype}, {device})")
    model = models.load_model(source, config, device, dtype)
    result: dict[str, Any] = {
        "model": {**source.provenance(), "rope_scaling": rope_scaling, "dtype": dtype},
        "ctx": ctx,
        "batch": batch,
        "prompt_tokens": len(rows[0]),
        "new_tokens": new_tokens,
        "provenance": provenance.collect(device),
    }
    built = build_methods(methods, {})
    for method in built:
        method.prepare(model)
    engine = Engine(model, tokenizer)
    inputs = [FormattedInput(ids, 0) for ids in rows]
    settings = GenerationSettings(new_tokens, ignore_eos=True)
    engine.generate(inputs, GenerationSettings(min(8, new_tokens), ignore_eos=True), built)  # compile, warm up
    outputs = engine.generate(inputs, settings, built)
    result["lychee_bench"] = {
        label: {
            "ms_per_step": generations[0].steady_ms_per_step,
            "decode_mode": generations[0].decode_mode,
            "eager_reason": generations[0].eager_reason,
            "decode_steps": generations[0].decode_steps,
            "decode_s": generations[0].decode_seconds,
            "prefill_s": generations[0].prefill_seconds,
            "path": next(m.path for m in built if m.label == label),
        }
        for label, generations in outputs.items()
    }
    del engine, outputs
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    result["transformers"] = time_stock_generate(model, rows, new_tokens)
    stock = result["transformers"]["ms_per_step"]
    for entry in result["lychee_bench"].values():
        entry["speedup_vs_transformers"] = stock / entry["ms_per_step"] if entry["ms_per_step"] else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rope-scaling", default=None)
    parser.add_argument("--ctx", type=int, nargs="+", required=True)
    parser.add_argument("--batch", type=int, nargs="+", required=True, help="one per --ctx")
    parser.add_argument("--methods", default="full,lychee[granularity=block]")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("versus_transformers times GPU decoding and needs a CUDA GPU; use --device cpu for a plumbing check")
        return 2
    if len(args.batch) != len(args.ctx):
        print(f"give one --batch per --ctx (got {len(args.ctx)} contexts, {len(args.batch)} batches)")
        return 2
    from lychee_bench.harness.runner import split_methods

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for ctx, batch in zip(args.ctx, args.batch, strict=True):
        methods = split_methods(args.methods)
        results.append(compare(args.model, args.rope_scaling, ctx, batch, methods, args.new_tokens, args.device))
        (args.out / "versus.json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"{'ctx':>7} {'batch':>5} {'what':>14} {'ms/step':>9} {'vs transformers':>16}"]
    for r in results:
        lines.append(f"{r['ctx']:>7} {r['batch']:>5} {'transformers':>14} {r['transformers']['ms_per_step']:>9.2f}")
        for label, entry in r["lychee_bench"].items():
            lines.append(
                f"{r['ctx']:>7} {r['batch']:>5} {label:>14} {entry['ms_per_step']:>9.2f} "
                f"{entry['speedup_vs_transformers']:>15.1f}x  ({entry['decode_mode']})"
            )
    table = "\n".join(lines)
    (args.out / "versus.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
