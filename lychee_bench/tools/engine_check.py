"""The engine on this machine's GPU: captured decoding against eager decoding, and prefill against transformers.

    python -m lychee_bench.tools.engine_check --out runs/engine_check

The CPU tests run the engine eagerly (no CUDA graphs, no torch.compile, Triton in the interpreter). Before timing
anything on a GPU this checks, on a synthetic Llama-3-8B shape with fresh random weights and tokens (a left-padded
batch with decode-exercise tokens of different lengths), that

1. every method's CUDA-graph-captured generation gives exactly the tokens of the same engine stepping eagerly
   (same compiled kernels), greedy and sampled, and that a graph-safe method was indeed captured;
2. the engine's prefill logits match transformers' own forward on the same tokens (bf16 rounding apart);
3. one decode step (`full`: the dense pieces with the cache write inside, compiled and eager) gives the logits of
   transformers' own decode step (its DynamicCache) for the same token, in float32 on a 4-layer cut of the shape.

Prints a table and writes `engine_check.csv`; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from lychee_bench.harness.attention import cache_keyword
from lychee_bench.harness.engine import Engine, GenerationSettings, decode_forward
from lychee_bench.harness.inputs import FormattedInput
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.synthetic_models import build_synthetic, synthetic_config
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.state import DecodeState, StepGeometry

MODEL = "llama3-8b-synthetic"
ENTRIES = (
    "full,full[path=reference],lychee,lychee[granularity=block],tidal,kascade,quest,duo,streaming,"
    "lychee[budget=1024;correction_period=8]"
)
LOGIT_TOLERANCE = 3e-2  # relative (max |difference| / max |logit|) between bf16 paths
FLOAT32_TOLERANCE = 1e-3  # the same, between float32 paths


def _inputs(vocab: int, ctx: int, batch: int, seed: int) -> list[FormattedInput]:
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for row in range(batch):
        length = ctx - 97 * row
        exercise = (5 * row) % 11
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        inputs.append(FormattedInput(ids, exercise))
    return inputs


def check_generation(model, methods, inputs, settings, label: str) -> list[dict]:
    """Captured vs eager tokens per method for one setting."""
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None, decode=lambda ids, skip_special_tokens=True: "")
    captured = Engine(model, tokenizer, graphs=True).generate(inputs, settings, methods)
    eager = Engine(model, tokenizer, graphs=False).generate(inputs, settings, methods)
    rows = []
    for method in methods:
        got, want = captured[method.label], eager[method.label]
        same = [g.token_ids for g in got] == [g.token_ids for g in want]
        safe = method.graph_refusal() is None
        mode = got[0].decode_mode
        rows.append(
            {
                "check": f"graph == eager ({label})",
                "method": method.label,
                "path": method.path,
                "mode": mode,
                "reason": got[0].eager_reason or "",
                "tokens": sum(g.new_tokens for g in got),
                "ok": same and (mode == "graph" or not safe),
            }
        )
    return rows


@torch.inference_mode()
def check_prefill(model, inputs) -> dict:
    """Engine prefill logits (each row's last position) against transformers' forward of the same tokens."""
    engine = Engine(model, None, graphs=False)
    prompts = [x.input_ids for x in inputs[:2]]
    width = max(map(len, prompts))
    cache = StaticKVCache.for_config(model.config, len(prompts), width, engine.dtype, engine.device)
    ours = engine.prefill(cache, prompts, width)
    worst = 0.0
    for row, ids in enumerate(prompts):
        theirs = model(input_ids=torch.tensor([ids], device=engine.device), logits_to_keep=1).logits[0, -1].float()
        worst = max(worst, float((ours[row] - theirs).abs().max() / theirs.abs().max()))
    return {"check": "prefill logits vs transformers", "method": "-", "rel_error": worst, "ok": worst < LOGIT_TOLERANCE}


def _decode_step_logits(engine: Engine, method, ids: list[int]) -> torch.Tensor:
    """The engine's decode step for the last of `ids`, the others prefilled: float32 logits [V]."""
    length, device = len(ids), engine.device
    cache = StaticKVCache.for_config(engine.model.config, 1, length, engine.dtype, device)
    engine.prefill(cache, [ids[:-1]], length - 1)
    lengths = torch.tensor([length], dtype=torch.int32, device=device)
    geometry = StepGeometry(lengths, torch.zeros_like(lengths), [length], [length])
    state = DecodeState(method=method, counting=False, geometry=geometry)
    state.begin_step("decode", [length])
    return decode_forward(
        engine.stack,
        cache,
        method,
        state,
        torch.tensor([[ids[-1]]], device=device),
        torch.tensor([[length - 1]], device=device),
        torch.tensor([length - 1], device=device),
        torch.ones(1, length, dtype=torch.bool, device=device),
    )[0]


def _transformers_decode_step(model, ids: list[int]) -> torch.Tensor:
    """transformers' own decode step for the last of `ids` (its DynamicCache prefilled with the others)."""
    device = next(model.parameters()).device
    prefix = model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True)
    cache = {cache_keyword(model): prefix.past_key_values}
    step = model(input_ids=torch.tensor([[ids[-1]]], device=device), **cache)
    return step.logits[0, -1].float()


