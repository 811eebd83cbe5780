"""`lychee-bench bench`: end-to-end decode latency per method, context and batch, against the byte floor.

For every (batch, context) the static cache is filled once (random K/V, or a real chunked prefill that is
timed), then each method gets the same cache: its whole decode step (all layers, weights, LM head) is captured
in a CUDA graph and replayed (CUDA events, median and spread after a warm-up), its attention alone is timed
the same way, and the peak memory is read. The floor of a point is the bytes the step must read (weights +
the K/V the method reads) over the copy bandwidth measured at the start of the same run (an SM elementwise
copy: ``torch.mul(src, 1, out=dst)`` on 2 GiB, read + write counted). SPEC §6; issue #5.

Tensor parallel (`--tensor-parallel`, launched by torchrun; harness/tensor_parallel.py): every process builds its
shard of the model (a synthetic shape shard by shard on its own GPU) and its KV heads' cache, and times the same
steps in lockstep (the collectives join them). Floors are per GPU: the bytes the fullest process reads (its shard
of the weights and the K/V of its heads, as each method states for those heads) over that GPU's copy bandwidth,
the largest over the processes. The all-reduces and the logits' gather of one step are timed alone beside it.
Before anything is loaded every point is checked against the GPUs' memory (harness/memory.py
`device_fit_refusal`); a point that does not fit refuses the bench with the arithmetic, or with `skip_unfit` is
recorded as refused and the others run. Only rank 0 writes records and logs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lychee_bench.harness import provenance, records, tensor_parallel
from lychee_bench.harness.engine import Engine
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.memory import HEADROOM, device_fit_refusal
from lychee_bench.harness.paths import unwritable_reason
from lychee_bench.harness.synthetic_models import (
    SYNTHETIC_MODELS,
    TINY_MODELS,
    build_synthetic,
    describe_synthetic,
    synthetic_config,
)
from lychee_bench.kernels.timing import Timing, capture_graph, time_cuda, time_wall
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.head_shard import local_shape
from lychee_bench.methods.kascade import KASCADE_PRESET_FOR_SHAPE  # noqa: F401  (tests and scripts read it here)
from lychee_bench.methods.state import DecodeState
from lychee_bench.tasks.latency.fixed_step import FixedContextStep
from lychee_bench.tasks.latency.profile import profile_steps
from lychee_bench.tasks.latency.stock import stock_decode_step
from lychee_bench.tasks.latency.traffic import floor_ms, full_kv_bytes, kv_bytes_read, weight_bytes_read

SMOKE_LABEL = "cpu-smoke, not a measurement"
STOCK_LABEL = "transformers"  # stock transformers' decode step, what a user would run instead
MATMUL_SIZE = 8192
SMOKE_MAX_CTX = 8192
COPY_ELEMENTS_GPU = 1 << 30  # 2 GiB of bf16
COPY_ELEMENTS_CPU = 1 << 22
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_defaults(model: str, config: Any, entries: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The shared options with the bench's defaults for what a synthetic model has no artifact for: each method's
    class says which (`Method.synthetic_options`; e.g. lychee and duo: uniform roles with 12.5% retrieval heads,
    kascade: the published anchors of the shape's model); options the user gave win. A real model keeps the
    options as given (its shipped roles and calibrations, as in `run`)."""
    from lychee_bench.harness.catalog import METHODS
    from lychee_bench.harness.runner import parse_method_entry

    options = dict(options)
    if model not in SYNTHETIC_MODELS:  # a real model: its shipped artifacts, as `run` uses them
        return options
    for entry in entries:
        name = parse_method_entry(entry)[0].lower()
        if name in METHODS:  # an unknown name is reported when the methods are built
            for key, value in METHODS.get(name).synthetic_options(config, model).items():
                options.setdefault(key, value)
    return options


