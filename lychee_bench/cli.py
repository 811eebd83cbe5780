"""The `lychee-bench` command line."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Benchmark and evaluate long-context sparse decoding methods (LycheeDecode and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2


def _fail(message: str, quiet: bool = False) -> None:
    if not quiet:  # quiet: a torchrun rank other than 0, whose error rank 0 prints for every rank
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"bad --option {pair!r}: write key=value, e.g. --option sink=64")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


TagOption = Annotated[
    list[str],
    typer.Option(
        "--tag",
        help="what this run is, recorded in its manifest (repeatable); tuning, superseded, check or ablation "
        "put it in the report's appendix",
    ),
]


def _tags(tags: list[str]) -> list[str]:
    """`--tag` values: letters, digits, '-', '_' and '.', each at most 40 characters; all bad ones named at once."""
    bad = [t for t in tags if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", t)]
    if bad:
        _fail(
            f"--tag {', '.join(repr(t) for t in bad)}: a tag is 1-40 letters, digits, '-', '_' or '.' "
            "(e.g. --tag tuning, --tag paper-v1)"
        )
    return sorted(set(tags))


def _method_options(pairs: list[str], budget: int | None, roles: str | None) -> dict[str, str]:
    """`-o key=value` options plus the shortcuts --budget and --roles."""
    options = _parse_options(pairs)
    if budget is not None:
        options["budget"] = str(budget)
    if roles is not None:
        options["roles"] = roles
    return options


@app.command("list")
def list_cmd() -> None:
    """Methods, tasks and models, each with a one-line description."""
    from lychee_bench.harness.catalog import METHODS, TASKS
    from lychee_bench.harness.models import DEFAULT_MODEL, EMBEDDED_MODELS

    typer.echo("methods:")
    for entry in METHODS.entries():
        aliases = f" (alias: {', '.join(entry.aliases)})" if entry.aliases else ""
        typer.echo(f"  {entry.name:<14} {entry.description}{aliases}")
    typer.echo("tasks:")
    for entry in TASKS.entries():
        typer.echo(f"  {entry.name:<14} {entry.description}")
        try:
            for line in _task_lines(entry.name, entry.load()()):
                typer.echo(f"  {'':<14} {line}")
        except Exception as error:  # a broken plugin must not hide the rest of the list
            typer.echo(f"  {'':<14} (cannot list subtasks: {error})")
    typer.echo("models:")
    width = max(14, *map(len, EMBEDDED_MODELS))
    for name, model in EMBEDDED_MODELS.items():
        default = " [default]" if name == DEFAULT_MODEL else ""
        typer.echo(f"  {name:<{width}} {model.description}{default}")
    typer.echo(f"  {'<folder>':<{width}} any local transformers causal-LM folder (llama, qwen2, qwen3)")
    typer.echo(f"  {'<owner/name>':<{width}} a hub id (needs network or a filled local hub cache)")


def _task_lines(name: str, task: object) -> list[str]:
    """A task's options (`name[key=;...]`, one line each) and its subtasks, one line each where the task describes
    them (its optional `option_descriptions` and `subtask_descriptions`, harness/task.py)."""
    options = getattr(task, "option_descriptions", dict)()
    lines = [f"options: {name}[{';'.join(f'{key}=' for key in options)}]"] if options else []
    lines += [f"  {key:<16} {text}" for key, text in options.items()]
    subtasks = task.subtasks()
    default = set(getattr(task, "default_subtasks", task.subtasks)())
    marked = default != set(subtasks)  # then * marks what a bare `--task NAME` runs
    names = [f"{('* ' if subtask in default else '  ') if marked else ''}{name}/{subtask}" for subtask in subtasks]
    runs = f"; * = what a bare {name} runs" if marked else ""
    described = getattr(task, "subtask_descriptions", dict)()
    if not described:
        return [*lines, f"subtasks ({name}/<name>{runs}): {', '.join(names)}"]
    width = max(map(len, names))
    lines.append(f"subtasks ({name}/<name>{runs}):")
    rows = zip(names, subtasks, strict=True)
    return lines + [f"  {shown:<{width}}  {described.get(subtask, '')}".rstrip() for shown, subtask in rows]


@app.command()
def run(
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="method name, or a comma list (see `list`); name[key=value;...] sets one entry's options; "
            "repeatable (--method full --method lychee runs both) [default: full]"
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="'ruler' (its subtasks), 'ruler/<subtask>', longbench, aime24; options in brackets, e.g. "
            "'aime24[k=16;max_new_tokens=8192]', 'longbench[data_dir=DIR]/qasper'; comma lists allowed"
        ),
    ] = "ruler",
    ctx: Annotated[int, typer.Option(help="context length in tokens, including the tokens to generate")] = 4096,
    model: Annotated[str | None, typer.Option(help="embedded model name, a local folder or a hub id")] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="samples per subtask (default 5; aime24: its 30 problems)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for sample generation and sampling")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
    batch_size: Annotated[int, typer.Option(min=0, help="sequences per forward; 0 = 1 on CPU, 8 on GPU")] = 0,
    budget: Annotated[int | None, typer.Option(help="token budget for sparse methods")] = None,
    roles: Annotated[
        str | None, typer.Option(help="lychee head roles: a roles file, a shipped name, uniform:N or all")
    ] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="method option key=value (repeatable)")] = [],  # noqa: B006
    decode_exercise: Annotated[
        bool | None,
        typer.Option(
            "--decode-exercise/--no-decode-exercise",
            help="decode the question's tail token by token (default: on when a decode-only method runs)",
        ),
    ] = None,
    exercise_chars: Annotated[
        int, typer.Option(min=1, help="characters of the question decoded by the exercise")
    ] = 100,
    chat_template: Annotated[
        bool | None,
        typer.Option("--chat-template/--no-chat-template", help="default: use it when the tokenizer has one"),
    ] = None,
    rope_scaling: Annotated[str | None, typer.Option(help="extend the context, e.g. yarn:2")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="a synthetic --model's tokenizer: an embedded model name or a folder")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="0 = greedy (default: the task's protocol, else 0)")
    ] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="default: the task's protocol, else 1")] = None,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default: runs/<methods>_<task>_<ctx>_<model>_s<seed>)")
    ] = None,
    tensor_parallel: Annotated[
        bool,
        typer.Option(
            "--tensor-parallel",
            help="under torchrun, split the model's heads and MLP over the processes (a model too large for one "
            "GPU) instead of dealing them the samples",
        ),
    ] = False,
    tag: TagOption = [],  # noqa: B006
) -> None:
    """Run methods over a task and print per-subtask scores. Re-running the same command resumes.

    Data parallel over several GPUs or nodes: `torchrun --nproc-per-node N -m lychee_bench.cli run ...`; tensor
    parallel for a model too large for one GPU: the same with --tensor-parallel (README, "Several GPUs")."""
    from lychee_bench.harness.distributed import ranks_from_env, shown_by_another_rank
    from lychee_bench.harness.models import ModelError
    from lychee_bench.harness.registry import UnknownNameError
    from lychee_bench.harness.runner import PlanError, RunPlan, split_methods
    from lychee_bench.harness.runner import run as run_plan
    from lychee_bench.report.summaries import run_summary

    options = _method_options(option, budget, roles)
    tags = _tags(tag)
    try:
        plan = RunPlan(
            methods=[entry for spec in (method or ["full"]) for entry in split_methods(spec)],
            task=task,
            ctx=ctx,
            model=model,
            samples=samples,
            seed=seed,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            method_options=options,
            decode_exercise=decode_exercise,
            exercise_chars=exercise_chars,
            chat_template=chat_template,
            rope_scaling=rope_scaling,
            tokenizer=tokenizer,
            temperature=temperature,
            top_p=top_p,
            out=out,
            tensor_parallel=tensor_parallel,
            tags=tags,
        )
        rows = run_plan(plan, log=lambda text: typer.echo(text, err=True))
    except PlanError as error:
        _fail("this run cannot start:\n" + str(error), quiet=shown_by_another_rank(error))
    except (UnknownNameError, ModelError) as error:
        _fail(str(error))
    except ValueError as error:
        _fail(str(error))
    if ranks_from_env().main:  # under torchrun, rank 0 prints the summary of every rank's work
        typer.echo(run_summary(rows))


@app.command("train-heads")
def train_heads_cmd(
    model: Annotated[str | None, typer.Option(help="embedded model name, a local folder or a hub id")] = None,
    retrieval_heads: Annotated[
        int | None, typer.Option(help="retrieval KV heads in total, layer 0's included (the file has exactly N)")
    ] = None,
    density: Annotated[float | None, typer.Option(help="target density over layers 1.. (instead of N)")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    ctx_min: Annotated[int, typer.Option(help="shortest training context (tokens)")] = 1000,
    ctx_max: Annotated[
        int | None,
        typer.Option(help="longest training context (tokens); default 10000 (the recipe's) or what the model holds"),
    ] = None,
    gate: Annotated[str, typer.Option(help="hardkuma (default), hardconcrete or continuous")] = "hardkuma",
    threshold_rule: Annotated[str | None, typer.Option(help="final rule; default: the gate's own")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
    seed: int = 0,
    rope_scaling: Annotated[str | None, typer.Option(help="e.g. yarn:2 for contexts past the model's limit")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 50,
    corpus: Annotated[
        str, typer.Option(help="haystack text: shakespeare (default; BookSum stand-in) or ruler-essay")
    ] = "shakespeare",
    selection_scores: Annotated[
        str,
        typer.Option(help="training sparse sets scored per query_head (official, default) or per kv_group (q mean)"),
    ] = "query_head",
    time_limit: Annotated[
        float | None,
        typer.Option(help="minutes for this command: stop after a checkpoint, write roles.json; rerun to continue"),
    ] = None,
    lambda_lr: Annotated[
        float,
        typer.Option(
            help="step size of the density constraint's multiplier λ (λ <- λ·exp(η·c)); raise it when "
            "the final density stays above the target"
        ),
    ] = 0.001,
    out: Annotated[Path, typer.Option(help="training folder; rerunning with the same folder resumes")] = Path(
        "runs/train-heads"
    ),
) -> None:
    """Learn LycheeDecode head roles with HardKuma gates (SPEC §3); writes roles.json, a log and a plot."""
    from lychee_bench.harness.models import ModelError
    from lychee_bench.harness.runner import PlanError, resolve_device, resolve_dtype
    from lychee_bench.training.cli_entry import run_train_heads_cli

    try:
        chosen_device = resolve_device(device)
        chosen_dtype = resolve_dtype(dtype, chosen_device)
        result = run_train_heads_cli(
            model,
            retrieval_heads,
            density,
            steps,
            ctx_min,
            ctx_max,
            gate,
            out,
            chosen_device,
            chosen_dtype,
            seed,
            rope_scaling,
            threshold_rule,
            checkpoint_every=checkpoint_every,
            corpus=corpus,
            selection_scores=selection_scores,
            time_limit=time_limit,
            lambda_lr=lambda_lr,
        )
    except PlanError as error:
        _fail("training cannot start:\n" + str(error))
    except (ModelError, ValueError) as error:
        _fail(str(error))
    typer.echo(f"roles: {result.roles_path}")
    if result.warning:
        typer.echo(f"warning: {result.warning}")
    if result.stopped_by == "time_limit":
        typer.echo(
            f"stopped by --time-limit after step {result.steps} of {steps} (checkpointed; roles.json from that "
            "state); rerun the same command to continue"
        )


@app.command()
def calibrate(
    method: Annotated[str, typer.Option(help="kascade (anchor layers + head map) or tidal (re-selection layer)")],
    model: Annotated[str | None, typer.Option(help="embedded model name, a local folder or a hub id")] = None,
    ctx: Annotated[int, typer.Option(help="tokens per calibration prompt")] = 4096,
    samples: Annotated[int, typer.Option(min=1, help="calibration prompts")] = 8,
    seed: int = 0,
    anchors: Annotated[int | None, typer.Option(help="kascade anchor count (default: 5 per 32 layers)")] = None,
    importance: Annotated[
        bool, typer.Option("--importance/--no-importance", help="kascade: weight layers by importance (its code)")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    out: Annotated[Path | None, typer.Option(help="artifact (default runs/calibrate/<method>/<model>.json)")] = None,
) -> None:
    """Calibrate Kascade's anchor layers or TidalDecode's re-selection layer for a model; writes the artifact."""
    from lychee_bench.calibration.command import calibration_summary, run_calibrate
    from lychee_bench.calibration.data import CalibrationSet
    from lychee_bench.harness.models import ModelError
    from lychee_bench.harness.runner import resolve_device

    try:
        spec = CalibrationSet(ctx=ctx, samples=samples, seed=seed)
        chosen_device = resolve_device(device)
        path, data = run_calibrate(method, model, spec, out, chosen_device, "float32", anchors, importance=importance)
    except (ModelError, ValueError) as error:
        _fail(str(error))
    for line in calibration_summary(method, path, data):
        typer.echo(line)


@app.command()
def bench(
    methods: Annotated[
        str,
        typer.Option(
            help="comma list, e.g. full,lychee,duo[roles=uniform:32]; the default times lychee's fast block path "
            "(plain lychee is token granularity, the paper's quality setting)"
        ),
    ] = "full,lychee[granularity=block]",
    ctx: Annotated[str, typer.Option(help="comma list of contexts")] = "4096,16384,32768,65536,131072",
    batch: Annotated[str, typer.Option(help="comma list of batch sizes")] = "1,4",
    model: Annotated[
        str, typer.Option(help="llama3-8b-synthetic, qwen3-8b-synthetic, a folder or an embedded name")
    ] = "llama3-8b-synthetic",
    reps: Annotated[int, typer.Option(min=1)] = 50,
    warmup: Annotated[int, typer.Option(min=1)] = 5,
    budget: Annotated[int | None, typer.Option(help="token budget for sparse methods")] = None,
    roles: Annotated[str | None, typer.Option(help="lychee roles (default uniform: 12.5% of KV heads)")] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="method option key=value")] = [],  # noqa: B006
    prefill: Annotated[bool, typer.Option("--prefill/--no-prefill", help="fill by a timed chunked prefill")] = False,
    prefill_chunk: Annotated[int, typer.Option(min=0, help="prefill chunk in tokens (0: the engine's choice)")] = 0,
    rope_scaling: Annotated[str | None, typer.Option(help="extend a real model's context, e.g. yarn:16")] = None,
    stock: Annotated[
        bool, typer.Option("--stock/--no-stock", help="also time stock transformers' decode step (DynamicCache)")
    ] = True,
    attention: Annotated[bool, typer.Option("--attention/--no-attention", help="also time attention alone")] = True,
    smoke: Annotated[bool, typer.Option("--smoke", help="CPU smoke mode: tiny model, not a measurement")] = False,
    compile_blocks: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile each layer's dense pieces (default: on CUDA)"),
    ] = None,
    profile: Annotated[
        int, typer.Option(min=0, help="also profile N steps per point: kernels, busy time, gaps (profiles/*.txt)")
    ] = 0,
    full_budget: Annotated[
        bool, typer.Option("--full-budget", help="also run each sparse method with a budget of the longest context")
    ] = False,
    tensor_parallel: Annotated[
        bool,
        typer.Option(
            "--tensor-parallel",
            help="split the model's heads and MLP over the processes torchrun starts (one GPU each): torchrun "
            "--nproc-per-node N -m lychee_bench.cli bench --tensor-parallel ...; floors are per GPU",
        ),
    ] = False,
    skip_unfit: Annotated[
        bool,
        typer.Option("--skip-unfit", help="record points that do not fit the GPUs as refused (with the arithmetic)"),
    ] = False,
    graphs: Annotated[
        bool, typer.Option("--graphs/--no-graphs", help="time each step as a CUDA graph replay (default) or eagerly")
    ] = True,
    device: str = "cuda",
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="result folder")] = Path("runs/latency"),
    tag: TagOption = [],  # noqa: B006
) -> None:
    """End-to-end decode latency per method x context x batch against the byte floor (SPEC §6; GPU)."""
    from lychee_bench.harness.records import read_records
    from lychee_bench.harness.registry import UnknownNameError
    from lychee_bench.harness.runner import split_methods
    from lychee_bench.tasks.latency.bench import BenchError, run_bench
    from lychee_bench.tasks.latency.plot import latency_table

    options = _method_options(option, budget, roles)
    tags = _tags(tag)
    try:
        contexts = [int(c) for c in ctx.split(",") if c.strip()]
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        _fail(f"--ctx and --batch take comma lists of integers, got {ctx!r} and {batch!r}")
    try:
        run_bench(
            split_methods(methods),
            contexts,
            batches,
            model=model,
            out=out,
            device=device,
            reps=reps,
            warmup=warmup,
            options=options,
            prefill=prefill,
            prefill_chunk=prefill_chunk,
            rope_scaling=rope_scaling,
            stock=stock,
            attention=attention,
            compile=compile_blocks,
            profile=profile,
            full_budget=full_budget,
            tensor_parallel=tensor_parallel,
            skip_unfit=skip_unfit,
            graphs=graphs,
            smoke=smoke,
            seed=seed,
            tags=tags,
            log=lambda text: typer.echo(text, err=True),
        )
    except BenchError as error:
        _fail("this bench cannot start:\n" + str(error))
    except (UnknownNameError, ValueError) as error:
        _fail(str(error))
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 writes the records and prints them
        typer.echo(latency_table(read_records(out)))


@app.command()
def plot(
    paths: Annotated[
        list[Path], typer.Argument(help="result folders (run, bench or suite folders, or folders of them)")
    ],
    out: Annotated[
        Path | None, typer.Option(help="folder for the PNGs (default with one folder: <folder>/plots)")
    ] = None,
) -> None:
    """The paper figures of the given results, as PNG files: speedup over full (and over stock transformers where
    timed), latency and time over the floor vs context, the decode-step breakdown, quality vs budget, quality vs
    speed (joined across the folders, per model) and per-subtask bars. Writes figures.json beside them (title,
    caption, sources, layout)."""
    from lychee_bench.harness.paths import unwritable_reason
    from lychee_bench.regress.sources import ResultsError
    from lychee_bench.report.figures import write_figures

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"{', '.join(missing)} does not exist; give folders that `run`, `bench` or `suite` wrote")
    if out is None and len(paths) > 1:
        _fail(f"{len(paths)} folders given: say where the figures go with --out DIR")
    folder = out or (paths[0] if paths[0].is_dir() else paths[0].parent) / "plots"
    if (unwritable := unwritable_reason(folder, "--out" if out else "the plots folder")) is not None:
        _fail(unwritable)
    try:
        written, absent = write_figures(paths, folder)
    except ResultsError as error:
        _fail(str(error))
    for path in written:
        typer.echo(str(path))
    for name, reason in absent:
        typer.echo(f"not drawn: {name}: {reason}", err=True)
    if not written:
        _fail(f"no figure could be drawn from {', '.join(map(str, paths))} (reasons above)")


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a run folder, a records .jsonl file, or a folder of runs")],
    format: Annotated[str, typer.Option("--format", help="table, markdown or json")] = "table",
    html: Annotated[
        Path | None, typer.Option("--html", help="also write one self-contained HTML page (tables, plots, provenance)")
    ] = None,
) -> None:
    """Summarise results: per-subtask scores with the average (table or markdown) and each task's own tables
    (AIME pass@1 per problem, LongBench averages and length buckets), a bench folder's latency table, or
    machine-readable rows (json; a task table's rows carry a `summary` field)."""
    from lychee_bench.harness.records import average_rows, read_records, summarize
    from lychee_bench.regress.sources import ResultsError
    from lychee_bench.report.figures import load_sets
    from lychee_bench.report.headline import headline_rows
    from lychee_bench.report.summaries import json_rows, score_text, task_blocks

    if format not in ("table", "markdown", "json"):
        _fail(f"unknown --format {format!r}; use table, markdown or json")
    if not path.exists():
        _fail(f"{path} does not exist; give a run folder (see `run --out`) or a records .jsonl file")
    problems: list = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_records(path, problems)
        rows = summarize(records)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    latency = [r for r in records if r.get("kind") == "latency"]
    # The result sets, read once: the task tables, the headline and the HTML page all come from them.
    set_problems: list[str] = []
    sets, unreadable = [], None
    try:
        sets = load_sets([path], set_problems)
    except ResultsError as error:
        unreadable = error
    if not rows and not latency and unreadable:  # kernel-bench files only would have given sets
        _fail(str(unreadable))
    if html is not None and (html.is_dir() or any(parent.is_file() for parent in html.parents)):
        _fail(
            f"--html {html} cannot be written (it is a folder, or a file stands where a folder is needed); "
            "pass a new .html path"
        )
    blocks = task_blocks(sets) if rows else []
    for block in blocks:
        if block.problem:
            typer.echo(f"warning: {block.problem}", err=True)
    if format == "json":
        found = rows + average_rows(rows) + latency + json_rows(blocks) + headline_rows(sets)
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in found]
        typer.echo(json.dumps(clean, indent=1))
    elif latency and not rows:  # a bench folder: the table `bench` prints
        from lychee_bench.tasks.latency.plot import latency_table

        typer.echo(latency_table(latency))
    else:
        from lychee_bench.report.headline import headline_tables_text

        headline = headline_tables_text(headline_rows(sets), markdown=format == "markdown")
        if headline:  # several runs: the answer first, then every table
            typer.echo(headline + "\n")
        typer.echo(score_text(rows, blocks, markdown=format == "markdown"))
    if html is not None:
        from lychee_bench.report.html import write_page

        if unreadable:
            _fail(str(unreadable))
        try:
            written, plots = write_page(sets, html, problems=set_problems)
        except OSError as error:  # e.g. a folder that cannot be created there
            _fail(f"--html {html} cannot be written ({error}); pass a path in a folder you can write")
        typer.echo(f"html report: {written} ({plots} plots)", err=True)


