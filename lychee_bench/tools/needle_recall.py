"""Needle recall: which share of the needle's value tokens each method's selection reads, per layer and KV head.

    python -m lychee_bench.tools.needle_recall --model qwen2.5-coder-0.5b --ctx 16384 --samples 10 \\
        --method "lychee[roles=uniform:6],tidal,kascade,quest,streaming" --budget 2048 --out runs/recall

For RULER samples whose gold answers appear in the context (every niah subtask; by default the eight niah
subtasks), the needle is the set of context tokens that overlap an occurrence of a gold string. Each sample is
prefilled densely once (the engine's prefill); then `full` decodes greedily and every other method decodes from
the same prefix with the same tokens fed (full's), so each method's selection is compared on identical inputs.
Recorded are the decode steps whose outputs are the first `--steps` answer tokens (with the decode exercise, as
`run` uses it for decode-only methods, the first of them is the step that feeds the answer prefix's last token).
After each of those steps every layer's selection is read through the method's own record of what its reference
path attended to (`Method.selected_positions`, and for LycheeDecode's retrieval heads the sets they picked for
the sparse heads, `Method.chosen_positions`): the methods' real selection code runs, on its reference path (the
path the method matrix and `path_check` prove equal to the Triton one). `full` reads everything by definition.

Reported per layer (mean over samples, steps and heads): the fraction of needle tokens inside the set the layer
reads; for each lychee entry also its retrieval heads' picks (`<label> picks`). The JSON under --out keeps every
head of every layer, step and sample, with the set sizes. The table is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lychee_bench.harness import models
from lychee_bench.harness.engine import DecodeLoop, Engine, GenerationSettings
from lychee_bench.harness.inputs import FormattedInput, InputFormatter
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.registry import UnknownNameError
from lychee_bench.harness.runner import (
    PlanError,
    RunPlan,
    build_samples,
    check_run,
    formatter_for,
    run_setting,
    split_methods,
)
from lychee_bench.harness.task import Sample
from lychee_bench.methods.base import Method
from lychee_bench.methods.state import DecodeState

NIAH_SUBTASKS = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
)
DEFAULT_TASK = ",".join(f"ruler/{name}" for name in NIAH_SUBTASKS)
RESULT_FILE = "needle_recall.json"


class RecallError(ValueError):
    """A diagnosis that cannot run as asked; the message says what to change."""


def needle_positions(formatter: InputFormatter, sample: Sample, input_ids: list[int]) -> list[int]:
    """Token positions of the model input (`input_ids`, as `formatter` builds it) that overlap an occurrence of
    one of the sample's gold strings in the rendered input text; empty when no gold string occurs there."""
    text, add_special = formatter.render(sample.prompt, sample.answer_prefix)
    encoded = formatter.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    if list(encoded.input_ids) != list(input_ids):
        raise RecallError("the rendered input does not tokenise to the model input; cannot place the needle")
    spans = []
    for reference in sample.references:
        start = text.find(reference) if reference else -1
        while start >= 0:
            spans.append((start, start + len(reference)))
            start = text.find(reference, start + 1)
    return [
        index
        for index, (begin, end) in enumerate(encoded.offset_mapping)
        if end > begin and any(begin < stop and end > first for first, stop in spans)
    ]


@dataclass
class StepRecord:
    """What one method's selection read at one decode step, per layer: the recall of the needle per head row
    (KV heads or query heads, as the method records them) and the sizes of those sets."""

    step: int
    length: int  # real tokens in the cache at this step, the one fed included
    layers: list[dict[str, Any]] = field(default_factory=list)


def _row_stats(keep: torch.Tensor, needle: torch.Tensor, length: int) -> tuple[list[float], list[int]]:
    """keep [H, S] bool of one sequence: the needle's recall and the set size (real tokens) per head row."""
    kept = keep[:, :length]
    return kept[:, needle].float().mean(-1).tolist(), kept.sum(-1).tolist()


def layer_selection(
    method: Method, layer: int, state: DecodeState, needle: torch.Tensor, length: int
) -> dict[str, Any]:
    """One layer's selection after a decode step: recall and set size per head row, and the picks where the
    method reports them. A dense baseline reads every real token."""
    keep = method.selected_positions(layer, state)
    if keep is None:
        if not method.is_dense_baseline:
            raise RecallError(
                f"{method.label} records no selection on its reference path (Method.selected_positions returned "
                "None): give its class a `selected_positions`, or leave it out of --method"
            )
        recall, size = [1.0], [length]
    else:
        recall, size = _row_stats(keep[0], needle, length)
    entry: dict[str, Any] = {"layer": layer, "recall": recall, "set_size": size}
    picks = method.chosen_positions(layer, state)
    if picks:
        heads = sorted(picks)
        stacked = torch.stack([picks[h][0] for h in heads])
        recall_picks, size_picks = _row_stats(stacked, needle, length)
        entry["picks"] = {"kv_heads": heads, "recall": recall_picks, "set_size": size_picks}
    return entry