class BenchError(ValueError):
    """A bench that cannot start; carries every reason."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("\n".join(f"- {reason}" for reason in reasons))


@dataclasses.dataclass
class BenchPlan:
    methods: list[str]
    contexts: list[int]
    batches: list[int]
    model: str = "llama3-8b-synthetic"
    out: Path = Path("runs/latency")
    device: str = "cuda"
    dtype: str = "bfloat16"
    reps: int = 50
    warmup: int = 5
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    prefill: bool = False  # fill the cache with a real (timed, chunked) prefill instead of random K/V
    prefill_chunk: int = 0  # 0: the engine's choice
    rope_scaling: str | None = None  # a real model's context extension, e.g. "yarn:16"
    attention: bool = True  # also time the attention alone
    smoke: bool = False
    seed: int = 0
    compile: bool | None = None  # torch.compile the per-layer dense pieces; None: on CUDA, off in smoke
    stock: bool = True  # also time stock transformers' decode step (DynamicCache, SDPA) at each point
    matmul: bool = True  # measure the bf16 matrix-product rate (the prefill's FLOP floor)
    profile: int = 0  # also profile this many steps per point (tasks/latency/profile.py)
    full_budget: bool = False  # also run each sparse method with a budget holding the longest context (SPEC §4)
    tensor_parallel: bool = False  # split the model over the processes torchrun started (harness/tensor_parallel.py)
    skip_unfit: bool = False  # record the points that do not fit the GPUs as refused and run the others
    graphs: bool = True  # capture each decode step in a CUDA graph (off: time eager steps)
    tags: list[str] = dataclasses.field(default_factory=list)  # what the run is (`--tag`; read by the report)


def run_bench(
    methods: list[str],
    contexts: list[int],
    batches: list[int],
    model: str = "llama3-8b-synthetic",
    out: Path | str = Path("runs/latency"),
    device: str = "cuda",
    reps: int = 50,
    log: Callable[[str], None] = print,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Measure every (method, context, batch); write records into ``out``; return them."""
    plan = BenchPlan(
        methods=list(methods),
        contexts=sorted(contexts),
        batches=sorted(batches),
        model=model,
        out=Path(out),
        device=device,
        reps=reps,
        **settings,
    )
    return Bench(plan, log).run()