@torch.inference_mode()
def check_decode_step(layers: int, ctx: int, seed: int, device: str = "cuda") -> list[dict]:
    """The decode step's logits (`full`: the compiled pieces with the cache write inside, and the eager pieces)
    against transformers' own decode step on the same tokens, in float32 (a bf16 comparison through 32 random
    layers differs by several percent between any two correct kernels, which would hide a real error)."""
    config = synthetic_config(MODEL)
    config.num_hidden_layers = layers
    model = build_synthetic(MODEL, device, torch.float32, seed, config=config)
    method = FullAttention()
    method.prepare(model)
    engines = {
        "compiled": Engine(model, None, graphs=False),
        "eager": Engine(model, None, graphs=False, compiled=False),
    }
    worst = dict.fromkeys(engines, 0.0)
    for item in _inputs(config.vocab_size, ctx, 2, seed + 1):
        theirs = _transformers_decode_step(model, item.input_ids)
        for name, engine in engines.items():
            ours = _decode_step_logits(engine, method, item.input_ids)
            worst[name] = max(worst[name], float((ours - theirs).abs().max() / theirs.abs().max()))
    return [
        {
            "check": f"float32 decode step vs transformers' ({name} pieces, {layers} layers)",
            "method": "full",
            "rel_error": error,
            "ok": error < FLOAT32_TOLERANCE,
        }
        for name, error in worst.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=ENTRIES)
    parser.add_argument("--layers", type=int, default=32, help="layers of the synthetic shape")
    parser.add_argument("--ctx", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--budget", type=int, default=2048, help="for the entries whose method takes one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_check runs the engine's CUDA graphs and compiled kernels: it needs a CUDA GPU")
        return 2
    from lychee_bench.harness.runner import build_methods, options_taken, split_methods
    from lychee_bench.tasks.latency.bench import synthetic_defaults

    config = synthetic_config(MODEL)
    config.num_hidden_layers = args.layers
    model = build_synthetic(MODEL, "cuda", torch.bfloat16, args.seed, config=config)
    entries = split_methods(args.methods)
    shared = options_taken(entries, {"budget": args.budget})
    methods = build_methods(entries, synthetic_defaults(MODEL, config, entries, shared))
    for method in methods:
        method.prepare(model)
    inputs = _inputs(config.vocab_size, args.ctx, args.batch, args.seed)
    rows = check_generation(model, methods, inputs, GenerationSettings(args.new_tokens), "greedy")
    sampled = GenerationSettings(args.new_tokens, temperature=0.8, top_p=0.9, seed=args.seed)
    rows += check_generation(model, methods, inputs, sampled, "sampled")
    rows.append(check_prefill(model, inputs))
    del model
    torch.cuda.empty_cache()
    rows += check_decode_step(4, args.ctx, args.seed)
    table = pd.DataFrame(rows)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "engine_check.csv", index=False)
    print(table.to_string(index=False))
    failed = int((~table["ok"]).sum())
    print(f"{len(table) - failed} of {len(table)} checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