def advance(loop: DecodeLoop) -> None:
    """One eager decode step exactly as `DecodeLoop.run` takes it (step, count, cache correction when due)."""
    loop.step()
    loop.done_steps += 1
    period = loop.method.correction_period
    if period and loop.done_steps % period == 0:
        loop.correct()


def decode_and_record(
    engine: Engine,
    cache: StaticKVCache,
    method: Method,
    prompt: list[int],
    forced: list[int],
    total: int,
    logits: torch.Tensor,
    first_recorded: int,
    needle: torch.Tensor,
) -> tuple[list[int], list[StepRecord]]:
    """`total` decode steps of `method` from the prefilled prefix (logits: the prefill's), feeding `forced` first
    and greedy tokens after; returns the token fed at each step and, for the steps from `first_recorded` on, each
    layer's selection."""
    limit = max(total - len(forced), 0) + 1
    settings = GenerationSettings(max_new_tokens=limit, ignore_eos=True)
    loop = DecodeLoop(engine, cache, method, [prompt], [forced], [limit], [0], settings, logits)
    if loop.uses_horizon:  # as DecodeLoop.run: a graph-safe method's steps see the horizon geometry
        loop.state.geometry = loop.horizon
    records = []
    for step in range(total):
        advance(loop)
        if step >= first_recorded:
            length = len(prompt) + step + 1  # real tokens in the cache, the one fed at this step included
            layers = [
                layer_selection(method, layer, loop.state, needle, length) for layer in range(engine.stack.num_layers)
            ]
            records.append(StepRecord(step, length, layers))
    return loop.token_log[0, :total].tolist(), records


def needle_sample(
    engine: Engine, methods: list[Method], formatted: FormattedInput, needle: list[int], steps: int
) -> tuple[list[int], dict[str, list[StepRecord]]]:
    """Every method's selections on one sample: one dense prefill, `full` greedy (the tokens every method is then
    fed), then each method from the same prefix. Returns the tokens fed and the records by method label."""
    ids, exercise = formatted.input_ids, formatted.exercise_tokens
    prompt, forced = ids[: len(ids) - exercise], ids[len(ids) - exercise :]
    first_recorded = max(exercise - 1, 0)
    total = first_recorded + steps
    cache = StaticKVCache.for_config(engine.model.config, 1, len(prompt) + total + 2, engine.dtype, engine.device)
    logits = engine.prefill(cache, [prompt], len(prompt))
    needle_index = torch.tensor(needle, dtype=torch.long, device=engine.device)
    full, others = methods[0], methods[1:]
    fed, records = decode_and_record(engine, cache, full, prompt, forced, total, logits, first_recorded, needle_index)
    out = {full.label: records}
    for method in others:
        _, out[method.label] = decode_and_record(
            engine, cache, method, prompt, fed, total, logits, first_recorded, needle_index
        )
    return fed, out


def sample_entry(
    sample: Sample, needle: list[int], formatted: FormattedInput, fed: list[int], records: dict[str, list[StepRecord]]
) -> dict[str, Any]:
    """One sample's part of the JSON."""
    return {
        "task": sample.task,
        "subtask": sample.subtask,
        "index": sample.index,
        "input_tokens": len(formatted.input_ids),
        "exercise_tokens": formatted.exercise_tokens,
        "needle_tokens": len(needle),
        "needle_positions": needle,
        "references": sample.references,
        "fed_tokens": fed,
        "methods": {
            label: [{"step": r.step, "length": r.length, "layers": r.layers} for r in steps]
            for label, steps in records.items()
        },
    }