class Bench:
    def __init__(self, plan: BenchPlan, log: Callable[[str], None] = print):
        self.plan = plan
        self.log = log
        self._refuse_early()
        self.device = torch.device("cpu" if plan.smoke else plan.device)
        self.dtype_name = "float32" if plan.smoke else plan.dtype
        self.dtype = TORCH_DTYPES[self.dtype_name]
        self.parallel: tensor_parallel.TensorParallel | None = None  # set in run() under --tensor-parallel
        self.world = (tensor_parallel.launched_world() or 1) if plan.tensor_parallel else 1
        self.unfit: dict[tuple[int, int], str] = {}  # (batch, ctx) -> why it does not fit (skip_unfit)

    # ---- checks, before anything is loaded -------------------------------------------------------------
    def _refuse_early(self) -> None:
        plan = self.plan
        reasons = []
        if plan.smoke:
            if plan.model not in TINY_MODELS:
                reasons.append(
                    f"the CPU smoke mode runs tiny models only ({', '.join(TINY_MODELS)}), not {plan.model!r}"
                )
            if any(c > SMOKE_MAX_CTX for c in plan.contexts):
                reasons.append(f"the CPU smoke mode takes contexts up to {SMOKE_MAX_CTX}, got {plan.contexts}")
        elif not torch.cuda.is_available():
            reasons.append(
                "bench measures GPU decode latency and needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}). To check the plumbing on a CPU, run the smoke mode: --smoke "
                f"(run_bench(..., smoke=True)): a tiny model, wall-clock timing, labelled '{SMOKE_LABEL}'."
            )
        elif not plan.device.startswith("cuda"):
            reasons.append(f"bench runs on a CUDA device, not {plan.device!r}; use --device cuda (or --smoke)")
        if plan.dtype not in TORCH_DTYPES:
            reasons.append(f"unknown dtype {plan.dtype!r}; use one of {', '.join(TORCH_DTYPES)}")
        if not plan.methods or not plan.contexts or not plan.batches:
            reasons.append("give at least one method, one context and one batch size")
        if any(c < 2 for c in plan.contexts) or any(b < 1 for b in plan.batches):
            reasons.append(f"contexts must be >= 2 and batches >= 1, got {plan.contexts} and {plan.batches}")
        if (unwritable := unwritable_reason(plan.out, "--out")) is not None:
            reasons.append(unwritable)
        if plan.rope_scaling and plan.model in SYNTHETIC_MODELS:
            reasons.append(
                f"--rope-scaling {plan.rope_scaling} extends a real model's context, and {plan.model} is a synthetic "
                "shape timed at its published configuration; drop --rope-scaling (or bench a real model)"
            )
        world = tensor_parallel.launched_world()
        if plan.tensor_parallel and world is None:
            reasons.append(
                "--tensor-parallel splits the model over the processes torchrun starts; launch with "
                f"{tensor_parallel.LAUNCH_HINT}"
            )
        elif not plan.tensor_parallel and (world or 1) > 1:
            reasons.append(
                f"bench was started as {world} processes (torchrun) without --tensor-parallel; add --tensor-parallel "
                "to split the model over them, or run one process"
            )
        if reasons:
            raise BenchError(reasons)

    def _config(self) -> tuple[Any, dict[str, Any]]:
        name = self.plan.model
        if name in SYNTHETIC_MODELS:
            info = {"name": name, "fingerprint": f"synthetic:{name}:seed{self.plan.seed}"}
            return synthetic_config(name), {**info, **describe_synthetic(name, self.plan.seed)}
        from lychee_bench.harness import models

        source = models.resolve_model(name)
        config = models.load_config(source, self.plan.rope_scaling)
        return config, {**source.provenance(), "weights": "real", "rope_scaling": self.plan.rope_scaling}

    def _methods(self, config: Any) -> list[Method]:
        from lychee_bench.harness.runner import build_methods

        options = synthetic_defaults(self.plan.model, config, self.plan.methods, self.plan.options)
        return build_methods(self.plan.methods + self._full_budget_entries(), options)

    def _full_budget_entries(self) -> list[str]:
        """SPEC §4: beside `full`, each sparse method's own kernel at a budget that holds the whole (longest)
        context, e.g. `tidal[budget=131072]`: what its path costs when it selects everything."""
        from lychee_bench.harness.runner import method_label, parse_method_entry, takes_option

        if not self.plan.full_budget:
            return []
        entries = []
        for entry in self.plan.methods:
            # an unknown name is reported when the methods are built; a dense method has no budget to fill
            if takes_option(entry, "budget"):
                name, options = parse_method_entry(entry)
                entries.append(method_label(name, {**options, "budget": str(max(self.plan.contexts))}))
        return entries

    def _shape(self, config: Any, batch: int, ctx: int) -> RunShape:
        shape = RunShape.from_config(config, self.dtype_name, str(self.device), batch, ctx, self.plan.model)
        return dataclasses.replace(shape, tensor_parallel=self.world)

    def _local_shape(self, config: Any, batch: int, ctx: int) -> RunShape:
        """This process's shape: its share of the heads (the whole shape in one process)."""
        return local_shape(self._shape(config, batch, ctx), self.world)

    def _say(self, text: str) -> None:
        """Log from rank 0 only (every process runs the same bench)."""
        if self.parallel is None or self.parallel.is_main:
            self.log(text)

    # ---- the run ---------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        plan = self.plan
        config, model_info = self._config()
        methods = self._methods(config)
        reasons = []
        limit = int(config.max_position_embeddings)
        if max(plan.contexts) > limit:
            reasons.append(f"context {max(plan.contexts)} exceeds {plan.model}'s limit of {limit} tokens")
        if plan.tensor_parallel:
            reasons += tensor_parallel.tensor_parallel_refusals(config, self.world)
        for method in methods:
            for batch in plan.batches:
                for ctx in plan.contexts:
                    for reason in method.check(self._shape(config, batch, ctx)):
                        reasons.append(f"{method.label} at ctx {ctx}, batch {batch}: {reason}")
        if reasons:
            raise BenchError(sorted(set(reasons), key=reasons.index))
        if plan.tensor_parallel and self.world > 1:  # one process under torchrun: nothing to split
            self.parallel = tensor_parallel.init_from_env(str(self.device))
            self.device = self.parallel.device
            if plan.model in SYNTHETIC_MODELS:  # built shard by shard: the record says how
                model_info = {**model_info, **describe_synthetic(plan.model, plan.seed, self.world)}
        try:
            return self._load_and_run(config, model_info, methods)
        finally:
            if self.parallel is not None:
                self.parallel.close()

    def _load_and_run(self, config: Any, model_info: dict[str, Any], methods: list[Method]) -> list[dict[str, Any]]:
        plan = self.plan
        self.unfit = self._memory_plan(config)
        started = datetime.now(UTC).isoformat()
        where = f"{self.world} processes ({self.device.type}), tensor parallel" if self.parallel else str(self.device)
        self._say(f"building {plan.model} on {where} ({self.dtype_name})")
        t0 = time.perf_counter()
        model = self._load_model(config)
        self._say(f"model ready in {time.perf_counter() - t0:.1f} s")
        if self.parallel is not None and plan.stock and not plan.smoke:
            self._say("stock transformers' step is not timed under tensor parallelism (the engine's step is)")
        for method in methods:
            method.prepare(model)
        compile_blocks = (not plan.smoke) if plan.compile is None else plan.compile
        engine = Engine(model, None, graphs=False, compiled=compile_blocks, prefill_chunk=plan.prefill_chunk or None)
        for method in methods:
            method.set_head_shard(engine.head_shard)  # this process's KV heads (None: all of them)
        compiled = ["norm", "project_qkv", "finish_and_norm", "logits"] if compile_blocks else []
        if self.parallel is not None and compile_blocks:
            compiled = ["norm", "project_qkv", "project_out", "mlp_partial", "add_and_norm", "logits"]
        return self._run_points(plan, config, model_info, engine, methods, started, compiled)

    def _memory_plan(self, config: Any) -> dict[tuple[int, int], str]:
        """Every point against the GPUs' free memory before anything is loaded (harness/memory.py): the points that
        do not fit, with the arithmetic. They refuse the bench, unless `skip_unfit` records them and runs the rest.
        Under tensor parallelism the least free memory of any process counts (every process decides the same)."""
        if self.device.type != "cuda":
            return {}
        free, _ = torch.cuda.mem_get_info(self.device)
        available = max(0, free - HEADROOM)
        if self.parallel is not None:
            available = int(self.parallel.reduce(available, "min"))
        unfit = {}
        for batch in self.plan.batches:
            for ctx in self.plan.contexts:
                reason = device_fit_refusal(config, self.dtype, batch, ctx, available, self.world)
                if reason:
                    unfit[(batch, ctx)] = reason
        if unfit and not self.plan.skip_unfit:
            fix = "or pass --skip-unfit to record these points as refused and run the rest"
            raise BenchError([*unfit.values(), fix])
        for reason in unfit.values():
            self._say(f"skipped: {reason}")
        if len(unfit) == len(self.plan.batches) * len(self.plan.contexts):
            raise BenchError([*unfit.values(), "no point of this bench fits; nothing to run"])
        return unfit

    def _run_points(self, plan, config, model_info, engine, methods, started, compiled) -> list[dict[str, Any]]:
        prov = provenance.collect(str(self.device))
        copy = self._copy_bandwidth()
        self._say(f"copy bandwidth {copy['copy_bw_bytes_per_s'] / 1e12:.3f} TB/s ({copy['copy_method']})")
        if plan.matmul and not plan.smoke:
            copy.update(self._matmul_rate())
            self._say(f"bf16 matmul rate {copy['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s")
        layout = tensor_parallel.layout(self.parallel, config, getattr(engine.model, "_tp_plan", None))
        main = self.parallel is None or self.parallel.is_main
        if self.parallel is not None:
            started = self.parallel.gather_objects(started)[0]  # one run key for every process
            copy["copy_bw_bytes_per_s_ranks"] = self.parallel.gather_objects(copy["copy_bw_bytes_per_s"])
        run_key = records.config_hash({**dataclasses.asdict(plan), "out": None, "started": started})
        writer = records.RecordWriter(plan.out) if main else None
        if writer is not None:
            records.write_manifest(
                plan.out,
                {
                    "kind": "latency",
                    "started": started,
                    "run_key": run_key,
                    "plan": {**dataclasses.asdict(plan), "out": str(plan.out)},
                    "tags": list(plan.tags),
                    "model": model_info,
                    "provenance": prov,
                    "timing": self._timing_mode(),
                    "parallel": layout,
                },
            )
            writer.append({"kind": "latency-copy", "run_key": run_key, **copy, "timing_mode": self._timing_mode()})

        common = {
            "kind": "latency",
            "task": "latency",
            "run_key": run_key,
            "model": plan.model,
            "model_info": model_info,
            "weights": model_info.get("weights"),
            "dtype": self.dtype_name,
            "device": prov["device"],
            "timing_mode": self._timing_mode(),
            "compiled": compiled,  # the pieces of each layer that ran through torch.compile (empty: all eager)
            "engine": "lychee_bench.harness.engine (static cache, fused QKV and gate/up, one decode step per graph)",
            "label": SMOKE_LABEL if plan.smoke else model_info.get("weights") + " weights",
            "copy_bw_bytes_per_s": copy["copy_bw_bytes_per_s"],
            "provenance": prov,
            "parallel": layout,
            "floor_per": "gpu" if self.parallel is not None else "device",
        }
        results: list[dict[str, Any]] = []
        points = [(b, c) for b in plan.batches for c in plan.contexts]
        for batch, ctx in tqdm(points, desc="latency points", disable=plan.smoke or not main):
            if (batch, ctx) in self.unfit:
                rows = [
                    {"ctx": ctx, "batch": batch, "method": m.label, "error": self.unfit[(batch, ctx)], "refused": True}
                    for m in methods
                ]
            else:
                rows = self._point(engine, config, methods, batch, ctx, copy)
            full = _fastest_full(rows)
            for row in rows:
                if full and row.get("decode_ms"):
                    row["speedup_vs_full"] = full["decode_ms"] / row["decode_ms"]
                    row["full_reference"] = full["method"]
                else:
                    row["speedup_vs_full"] = None
                record = {**common, **row}
                if writer is not None:
                    writer.append(record)
                results.append(record)
                self._say(_one_line(record))
        return results

    def _timing_mode(self) -> str:
        if self.plan.smoke:
            return f"{SMOKE_LABEL}: eager, time.perf_counter, median"
        return "CUDA graph replay of one whole decode step, CUDA events, median over reps after warm-up"

    def _load_model(self, config: Any) -> torch.nn.Module:
        if self.parallel is not None:  # this process's shard only (a synthetic shape built shard by shard)
            from lychee_bench.harness import models

            source = models.resolve_model(self.plan.model)
            return tensor_parallel.load_model(source, config, self.dtype_name, self.plan.seed, self.parallel)
        if self.plan.model in SYNTHETIC_MODELS:
            return build_synthetic(self.plan.model, self.device, self.dtype, self.plan.seed)
        from lychee_bench.harness import models

        return models.load_model(models.resolve_model(self.plan.model), config, str(self.device), self.dtype_name)

    def _time(self, run: Callable[[], Any]) -> Timing:
        if self.plan.smoke:
            return time_wall(run, self.plan.reps, warmup=1)
        return time_cuda(run, self.plan.reps, warmup=self.plan.warmup)

    @torch.no_grad()
    def _matmul_rate(self) -> dict[str, Any]:
        """bf16 (the run's dtype) matrix-product rate on 8192-square operands, in a graph: the prefill's ceiling."""
        size = MATMUL_SIZE
        a = torch.randn(size, size, dtype=self.dtype, device=self.device)
        b = torch.randn(size, size, dtype=self.dtype, device=self.device)
        out = torch.empty(size, size, dtype=self.dtype, device=self.device)
        graph = capture_graph(lambda: torch.mm(a, b, out=out))
        timing = self._time(graph.replay)
        del graph
        flops = 2 * size**3
        return {
            "matmul_size": size,
            **timing.as_dict("matmul"),
            "matmul_flops_per_s": flops / (timing.median_ms * 1e-3),
        }

    @torch.no_grad()
    def _copy_bandwidth(self) -> dict[str, Any]:
        """SM elementwise copy (read + write counted). A plain ``copy_`` in a graph runs on the copy engines and
        understates what the SMs can stream, so it is not used."""
        elements = COPY_ELEMENTS_CPU if self.plan.smoke else COPY_ELEMENTS_GPU
        src = torch.empty(elements, dtype=self.dtype, device=self.device).normal_()
        dst = torch.empty_like(src)
        if self.plan.smoke:
            timing = self._time(lambda: torch.mul(src, 1, out=dst))
        else:
            graph = capture_graph(lambda: torch.mul(src, 1, out=dst))
            timing = self._time(graph.replay)
            del graph
        nbytes = 2 * src.numel() * src.element_size()
        return {
            "copy_method": "torch.mul(src, 1, out=dst), read + write",
            "copy_bytes": nbytes,
            **timing.as_dict("copy"),
            "copy_bw_bytes_per_s": nbytes / (timing.median_ms * 1e-3),
        }

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def _point(self, engine, config, methods, batch: int, ctx: int, copy: dict[str, Any]) -> list[dict[str, Any]]:
        """Every method at one (batch, context), all on the same cache; stock transformers last (it takes the
        cache over)."""
        base = {"ctx": ctx, "batch": batch}
        copy_bw = copy["copy_bw_bytes_per_s"]
        rows = []
        try:
            cache = StaticKVCache.for_config(config, batch, ctx, self.dtype, self.device, self.world)
        except torch.OutOfMemoryError as error:
            self._empty_cache()
            return [
                {**base, "method": m.label, "error": f"cache does not fit: {error}".splitlines()[0]} for m in methods
            ]
        fill = {"kv_fill": "random", "prefill_ms": None}
        if self.plan.prefill:
            fill = self._prefill(engine, cache, batch, ctx, config, copy)
        else:
            rank = 0 if self.parallel is None else self.parallel.rank
            cache.fill_random(ctx - 1, seed=self.plan.seed + 7919 * rank)  # each process its own heads' K/V
        weights = weight_bytes_read(engine.model, batch)  # this process's shard under tensor parallelism
        full_kv = full_kv_bytes(self._shape(config, batch, ctx), ctx, batch)  # what the stock step reads
        if self.parallel is not None:
            base.update(self._collectives(config, batch))
        for method in methods:
            row = {**base, **fill, "method": method.label, "method_config": method.describe(), "path": method.path}
            row["graph_safe"] = method.graph_refusal() is None
            row.update(weights)
            try:
                row.update(self._measure(engine, cache, method, batch, ctx, config))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            kv = kv_bytes_read(method, self._local_shape(config, batch, ctx), ctx, batch)
            rows.append(self._floor(row, kv, weights, copy_bw))
            self._empty_cache()
        if self.plan.stock and not self.plan.smoke and self.parallel is None:
            row = {**base, **fill, "method": STOCK_LABEL, "path": "transformers DynamicCache + sdpa, eager"}
            row.update(weights)
            try:
                row.update(stock_decode_step(engine.model, cache, ctx, self.plan.reps, self.plan.warmup))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            rows.append(_with_floor(row, full_kv, weights, copy_bw))
        del cache
        self._empty_cache()
        return rows

    def _floor(self, row: dict[str, Any], kv: int | None, weights: dict[str, int], copy_bw: float) -> dict[str, Any]:
        """The row's floor; under tensor parallelism per GPU: the largest over the processes of each one's bytes
        (its weights and its heads' K/V) over its own copy bandwidth, and the timings of every process."""
        row = _with_floor(row, kv, weights, copy_bw)
        parallel = self.parallel
        if parallel is None:
            return row
        mine = (row.get("floor_ms"), row.get("bytes_per_step"), kv, row.get("decode_ms"))
        ranks = parallel.gather_objects(mine)
        row["floor_ms_per_rank"] = [r[0] for r in ranks]
        row["bytes_per_step_per_rank"] = [r[1] for r in ranks]
        row["decode_ms_per_rank"] = [r[3] for r in ranks]
        if all(r[2] is not None for r in ranks):
            row["kv_bytes_read_all_gpus"] = sum(r[2] for r in ranks)
        if all(r[0] is not None for r in ranks):
            slowest = max(range(len(ranks)), key=lambda r: ranks[r][0])
            row.update(floor_ms=ranks[slowest][0], bytes_per_step=ranks[slowest][1], kv_bytes_read=ranks[slowest][2])
            decode = row.get("decode_ms")
            row["time_over_floor"] = decode / row["floor_ms"] if decode and row["floor_ms"] else None
            row["achieved_bw_fraction"] = row["floor_ms"] / decode if decode and row["floor_ms"] else None
        return row

    @torch.no_grad()
    def _collectives(self, config: Any, batch: int) -> dict[str, Any]:
        """The collectives of one decode step alone: an all-reduce of [batch, 1, hidden] after every o_proj and
        down_proj and after the embedding, and the logits' gather; timed as the step runs them (in one graph)."""
        parallel = self.parallel
        assert parallel is not None
        hidden = torch.zeros(batch, 1, config.hidden_size, dtype=self.dtype, device=self.device)
        logits = torch.zeros(batch, -(-config.vocab_size // parallel.world), device=self.device)
        count = 2 * config.num_hidden_layers + 1

        def step() -> None:
            for _ in range(count):
                parallel.all_reduce_(hidden)
            parallel.gather_last(logits, config.vocab_size)

        if self.plan.smoke or not self.plan.graphs:
            timing = self._time(step)
        else:
            graph = capture_graph(step, warmup=self.plan.warmup)
            timing = self._time(graph.replay)
            del graph
        return {
            "collectives_ms_per_step": timing.median_ms,
            "collectives_per_step": f"{count} all-reduces of [{batch}, 1, {config.hidden_size}] + 1 logits all-gather",
        }

    def _prefill(self, engine, cache, batch: int, ctx: int, config: Any, copy: dict[str, Any]) -> dict[str, Any]:
        """A real, timed prefill of C-1 random tokens per row (the engine's: one row at a time, chunked), with its
        FLOP floor at the matrix-product rate measured in this run."""
        generator = torch.Generator().manual_seed(self.plan.seed)
        tokens = torch.randint(0, config.vocab_size, (batch, ctx - 1), generator=generator).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.prefill(cache, tokens, ctx - 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) * 1e3
        flops = prefill_flops(config, batch, ctx - 1)
        result = {"kv_fill": "prefill", "prefill_ms": elapsed, "prefill_chunk": engine.chunk_for(ctx - 1)}
        result["prefill_flops"] = flops
        rate = copy.get("matmul_flops_per_s")
        if rate:
            result["prefill_floor_ms"] = flops / rate * 1e3
            result["prefill_over_floor"] = elapsed / result["prefill_floor_ms"]
        return result

    def _measure(self, engine, cache, method: Method, batch: int, ctx: int, config: Any) -> dict[str, Any]:
        smoke = self.plan.smoke
        result: dict[str, Any] = {}
        if not smoke:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        decoder = FixedContextStep(engine, cache, method)
        keys_before = cache.keys[0][:, :, : ctx - 1].sum(dtype=torch.float32).item()
        if smoke or not self.plan.graphs:
            timing = self._time(decoder.step)
            result["captured"] = False
            if not smoke:
                result["capture_error"] = "graphs turned off (--no-graphs)"
        else:
            try:
                decoder.capture(warmup=self.plan.warmup)
                result["captured"] = True
            except RuntimeError as error:  # a method that syncs inside the step: record why, time it eagerly
                decoder.graph = None
                result["captured"] = False
                result["capture_error"] = str(error).splitlines()[0]
                torch.cuda.synchronize()
            timing = self._time(decoder.replay)
        result.update(timing.as_dict("decode"))
        if self.plan.profile:
            result.update(self._profile(decoder, method, batch, ctx, timing.median_ms))
        result["logits_finite"] = bool(torch.isfinite(decoder.logits).all())
        # The context must not drift: the step writes slot C-1 and nothing before it changes.
        result["context_checked"] = decoder.context_length()
        result["context_drift"] = decoder.context_length() != ctx or (
            cache.keys[0][:, :, : ctx - 1].sum(dtype=torch.float32).item() != keys_before
        )
        if self.plan.attention:
            attention = self._attention_only(cache, method, decoder, config)
            layers = config.num_hidden_layers
            result.update(attention.as_dict("attention_total"))
            result["attention_ms_per_layer"] = attention.median_ms / layers
            result["attention_p10_ms_per_layer"] = attention.p10_ms / layers
            result["attention_p90_ms_per_layer"] = attention.p90_ms / layers
        if not smoke:
            torch.cuda.synchronize()
            result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
            result["peak_memory_gib"] = result["peak_memory_bytes"] / 2**30
        decoder.release()
        return result

    def _profile(self, decoder: FixedContextStep, method: Method, batch: int, ctx: int, step_ms: float) -> dict:
        """Kernels per step, busy time and the gap to the timed step; the top kernels go to profiles/*.txt."""
        summary, table = profile_steps(decoder.replay, self.plan.profile, on_cuda=not self.plan.smoke)
        if not summary["kernels_per_step"] and decoder.graph is not None:  # a profiler that cannot see into graphs
            summary, table = profile_steps(decoder.step, self.plan.profile, on_cuda=True)
            summary["measured_on"] += ", eager steps (the graph's kernels were not traced)"
        summary["gap_ms_per_step"] = step_ms - summary["busy_ms_per_step"]
        folder = Path(self.plan.out) / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{method.label}_ctx{ctx}_b{batch}")
        header = f"{method.label} ctx {ctx} batch {batch}: step {step_ms:.3f} ms, " + ", ".join(
            f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in summary.items()
        )
        (folder / f"{name}.txt").write_text(header + "\n" + table + "\n")
        return {"profile": summary}

    def _attention_only(self, cache: StaticKVCache, method: Method, decoder: FixedContextStep, config: Any) -> Timing:
        """All layers' attention calls alone (each on its own layer's cache, as in a step), one graph."""
        batch = decoder.batch
        head_dim = cache.keys[0].shape[-1]
        generator = torch.Generator(device=self.device).manual_seed(self.plan.seed + 1)
        heads = config.num_attention_heads // self.world  # this process's query heads
        query = torch.randn(batch, heads, 1, head_dim, generator=generator, device=self.device, dtype=self.dtype)
        state = DecodeState(method=method, counting=False, geometry=decoder.geometry)
        scaling = head_dim**-0.5

        def attention_pass() -> None:
            state.begin_step("decode", decoder.lengths_host)
            for index in range(len(cache.keys)):
                method.decode_attention(
                    index, query, cache.keys[index], cache.values[index], decoder.valid, scaling, state
                )

        with torch.inference_mode():
            if self.plan.smoke or not self.plan.graphs:
                return self._time(attention_pass)
            graph = capture_graph(attention_pass, warmup=self.plan.warmup)
            timing = self._time(graph.replay)
            del graph
            return timing


def prefill_flops(config: Any, batch: int, tokens: int) -> float:
    """Matrix FLOPs of a causal prefill of `tokens` per row: every linear layer (2 x parameters x tokens), the
    causal attention products (q.k and p.v over the lower triangle: 2 x 2 x Hq x D x tokens^2 / 2 per layer) and
    the LM head for the last position only."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    per_layer += 3 * hidden * config.intermediate_size
    linear = 2.0 * per_layer * config.num_hidden_layers * tokens
    attention = 2.0 * heads * head_dim * tokens * (tokens + 1) * config.num_hidden_layers
    head = 2.0 * hidden * config.vocab_size
    return batch * (linear + attention + head)


def _with_floor(row: dict[str, Any], kv: int | None, weights: dict[str, int], copy_bw: float) -> dict[str, Any]:
    total = None if kv is None else kv + weights["weight_bytes_read"]
    floor = floor_ms(total, copy_bw)
    row.update(kv_bytes_read=kv, bytes_per_step=total, floor_ms=floor)
    decode = row.get("decode_ms")
    row["time_over_floor"] = decode / floor if decode and floor else None
    row["achieved_bw_fraction"] = floor / decode if decode and floor else None
    return row


def _is_dense_baseline(row: dict[str, Any]) -> bool:
    """A row of a method whose class declares itself the dense baseline (`Method.is_dense_baseline`)."""
    from lychee_bench.harness.catalog import METHODS

    name = row.get("method_config", {}).get("name")
    return name is not None and name in METHODS and METHODS.get(name).is_dense_baseline


def _fastest_full(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference for speedups: the fastest of the dense-baseline rows (`full` on each of its paths)."""
    dense = [r for r in rows if r.get("decode_ms") and _is_dense_baseline(r)]
    return min(dense, key=lambda r: r["decode_ms"], default=None)


def _one_line(record: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    if record.get("error"):
        return f"{record['method']:>10} ctx {record['ctx']:>7} b {record['batch']}: ERROR {record['error']}"
    return (
        f"{record['method']:>10} ctx {record['ctx']:>7} b {record['batch']}:"
        f" decode {fmt(record.get('decode_ms'), '.3f')}"
        f" ms, floor {fmt(record.get('floor_ms'), '.3f')} ms, x{fmt(record.get('time_over_floor'), '.2f')} of floor,"
        f" attn/layer {fmt(record.get('attention_ms_per_layer'), '.4f')} ms,"
        f" speedup {fmt(record.get('speedup_vs_full'), '.2f')}, peak {fmt(record.get('peak_memory_gib'), '.1f')} GiB"
    )
