"""`lychee-bench bench`: end-to-end decode latency per method, context and batch, against the byte floor.

For every (batch, context) the static cache is filled once (random K/V, or a real chunked prefill that is
timed), then each method gets the same cache: its whole decode step (all layers, weights, LM head) is captured
in a CUDA graph and replayed (CUDA events, median and spread after a warm-up), its attention alone is timed
the same way, and the peak memory is read. The floor of a point is the bytes the step must read (weights +
the K/V the method reads) over the copy bandwidth measured at the start of the same run (an SM elementwise
copy: ``torch.mul(src, 1, out=dst)`` on 2 GiB, read + write counted). SPEC §6; issue #5.
"""

from __future__ import annotations

import contextlib
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

from lychee_bench.harness import provenance, records
from lychee_bench.harness.fused_blocks import compiled_dense_blocks
from lychee_bench.harness.static_engine import (
    FixedSlotCache,
    StaticDecoder,
    StaticDecodeState,
    Timing,
    capture_graph,
    time_cuda,
    time_wall,
)
from lychee_bench.harness.synthetic_models import (
    SYNTHETIC_MODELS,
    TINY_MODELS,
    build_synthetic,
    describe_synthetic,
    synthetic_config,
)
from lychee_bench.methods.base import Method, RunShape, head_dim_of
from lychee_bench.tasks.latency.graph_safe import make_graph_safe
from lychee_bench.tasks.latency.profile import profile_steps
from lychee_bench.tasks.latency.traffic import floor_ms, kv_bytes_read, weight_bytes_read