def recall_table(samples: list[dict[str, Any]], labels: list[str]) -> pd.DataFrame:
    """Layers down, methods across: the needle's recall in the set each layer reads, mean over head rows, then over
    steps and samples; `<label> picks`: the retrieval heads' picks of that layer (where the method has picks).
    The last row is the mean over layers."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for sample in samples:
        for label in labels:
            for step in sample["methods"][label]:
                for layer in step["layers"]:
                    cells[(layer["layer"], label)].append(sum(layer["recall"]) / len(layer["recall"]))
                    if "picks" in layer:
                        picks = layer["picks"]["recall"]
                        cells[(layer["layer"], f"{label} picks")].append(sum(picks) / len(picks))
    columns = [c for label in labels for c in (label, f"{label} picks") if any(k[1] == c for k in cells)]
    layers = sorted({layer for layer, _ in cells})
    table = pd.DataFrame(
        {c: [_mean(cells.get((layer, c), [])) for layer in layers] for c in columns},
        index=pd.Index(layers, name="layer"),
    )
    table.loc["mean"] = table.mean(axis=0, skipna=True)
    return table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="embedded model name or folder (default: the default model)")
    parser.add_argument(
        "--method",
        default="lychee,tidal,kascade,quest,streaming",
        help="comma list as in `run` (name[key=value;...] entries); full always runs first",
    )
    parser.add_argument("--task", default=DEFAULT_TASK, help="RULER subtasks (default: the eight niah subtasks)")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=5, help="samples per subtask")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--budget", type=int, default=None, help="token budget given to every method that has one")
    parser.add_argument("--roles", default=None, help="lychee/duo roles (a file, a shipped name, uniform:N)")
    parser.add_argument("-o", "--option", action="append", default=[], help="key=value, shared as in `run`")
    parser.add_argument("--steps", type=int, default=4, help="answer steps recorded per sample")
    parser.add_argument(
        "--decode-exercise", action=argparse.BooleanOptionalAction, default=True, help="as `run` (on by default)"
    )
    parser.add_argument("--exercise-chars", type=int, default=100)
    parser.add_argument("--rope-scaling", default=None, help="e.g. yarn:4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {RESULT_FILE} (must not hold one)")
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace) -> RunPlan:
    """The run plan the diagnosis shares with `run`: full first, every method on its reference path."""
    if args.steps < 1 or args.samples < 1:
        raise RecallError("--steps and --samples must be at least 1")
    options: dict[str, Any] = {}
    for pair in args.option:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RecallError(f"bad -o {pair!r}: write key=value, e.g. -o sink=64")
        options[key.strip().replace("-", "_")] = value.strip()
    if options.get("path", "reference") != "reference":
        raise RecallError("the diagnosis reads the reference path's selections; leave out -o path")
    options["path"] = "reference"
    if args.budget is not None:
        options["budget"] = str(args.budget)
    if args.roles is not None:
        options["roles"] = args.roles
    entries = [entry for entry in split_methods(args.method) if entry != "full"]
    return RunPlan(
        methods=["full", *entries],
        task=args.task,
        ctx=args.ctx,
        model=args.model,
        samples=args.samples,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_size=1,
        method_options=options,
        decode_exercise=args.decode_exercise,
        exercise_chars=args.exercise_chars,
        rope_scaling=args.rope_scaling,
    )


def diagnose(args: argparse.Namespace, log: Any = print) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run the diagnosis; returns the JSON content and the table (also written and printed by `main`)."""
    from tqdm.auto import tqdm

    plan = plan_of(args)
    checked = check_run(plan)
    not_reference = [f"{m.label} (path {m.path})" for m in checked.methods if m.path != "reference"]
    if not_reference:
        raise RecallError(f"{', '.join(not_reference)}: the diagnosis reads reference-path selections; drop path=")
    target = args.out / RESULT_FILE
    if target.exists():
        raise RecallError(f"{target} exists; give another --out (nothing was changed)")
    setting = run_setting(checked)
    work = build_samples(checked, setting.formatter)
    log(f"loading {checked.source.name} on {checked.device} ({checked.dtype}) ...")
    model = models.load_model(checked.source, checked.config, checked.device, checked.dtype, seed=plan.seed)
    for method in checked.methods:
        method.prepare(model)
    engine = Engine(model, setting.tokenizer, graphs=False, compiled=False)
    labels = [m.label for m in checked.methods]
    samples, skipped = [], []
    everything = [(sample, name) for name, _, items in work for sample in items]
    for sample, _ in tqdm(everything, desc="needle recall", unit="sample"):
        formatter = formatter_for(setting, sample)
        formatted = formatter.format(sample.prompt, sample.answer_prefix)
        needle = needle_positions(formatter, sample, formatted.input_ids)
        if not needle:
            skipped.append(f"{sample.subtask}#{sample.index}")
            continue
        with torch.inference_mode():
            fed, records = needle_sample(engine, checked.methods, formatted, needle, args.steps)
        samples.append(sample_entry(sample, needle, formatted, fed, records))
    if not samples:
        raise RecallError(f"no sample of {plan.task} has its answer in the context; use RULER niah subtasks")
    table = recall_table(samples, labels)
    result = {
        "tool": "lychee_bench.tools.needle_recall",
        "plan": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "methods": plan.methods},
        "model": setting.model_info,
        "input_format": setting.input_format,
        "methods": {m.label: m.describe() for m in checked.methods},
        "provenance": setting.provenance,
        "recorded_steps": "the decode steps whose outputs are the first --steps answer tokens; every method is fed "
        "full's tokens",
        "samples": samples,
        "skipped": skipped,
        "table": json.loads(table.to_json(orient="index")),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    return result, table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result, table = diagnose(args)
    except (RecallError, PlanError, UnknownNameError, models.ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = f"; skipped (answer not in the context): {', '.join(result['skipped'])}" if result["skipped"] else ""
    print(f"results: {args.out / RESULT_FILE}{skipped}")
    print(
        f"needle recall per layer · {result['model']['name']} · ctx {args.ctx} · {len(result['samples'])} samples x "
        f"{args.steps} answer steps (fraction of the needle's value tokens in the set each layer reads)"
    )
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
