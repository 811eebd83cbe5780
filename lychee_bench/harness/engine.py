"""The one decode engine: static KV cache, dense per-row prefill, decode steps captured in a CUDA graph.

One batch, start to end:

1. Memory. The batch's peak (KV cache, one prefill chunk, decode workspace) is computed from its shapes
   (harness/memory.py). A batch that does not fit is split into smaller ones; a single row that does not fit is
   refused with the numbers, before anything runs.
2. Prefill. Each row is prefilled on its own, in chunks, into a preallocated static cache (kv_cache.py), left
   padded so every row's prompt ends at slot W (prefill.py, which training and calibration use too). A chunk
   attends to its own row's cached keys through SDPA's causal kernels (the lower-right causal variant for later
   chunks): no mask is ever built, so memory is linear in the context. Only the last position reaches the LM
   head. Prefill is dense in every method.
3. Decode, method by method. Every method compared on the batch decodes from the same prefilled prefix: it writes
   only the decode tail (slots W, W+1, ...), which the next method overwrites, so nothing is copied. A step is
   device work only: choose the next tokens from the last logits (greedy, or sampling with per-row seeds,
   sampling.py; forced tokens of the decode exercise; per-row stop and limits), write their keys and values at
   slot W+t, run the model with the method's attention (forward.py), advance the positions and lengths. After a
   warm-up step the whole step is captured in a CUDA graph and replayed, when the method declares itself
   graph-safe (`Method.graph_refusal`); otherwise it runs eagerly and the reason is recorded. The host learns
   that every row has stopped one step late (a flag copied without blocking), so it never waits on the device
   between steps. Cache correction (LycheeDecode) recomputes the last T tail slots densely every T steps.

The CPU path (CI) is the same code, eager and uncompiled. Under tensor parallelism (harness/tensor_parallel.py)
every process runs this same loop on its shard: its KV heads' cache, the methods on its heads, the same gathered
logits and so the same tokens; memory is planned for the fullest process.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch

from lychee_bench.harness.forward import LayerStack
from lychee_bench.harness.inputs import FormattedInput
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.memory import (
    GIB,
    MemoryPlanError,
    available_bytes,
    batch_memory,
    largest_fitting_batch,
    prefill_bytes_per_token,
)
from lychee_bench.harness.prefill import causal_attention, prefill_chunk, prefill_row
from lychee_bench.harness.sampling import choose_tokens, row_seed
from lychee_bench.methods.base import Method
from lychee_bench.methods.state import DecodeState, StepGeometry

MIN_GRAPH_STEPS = 4  # fewer steps than this left after the warm-up: not worth a capture


@dataclass
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # timing runs: every row decodes its whole limit


@dataclass
class Generation:
    text: str
    new_tokens: int
    exercise_tokens: int
    stop_reason: str  # "eos" or "length"
    token_ids: list[int]
    decode_seconds: float = 0.0  # this method's whole decode loop for the batch (shared by its rows)
    decode_steps: int = 0  # forward steps of that loop
    steady_ms_per_step: float = 0.0  # the steps after warm-up and capture
    decode_mode: str = "eager"  # "graph" (captured and replayed) or "eager"
    eager_reason: str | None = None  # why a step was not captured
    forward_batch: int = 1  # rows decoded together (after any memory split)
    prefill_seconds: float = 0.0  # the batch's dense prefill (shared by every method and row)
    peak_memory_bytes: int | None = None


def decode_forward(
    stack: LayerStack,
    cache: StaticKVCache,
    method: Method,
    state: DecodeState,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """One decode step of the model: tokens [B, 1] at positions [B, 1], their keys and values written at cache
    slot `slot` [1], attention by `method` over the cache slots `valid` [B, S] marks; float32 logits [B, V].
    Device work only (the engine's generation loop and the latency bench's fixed-context step capture it)."""
    hidden = stack.embed(tokens)
    cos, sin = stack.rotary_tables(hidden, positions)

    def attend(layer, q):
        return method.decode_attention(layer, q, cache.keys[layer], cache.values[layer], valid, stack.scaling, state)

    stores = [(keys, values, slot) for keys, values in zip(cache.keys, cache.values, strict=True)]
    normed = stack.decode_layers(hidden, cos, sin, attend, stores)
    return stack.logits_of_normed(normed[:, -1])


def _stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None:
            ids.add(int(value))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class Engine:
    """Prefill once per batch, then decode it with each method (see the module docstring).

    `graphs` (default: on CUDA) captures graph-safe methods' steps; `compiled` (default: on CUDA) runs the
    per-layer dense pieces through torch.compile; `count` keeps the methods' statistics (eager steps only: a
    replayed graph cannot add host numbers). Methods with equal `decode_signature()` (the same method and
    effective options under different labels) are decoded once; `last_shared` says which reused which.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        graphs: bool | None = None,
        compiled: bool | None = None,
        count: bool = False,
        prefill_chunk: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        on_cuda = self.device.type == "cuda"
        self.graphs = on_cuda if graphs is None else graphs
        self.compiled = on_cuda if compiled is None else compiled
        self.count = count
        self.stack = LayerStack(model, compiled=self.compiled)
        parallel = self.stack.parallel  # tensor parallelism: this process's heads (None: all of them)
        self.head_shard = None if parallel is None else parallel.head_shard(model.config.num_key_value_heads)
        self.stop_ids = _stop_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.stop_ids or {0})
        self.prefill_chunk = prefill_chunk
        self.last_prefill_seconds = 0.0  # the dense prefills of the last generate()
        self.last_counters: dict[str, float] = {}  # the last decoded method's statistics (with count=True)
        self.last_shared: dict[str, str] = {}  # label -> the label whose identical decode it reuses

    # ---- memory -------------------------------------------------------------------------------------------
    def chunk_for(self, tokens: int) -> int:
        """Prefill chunk (tokens per forward of one row)."""
        return prefill_chunk(self.device, tokens, self.prefill_chunk)

    def rows_that_fit(self, capacity: int, prefill_tokens: int, wanted: int) -> int:
        """The most rows (<= wanted) of `capacity` cache slots whose batch fits on the device now."""
        chunk = self.chunk_for(prefill_tokens)
        return largest_fitting_batch(
            self.model.config, self.dtype, capacity, chunk, wanted, self._available(), self.stack.world
        )

    def _available(self) -> int | None:
        """Free device memory for a batch; under tensor parallelism the least of every process's (they must agree
        on the batch)."""
        have = available_bytes(self.device)
        parallel = self.stack.parallel
        if parallel is None or have is None:
            return have
        return int(parallel.reduce(have, "min"))

    def check_fits(self, prompt_tokens: int, decode_steps: int) -> None:
        """Raise MemoryPlanError (numbers and fix) when one row of this size cannot run on the device."""
        capacity = prompt_tokens + decode_steps + 1
        if self.rows_that_fit(capacity, prompt_tokens, 1) >= 1:
            return
        world = self.stack.world
        need = batch_memory(self.model.config, self.dtype, 1, capacity, self.chunk_for(prompt_tokens), world)
        have = self._available() or 0
        per_token = prefill_bytes_per_token(self.model.config, self.dtype, world)
        raise MemoryPlanError(
            f"one sequence of {capacity} tokens needs {need.describe()} but {self.device} has {have / GIB:.1f} GiB "
            f"free besides the model (prefill activations take {per_token / 2**20:.2f} MiB per token of a chunk). "
            "Use a smaller --ctx, a smaller model or a larger GPU"
        )

    # ---- generation ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        inputs: list[FormattedInput],
        settings: GenerationSettings,
        methods: list[Method],
        row_limits: list[int] | None = None,
        row_seeds: list[int] | None = None,
    ) -> dict[str, list[Generation]]:
        """Generate for a batch of inputs with each method; results keyed by method label, in input order.

        `row_limits` gives each row its own most new tokens (rows of different tasks in one batch); `row_seeds`
        each row's sampling seed (pass one derived from the sample, and a row's tokens do not depend on its
        batch-mates); by default the seed and the row's index in `inputs`.
        """
        batch = len(inputs)
        if row_limits is not None and len(row_limits) != batch:
            raise ValueError(f"row_limits has {len(row_limits)} entries for {batch} inputs")
        if row_seeds is not None and len(row_seeds) != batch:
            raise ValueError(f"row_seeds has {len(row_seeds)} entries for {batch} inputs")
        limits = row_limits or [settings.max_new_tokens] * batch
        seeds = row_seeds or [row_seed(settings.seed, row) for row in range(batch)]
        results: dict[str, list[Generation]] = {m.label: [] for m in methods}
        self.last_prefill_seconds = 0.0
        start = 0
        while start < batch:
            rows = self._rows_for_next_batch(inputs[start:], limits[start:])
            part = self._generate_batch(
                inputs[start : start + rows],
                limits[start : start + rows],
                seeds[start : start + rows],
                settings,
                methods,
            )
            for label, generations in part.items():
                results[label] += generations
            start += rows
        return results

    def _rows_for_next_batch(self, inputs: list[FormattedInput], limits: list[int]) -> int:
        """How many of the next rows run together: all of them, or as many as fit (memory.py)."""
        for wanted in range(len(inputs), 0, -1):
            prompt = max(len(x.input_ids) - x.exercise_tokens for x in inputs[:wanted])
            steps = max(x.exercise_tokens + limit for x, limit in zip(inputs[:wanted], limits[:wanted], strict=False))
            fits = self.rows_that_fit(prompt + steps + 1, prompt, wanted)
            if fits == wanted:
                return wanted
        first = inputs[0]
        self.check_fits(len(first.input_ids) - first.exercise_tokens, first.exercise_tokens + limits[0])
        return 1

    def _generate_batch(self, inputs, limits, seeds, settings, methods) -> dict[str, list[Generation]]:
        prompts = [item.input_ids[: len(item.input_ids) - item.exercise_tokens] for item in inputs]
        forced = [item.input_ids[len(item.input_ids) - item.exercise_tokens :] for item in inputs]
        width = max(len(ids) for ids in prompts)
        steps = max(len(f) + limit for f, limit in zip(forced, limits, strict=True))
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        cache = StaticKVCache.for_config(
            self.model.config, len(inputs), width + steps + 1, self.dtype, self.device, self.stack.world
        )
        began = time.perf_counter()
        logits = self.prefill(cache, prompts, width)
        if on_cuda:
            torch.cuda.synchronize(self.device)
        prefill_seconds = time.perf_counter() - began
        self.last_prefill_seconds += prefill_seconds

        results: dict[str, list[Generation]] = {}
        decoded: dict[str, str] = {}  # decode signature -> the label that decoded it
        self.last_shared = {}
        for method in methods:
            signature = method.decode_signature()
            if signature in decoded:  # the same decode by construction (e.g. one roles table under two names)
                self.last_shared[method.label] = decoded[signature]
                results[method.label] = copy.deepcopy(results[decoded[signature]])
                continue
            decoded[signature] = method.label
            loop = DecodeLoop(self, cache, method, prompts, forced, limits, seeds, settings, logits)
            results[method.label] = loop.run()
            self.last_counters = loop.state.totals()
        peak = torch.cuda.max_memory_allocated(self.device) if on_cuda else None
        for generations in results.values():
            for generation in generations:
                generation.forward_batch = len(inputs)
                generation.prefill_seconds = prefill_seconds
                generation.peak_memory_bytes = peak
        return results

    @torch.inference_mode()
    def prefill(self, cache: StaticKVCache, prompts: list[list[int]], width: int) -> torch.Tensor:
        """Dense prefill of each row into `cache` (row b at slots W - len_b .. W - 1); float32 logits [B, V] of
        each row's last position."""
        logits = torch.empty(len(prompts), self.model.config.vocab_size, dtype=torch.float32, device=self.device)
        for row, ids in enumerate(prompts):
            tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
            last = prefill_row(self.stack, cache, row, tokens, width - len(ids), self.chunk_for(len(ids)))
            logits[row] = self.stack.logits(last)[0]
        return logits