SMOKE_LABEL = "cpu-smoke, not a measurement"
SMOKE_MAX_CTX = 8192
COPY_ELEMENTS_GPU = 1 << 30  # 2 GiB of bf16
COPY_ELEMENTS_CPU = 1 << 22
LYCHEE_RETRIEVAL_FRACTION = 0.125  # the paper's budget: 32 of 256 KV heads (Llama-3-8B)
DENSE_NAMES = ("full", "dense")  # no budget to fill
# Kascade's published anchors for the model each synthetic shape copies (Llama-3-8B and 3.1-8B share a shape).
KASCADE_PRESET_FOR_SHAPE = {"llama3-8b-synthetic": "llama3.1-8b", "qwen3-8b-synthetic": "qwen3-8b"}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_defaults(model: str, config: Any, entries: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The shared options with the bench's defaults for what a synthetic model has no artifact for: lychee and
    duo get uniform roles with 12.5% retrieval heads, kascade the published anchors of the shape's model."""
    from lychee_bench.harness.runner import parse_method_entry

    options = dict(options)
    names = {parse_method_entry(entry)[0].lower() for entry in entries}
    if names & {"lychee", "lycheedecode", "duo"} and "roles" not in options:
        total = config.num_hidden_layers * config.num_key_value_heads
        options["roles"] = f"uniform:{max(config.num_key_value_heads, round(LYCHEE_RETRIEVAL_FRACTION * total))}"
    if "kascade" in names and "anchors" not in options and model in KASCADE_PRESET_FOR_SHAPE:
        options["anchors"] = KASCADE_PRESET_FOR_SHAPE[model]
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
    prefill_chunk: int = 4096
    attention: bool = True  # also time the attention alone
    smoke: bool = False
    seed: int = 0
    compile: bool | None = None  # torch.compile the norms, MLPs and rotary embedding; None: on CUDA, off in smoke
    profile: int = 0  # also profile this many steps per point (tasks/latency/profile.py)
    full_budget: bool = False  # also run each sparse method with a budget holding the longest context (SPEC §4)


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
        if reasons:
            raise BenchError(reasons)

    def _config(self) -> tuple[Any, dict[str, Any]]:
        name = self.plan.model
        if name in SYNTHETIC_MODELS:
            info = {"name": name, "fingerprint": f"synthetic:{name}:seed{self.plan.seed}"}
            return synthetic_config(name), {**info, **describe_synthetic(name, self.plan.seed)}
        from lychee_bench.harness import models

        source = models.resolve_model(name)
        return models.load_config(source), {**source.provenance(), "weights": "real"}

    def _methods(self, config: Any) -> list[Method]:
        from lychee_bench.harness.runner import build_methods

        options = synthetic_defaults(self.plan.model, config, self.plan.methods, self.plan.options)
        return build_methods(self.plan.methods + self._full_budget_entries(), options)

    def _full_budget_entries(self) -> list[str]:
        """SPEC §4: beside `full`, each sparse method's own kernel at a budget that holds the whole (longest)
        context, e.g. `tidal[budget=131072]`: what its path costs when it selects everything."""
        from lychee_bench.harness.runner import method_label, parse_method_entry

        if not self.plan.full_budget:
            return []
        entries = []
        for entry in self.plan.methods:
            name, options = parse_method_entry(entry)
            if name.lower() not in DENSE_NAMES:
                entries.append(method_label(name, {**options, "budget": str(max(self.plan.contexts))}))
        return entries

    def _shape(self, config: Any, batch: int, ctx: int) -> RunShape:
        return RunShape.from_config(config, self.dtype_name, str(self.device), batch, ctx, self.plan.model)

    # ---- the run ---------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        plan = self.plan
        config, model_info = self._config()
        methods = self._methods(config)
        reasons = []
        limit = int(config.max_position_embeddings)
        if max(plan.contexts) > limit:
            reasons.append(f"context {max(plan.contexts)} exceeds {plan.model}'s limit of {limit} tokens")
        for method in methods:
            for batch in plan.batches:
                for ctx in plan.contexts:
                    for reason in method.check(self._shape(config, batch, ctx)):
                        reasons.append(f"{method.label} at ctx {ctx}, batch {batch}: {reason}")
        if reasons:
            raise BenchError(sorted(set(reasons), key=reasons.index))

        started = datetime.now(UTC).isoformat()
        self.log(f"building {plan.model} on {self.device} ({self.dtype_name})")
        t0 = time.perf_counter()
        model = self._load_model(config)
        self.log(f"model ready in {time.perf_counter() - t0:.1f} s")
        safe_methods = []
        for method in methods:
            method.prepare(model)
            safe_methods.append(make_graph_safe(method))

        compile_blocks = (not plan.smoke) if plan.compile is None else plan.compile
        with compiled_dense_blocks(model) if compile_blocks else contextlib.nullcontext([]) as compiled:
            return self._run_points(plan, config, model_info, model, safe_methods, started, compiled)

    def _run_points(self, plan, config, model_info, model, safe_methods, started, compiled) -> list[dict[str, Any]]:
        prov = provenance.collect(str(self.device))
        copy = self._copy_bandwidth()
        self.log(f"copy bandwidth {copy['copy_bw_bytes_per_s'] / 1e12:.3f} TB/s ({copy['copy_method']})")
        run_key = records.config_hash({**dataclasses.asdict(plan), "out": None, "started": started})
        writer = records.RecordWriter(plan.out)
        records.write_manifest(
            plan.out,
            {
                "kind": "latency",
                "started": started,
                "run_key": run_key,
                "plan": {**dataclasses.asdict(plan), "out": str(plan.out)},
                "model": model_info,
                "provenance": prov,
                "timing": self._timing_mode(),
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
            "compiled": compiled,  # the parts of the step that ran through torch.compile (empty: all eager)
            "label": SMOKE_LABEL if plan.smoke else model_info.get("weights") + " weights",
            "copy_bw_bytes_per_s": copy["copy_bw_bytes_per_s"],
            "provenance": prov,
        }
        results: list[dict[str, Any]] = []
        points = [(b, c) for b in plan.batches for c in plan.contexts]
        for batch, ctx in tqdm(points, desc="latency points", disable=plan.smoke):
            rows = self._point(model, config, safe_methods, batch, ctx, copy["copy_bw_bytes_per_s"])
            full = next((r for r in rows if r["method"] == "full" and r.get("decode_ms")), None)
            for row in rows:
                if full and row.get("decode_ms"):
                    row["speedup_vs_full"] = full["decode_ms"] / row["decode_ms"]
                else:
                    row["speedup_vs_full"] = None
                record = {**common, **row}
                writer.append(record)
                results.append(record)
                self.log(_one_line(record))
        return results

    def _timing_mode(self) -> str:
        if self.plan.smoke:
            return f"{SMOKE_LABEL}: eager, time.perf_counter, median"
        return "CUDA graph replay of one whole decode step, CUDA events, median over reps after warm-up"

    def _load_model(self, config: Any) -> torch.nn.Module:
        if self.plan.model in SYNTHETIC_MODELS:
            return build_synthetic(self.plan.model, self.device, self.dtype, self.plan.seed)
        from lychee_bench.harness import models

        return models.load_model(models.resolve_model(self.plan.model), config, str(self.device), self.dtype_name)

    def _time(self, run: Callable[[], Any]) -> Timing:
        if self.plan.smoke:
            return time_wall(run, self.plan.reps, warmup=1)
        return time_cuda(run, self.plan.reps, warmup=self.plan.warmup)

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

    def _point(self, model, config, methods, batch: int, ctx: int, copy_bw: float) -> list[dict[str, Any]]:
        """Every method at one (batch, context), all on the same cache."""
        head_dim = head_dim_of(config)
        base = {"ctx": ctx, "batch": batch}
        rows = []
        try:
            cache = FixedSlotCache(
                config.num_hidden_layers, batch, config.num_key_value_heads, head_dim, ctx, self.dtype, self.device
            )
        except torch.OutOfMemoryError as error:
            self._empty_cache()
            return [
                {**base, "method": m.label, "error": f"cache does not fit: {error}".splitlines()[0]} for m, _ in methods
            ]
        fill = {"kv_fill": "random", "prefill_ms": None}
        if self.plan.prefill:
            fill = self._prefill(model, cache, batch, ctx, methods[0][0])
        else:
            cache.fill_random(ctx - 1, seed=self.plan.seed)
        weights = weight_bytes_read(model, batch)
        for method, graph_safe in methods:
            row = {**base, **fill, "method": method.label, "method_config": method.describe(), "path": method.path}
            row["graph_safe"] = graph_safe
            row.update(weights)
            try:
                row.update(self._measure(model, cache, method, batch, ctx, config))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            kv = kv_bytes_read(method, self._shape(config, batch, ctx), ctx, batch)
            total = None if kv is None else kv + weights["weight_bytes_read"]
            floor = floor_ms(total, copy_bw)
            row.update(kv_bytes_read=kv, bytes_per_step=total, floor_ms=floor)
            decode = row.get("decode_ms")
            row["time_over_floor"] = decode / floor if decode and floor else None
            row["achieved_bw_fraction"] = floor / decode if decode and floor else None
            rows.append(row)
            self._empty_cache()
        del cache
        self._empty_cache()
        return rows

    def _prefill(self, model, cache, batch: int, ctx: int, method: Method) -> dict[str, Any]:
        decoder = StaticDecoder(model, cache, batch, method)
        generator = torch.Generator().manual_seed(self.plan.seed)
        tokens = torch.randint(0, model.config.vocab_size, (batch, ctx - 1), generator=generator).to(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.prefill(tokens, self.plan.prefill_chunk)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) * 1e3
        decoder.release()
        return {"kv_fill": "prefill", "prefill_ms": elapsed, "prefill_chunk": self.plan.prefill_chunk}

    def _measure(self, model, cache, method: Method, batch: int, ctx: int, config: Any) -> dict[str, Any]:
        smoke = self.plan.smoke
        result: dict[str, Any] = {}
        if not smoke:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        decoder = StaticDecoder(model, cache, batch, method)
        keys_before = cache.layers[0].keys[:, :, : ctx - 1].sum(dtype=torch.float32).item()
        if smoke:
            timing = self._time(decoder.step)
            result["captured"] = False
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
            cache.layers[0].keys[:, :, : ctx - 1].sum(dtype=torch.float32).item() != keys_before
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

    def _profile(self, decoder: StaticDecoder, method: Method, batch: int, ctx: int, step_ms: float) -> dict:
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

    def _attention_only(self, cache: FixedSlotCache, method: Method, decoder: StaticDecoder, config: Any) -> Timing:
        """All layers' attention calls alone (each on its own layer's cache, as in a step), one graph."""
        batch = decoder.batch
        head_dim = cache.layers[0].keys.shape[-1]
        generator = torch.Generator(device=self.device).manual_seed(self.plan.seed + 1)
        query = torch.randn(
            batch, config.num_attention_heads, 1, head_dim, generator=generator, device=self.device, dtype=self.dtype
        )
        state = StaticDecodeState(method=method, static=decoder.static)
        scaling = head_dim**-0.5

        def attention_pass() -> None:
            state.begin_step("decode", [decoder.context] * batch)
            for index, layer in enumerate(cache.layers):
                method.decode_attention(index, query, layer.keys, layer.values, decoder.static.valid, scaling, state)

        with torch.inference_mode():
            if self.plan.smoke:
                return self._time(attention_pass)
            graph = capture_graph(attention_pass, warmup=self.plan.warmup)
            timing = self._time(graph.replay)
            del graph
            return timing


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