@app.command()
def compare(
    base: Annotated[
        Path, typer.Argument(help="baseline: a run folder, records .jsonl, kernel-bench .json or a folder")
    ],
    new: Annotated[Path, typer.Argument(help="the results to check, in the same forms as BASE")],
    tol: Annotated[
        list[str],
        typer.Option(
            "--tol",
            help="tolerance NAME=VALUE, NAME a metric (median_ms=0.05) or a kind: quality (points), latency and "
            "rate (fraction), error (absolute) (repeatable)",
        ),
    ] = [],  # noqa: B006
    z: Annotated[float, typer.Option(min=0.0, help="standard errors a sampled metric may move; 0 = exact")] = 2.0,
    fail_on_missing: Annotated[
        bool, typer.Option("--fail-on-missing", help="rows of BASE absent from NEW fail too (default: warn)")
    ] = False,
    format: Annotated[str, typer.Option("--format", help="table, markdown or json")] = "table",
    changes_only: Annotated[bool, typer.Option("--changes-only", help="table: hide rows that did not move")] = False,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="pass when no row of NEW matches BASE (default: that fails)")
    ] = False,
) -> None:
    """Compare two result sets row by row; exit 1 if a score drops or a latency rises beyond its tolerance."""
    from lychee_bench.regress.compare import compare_command

    code = compare_command(
        base,
        new,
        tol,
        z,
        fail_on_missing,
        format,
        changes_only,
        allow_empty,
        echo=typer.echo,
        echo_err=lambda text: typer.echo(text, err=True),
    )
    raise typer.Exit(code)