class DecodeLoop:
    """One method decoding one prefilled batch: device buffers for a step, the step, and the host loop."""

    def __init__(
        self,
        engine: Engine,
        cache: StaticKVCache,
        method: Method,
        prompts: list[list[int]],
        forced: list[list[int]],
        limits: list[int],
        seeds: list[int],
        settings: GenerationSettings,
        prefill_logits: torch.Tensor,
    ):
        device = engine.device
        self.engine, self.cache, self.method, self.settings = engine, cache, method, settings
        method.set_head_shard(engine.head_shard)  # under tensor parallelism the method works on this rank's heads
        batch = len(prompts)
        self.batch = batch
        self.width = max(len(ids) for ids in prompts)
        self.prompt_lengths = [len(ids) for ids in prompts]
        self.forced_counts = [len(f) for f in forced]
        self.steps = max(len(f) + limit for f, limit in zip(forced, limits, strict=True))
        long = dict(dtype=torch.long, device=device)
        widest = max(1, max(self.forced_counts))
        forced_ids = torch.full((batch, widest), engine.pad_id, **long)
        for row, ids in enumerate(forced):
            if ids:
                forced_ids[row, : len(ids)] = torch.tensor(ids, **long)
        self.forced = forced_ids
        self.forced_count = torch.tensor(self.forced_counts, **long)
        self.limits = torch.tensor(limits, **long)
        self.seeds = torch.tensor(seeds, **long)
        self.stop_ids = torch.tensor(sorted(engine.stop_ids) or [-1], **long)
        # Step inputs and outputs at fixed addresses (a captured graph reads and writes these).
        self.logits = prefill_logits.clone()
        self.tokens = torch.zeros(batch, 1, **long)
        self.positions = torch.tensor(self.prompt_lengths, **long)[:, None]
        self.slot = torch.full((1,), self.width, **long)
        self.step_index = torch.zeros(1, **long)
        self.lengths = torch.tensor(self.prompt_lengths, dtype=torch.int32, device=device)
        self.starts = torch.tensor([self.width - n for n in self.prompt_lengths], dtype=torch.int32, device=device)
        slots = torch.arange(cache.capacity, device=device)
        self.valid = (slots[None, :] >= self.starts[:, None]) & (slots[None, :] < self.width)
        self.generated = torch.zeros(batch, **long)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = torch.zeros(batch, dtype=torch.bool, device=device)
        self.all_done = torch.zeros(1, dtype=torch.bool, device=device)
        self.token_log = torch.full((batch, self.steps), engine.pad_id, **long)
        self.emit_log = torch.zeros(batch, self.steps, dtype=torch.bool, device=device)
        self.state = DecodeState(method=method, counting=engine.count)
        self.refusal = self._graph_refusal()
        # Captured steps serve every step of the generation: their geometry bounds the lengths (StepGeometry).
        self.horizon = StepGeometry(
            lengths=self.lengths,
            starts=self.starts,
            lengths_max=[n + self.steps for n in self.prompt_lengths],
            lengths_min=[n + 1 for n in self.prompt_lengths],
        )
        self.uses_horizon = method.graph_refusal() is None
        self.done_steps = 0  # forwards run so far (host count)

    def _graph_refusal(self) -> str | None:
        """Why this decode runs eagerly (None: it is captured): the method's own reason first."""
        engine = self.engine
        refusal = self.method.graph_refusal()
        if refusal:
            return refusal
        if engine.device.type != "cuda":
            return "eager on the CPU"
        if not engine.graphs:
            return "graphs turned off"
        if engine.count:
            return "statistics are counted (count=True): eager steps"
        return None

    # ---- one step ------------------------------------------------------------------------------------------
    def choose(self) -> None:
        """The tokens of this step from the last logits: forced (decode exercise), sampled, or padding for a
        row that has stopped; per-row stop and limit bookkeeping and the token log, all on the device."""
        settings = self.settings
        t = self.step_index
        sampled = choose_tokens(self.logits, settings.temperature, settings.top_p, self.seeds, t)
        in_forced = t < self.forced_count
        forced_token = self.forced.gather(1, t.clamp(max=self.forced.shape[1] - 1).expand(self.batch, 1))[:, 0]
        stops = torch.zeros_like(self.done) if settings.ignore_eos else torch.isin(sampled, self.stop_ids)
        live = ~in_forced & ~self.done
        emit = live & ~stops
        pad = torch.full_like(sampled, self.engine.pad_id)
        token = torch.where(in_forced, forced_token, torch.where(self.done, pad, sampled))
        self.generated += emit
        self.eos |= live & stops
        self.done |= (live & stops) | (emit & (self.generated >= self.limits))
        self.all_done.copy_(self.done.all()[None])
        at = t.clamp(max=self.steps - 1)
        self.token_log.index_copy_(1, at, token[:, None])
        self.emit_log.index_copy_(1, at, emit[:, None])
        self.tokens.copy_(token[:, None])

    def forward(self) -> None:
        """The model on this step's tokens with the method's attention; advances slot, positions and lengths."""
        stack, cache, method, state = self.engine.stack, self.cache, self.method, self.state
        self.valid.index_fill_(1, self.slot, True)
        self.lengths += 1
        host = None
        if state.geometry is not self.horizon:  # eager steps know their lengths exactly
            host = [n + self.done_steps + 1 for n in self.prompt_lengths]
            if not self.uses_horizon:
                state.geometry = StepGeometry(self.lengths, self.starts, host, host)
        state.begin_step("decode", host)
        logits = decode_forward(stack, cache, method, state, self.tokens, self.positions, self.slot, self.valid)
        self.logits.copy_(logits)
        self.positions += 1
        self.slot += 1
        self.step_index += 1

    def step(self) -> None:
        self.choose()
        self.forward()

    # ---- cache correction ----------------------------------------------------------------------------------
    def correct(self) -> None:
        """LycheeDecode's cache correction: the K/V of the last `period` decoded tokens, recomputed with dense
        attention over the whole context, overwrite the sparse ones. The next logits stay the sparse ones."""
        period, stack, cache = self.method.correction_period, self.engine.stack, self.cache
        done = self.done_steps
        tokens = self.token_log[:, done - period : done]
        offsets = torch.arange(done - period, done, device=self.engine.device)
        positions = torch.tensor(self.prompt_lengths, device=self.engine.device)[:, None] + offsets[None, :]
        slots = self.width + offsets
        hidden = stack.embed(tokens)
        cos, sin = stack.rotary_tables(hidden, positions)
        end = self.width + done

        def attend(layer, q, k, v):
            cache.write(layer, slots, k, v)
            rows = []
            for row, length in enumerate(self.prompt_lengths):
                first = self.width - length
                keys = cache.keys[layer][row : row + 1, :, first:end]
                values = cache.values[layer][row : row + 1, :, first:end]
                rows.append(causal_attention(q[row : row + 1], keys, values, stack.scaling))
            return torch.cat(rows)

        for layer in range(stack.num_layers):
            hidden = stack.layer(layer, hidden, cos, sin, attend)
        self.state.count("corrections", 1)

    # ---- the host loop -------------------------------------------------------------------------------------
    def run(self) -> list[Generation]:
        on_cuda = self.engine.device.type == "cuda"
        period = self.method.correction_period
        if self.uses_horizon:
            self.state.geometry = self.horizon
        graph = None
        reason = self.refusal
        warmup = 1
        began = time.perf_counter()
        steady_from, steady_began = 0, began
        flags = torch.zeros(2, dtype=torch.bool, pin_memory=on_cuda)
        events = [torch.cuda.Event() for _ in range(2)] if on_cuda else []
        while self.done_steps < self.steps:
            if graph is None and reason is None and self.done_steps == warmup:
                if self.steps - self.done_steps < MIN_GRAPH_STEPS:
                    reason = f"only {self.steps - self.done_steps} steps left after the warm-up: not captured"
                else:
                    graph, reason = self._capture()
                steady_from, steady_began = self.done_steps, time.perf_counter()
            elif self.done_steps == warmup and graph is None:
                steady_from, steady_began = self.done_steps, time.perf_counter()
            if graph is not None:
                graph.replay()
            elif reason is None and self.done_steps < warmup:
                self._warm_up()
            else:
                self.step()
            index = self.done_steps % 2
            self.done_steps += 1
            if period and self.done_steps % period == 0:
                self.correct()
            if on_cuda:
                flags[index : index + 1].copy_(self.all_done, non_blocking=True)
                events[index].record()
                previous = 1 - index
                if self.done_steps >= 2:
                    events[previous].synchronize()
                    if flags[previous]:
                        break
            elif bool(self.all_done):
                break
        if on_cuda:
            torch.cuda.synchronize(self.engine.device)
        ended = time.perf_counter()
        del graph
        steady_steps = self.done_steps - steady_from
        steady_ms = 1000 * (ended - steady_began) / steady_steps if steady_steps > 0 else 0.0
        return self._generations(ended - began, steady_ms, reason)

    def _warm_up(self) -> None:
        """A step on a side stream before a capture (compiles kernels, builds plans and buffers; the documented
        way to warm up a CUDA graph's work)."""
        side = torch.cuda.Stream(self.engine.device)
        side.wait_stream(torch.cuda.current_stream(self.engine.device))
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream(self.engine.device).wait_stream(side)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph | None, str | None]:
        """Capture one step (its warm-up already ran eagerly: compiled kernels, plans and buffers exist)."""
        torch.cuda.synchronize(self.engine.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as error:  # a step that reads the device back cannot be captured
            torch.cuda.synchronize(self.engine.device)
            return None, f"capture failed: {str(error).splitlines()[0]}"
        return graph, None

    def _generations(self, seconds: float, steady_ms: float, reason: str | None) -> list[Generation]:
        tokens = self.token_log.tolist()
        emitted = self.emit_log.tolist()
        eos = self.eos.tolist()
        tokenizer = self.engine.tokenizer
        out = []
        for row in range(self.batch):
            ids = [token for token, emit in zip(tokens[row], emitted[row], strict=True) if emit]
            out.append(
                Generation(
                    text=tokenizer.decode(ids, skip_special_tokens=True),
                    new_tokens=len(ids),
                    exercise_tokens=self.forced_counts[row],
                    stop_reason="eos" if eos[row] else "length",
                    token_ids=ids,
                    decode_seconds=seconds,
                    decode_steps=self.done_steps,
                    steady_ms_per_step=steady_ms,
                    decode_mode="eager" if reason else "graph",
                    eager_reason=reason,
                )
            )
        return out