@app.command()
def suite(
    name: Annotated[str, typer.Argument(help="the suite: smoke")] = "smoke",
    out: Annotated[
        Path | None,
        typer.Option(help="run folder (default runs/suite-<name>; with --update-baseline: results/<name>)"),
    ] = None,
    compare_with: Annotated[
        Path | None,
        typer.Option("--compare", help="baseline to compare with, e.g. results/smoke; exit 1 on regression"),
    ] = None,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="rerun the suite and rewrite its committed baseline")
    ] = False,
    tol: Annotated[list[str], typer.Option("--tol", help="as in `compare` (repeatable)")] = [],  # noqa: B006
    z: Annotated[float, typer.Option(min=0.0, help="as in `compare`; 0 = scores must reproduce exactly")] = 2.0,
) -> None:
    """Run a fixed suite (smoke: CPU, about 3 minutes); with --compare, fail on a regression from the baseline."""
    from lychee_bench.regress.suite import suite_command

    code = suite_command(
        name,
        out,
        compare_with,
        update_baseline,
        tol,
        z,
        echo=typer.echo,
        echo_err=lambda text: typer.echo(text, err=True),
    )
    raise typer.Exit(code)


@app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def lm_eval_cmd(ctx: typer.Context) -> None:
    """lm-evaluation-harness's own CLI with `--model lychee-bench` registered; every argument goes to lm-eval
    (e.g. --model lychee-bench --model_args pretrained=smollm2-135m,method=lychee --tasks ... --device cpu)."""
    from lychee_bench.integrations.lm_eval_cli import main as lm_eval_main

    lm_eval_main(list(ctx.args))


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
