"""A static-cache decode engine for timing: one decode step at a fixed context, capturable in a CUDA graph.

Modelled on gpt-fast: the KV cache is preallocated ([B, Hkv, S, D] per layer, S = the context C), every input
of the decode step (token ids, positions, the slot written, the attention mask) is a device tensor with a fixed
address, and the whole step (all layers, weights and LM head) is captured once and replayed. The step always
writes slot C-1 and attends to all C slots, so the context never drifts however often it is replayed (SPEC §6).

The cache plugs into the unmodified transformers model through its cache interface (a ``Cache`` whose layers
are ``StaticLayer`` subclasses; the same in transformers 5.17 and 5.24). The decode step passes its own 4-D
boolean mask, which transformers uses as-is, so no mask is built (and nothing is read back to the host) inside
the step. Methods receive a :class:`StaticDecodeState` whose ``static`` field holds what the host knows in
advance (lengths, an all-true validity), so they can plan once and never synchronise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, StaticLayer

from lychee_bench.harness.attention import DecodeState, method_attention
from lychee_bench.harness.engine import _cache_keyword


class FixedSlotLayer(StaticLayer):
    """A static layer that writes at the positions its cache says (never a running counter) and returns either
    the whole buffer (decode) or its first ``visible`` slots (chunked prefill)."""

    def __init__(self, owner: FixedSlotCache, max_cache_len: int):
        super().__init__(max_cache_len=max_cache_len)
        self.owner = owner

    def allocate(self, batch: int, num_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        probe = torch.empty(batch, num_heads, 0, head_dim, dtype=dtype, device=device)
        self.lazy_initialization(probe, probe)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        positions = self.owner.write_positions
        self.keys.index_copy_(2, positions, key_states)
        self.values.index_copy_(2, positions, value_states)
        visible = self.owner.visible
        if visible is None:
            return self.keys, self.values
        return self.keys[:, :, :visible], self.values[:, :, :visible]

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.max_cache_len, 0


class FixedSlotCache(Cache):
    """Preallocated K/V for every layer; the engine sets ``write_positions`` (device tensor) before a forward."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        layers = []
        super().__init__(layers=layers)
        self.max_len = max_len
        self.length = 0  # tokens held (host bookkeeping; never read inside the step)
        self.visible: int | None = None
        self.write_positions = torch.zeros(1, dtype=torch.long, device=device)
        for _ in range(num_layers):
            layer = FixedSlotLayer(self, max_len)
            layer.allocate(batch, num_kv_heads, head_dim, dtype, device)
            layers.append(layer)

    def update(self, key_states, value_states, layer_idx: int, *args: Any, **kwargs: Any):
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    @torch.no_grad()
    def fill_random(self, length: int, seed: int = 0, std: float = 1.0) -> None:
        """Write random K/V into slots [0, length): a speed sweep needs a full cache, not a meaningful one."""
        generator = torch.Generator(device=self.write_positions.device).manual_seed(seed)
        for layer in self.layers:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, :length].normal_(0.0, std, generator=generator)
        self.length = length

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values))


@dataclass
class StaticInfo:
    """What the host knows before a decode step: every sequence holds ``lengths_host[b]`` tokens, right-aligned
    in a cache of ``max_len`` slots. Methods use it instead of reading the validity mask back (a sync)."""

    lengths_host: list[int]
    max_len: int
    lengths: torch.Tensor  # [B] int32 on the device
    starts: torch.Tensor  # [B] int32: first real slot of each sequence (0: no padding)
    valid: torch.Tensor  # [B, S] bool, all true here
    all_valid: bool = True
    method_cache: dict[Any, Any] = field(default_factory=dict)  # plans, buffers, slots: kept across steps

    @classmethod
    def full(cls, batch: int, length: int, device: torch.device) -> StaticInfo:
        return cls(
            lengths_host=[length] * batch,
            max_len=length,
            lengths=torch.full((batch,), length, dtype=torch.int32, device=device),
            starts=torch.zeros(batch, dtype=torch.int32, device=device),
            valid=torch.ones(batch, length, dtype=torch.bool, device=device),
        )


@dataclass
class StaticDecodeState(DecodeState):
    """A DecodeState that also carries :class:`StaticInfo`; ``begin_step`` leaves ``static`` alone. It keeps no
    statistics: its steps are timed, and the bench models the bytes a step reads instead (traffic.py)."""

    static: StaticInfo | None = None
    counting: bool = False


class StaticDecoder:
    """Fixed-context decoding of ``model`` with ``method``: context C, batch B, the step writes slot C-1."""

    def __init__(self, model: torch.nn.Module, cache: FixedSlotCache, batch: int, method: Any):
        self.model = model
        self.cache = cache
        self.batch = batch
        self.context = cache.max_len
        self.device = cache.write_positions.device
        self.keyword = _cache_keyword(model)
        self.static = StaticInfo.full(batch, self.context, self.device)
        self.state = StaticDecodeState(method=method, static=self.static)
        slot = self.context - 1
        self.input_ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.position_ids = torch.full((batch, 1), slot, dtype=torch.long, device=self.device)
        self.decode_slot = torch.full((1,), slot, dtype=torch.long, device=self.device)
        self.decode_mask = torch.ones(batch, 1, 1, self.context, dtype=torch.bool, device=self.device)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def _forward(self, input_ids, position_ids, mask) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            lychee_state=self.state,
            **{self.keyword: self.cache},
        )
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Dense prefill of ``input_ids`` [B, C-1] into slots [0, C-1) in chunks (bounded memory); returns the
        last logits. Every chunk attends to all earlier slots through an explicit causal mask."""
        total = input_ids.shape[1]
        if total != self.context - 1:
            raise ValueError(f"prefill takes C-1 = {self.context - 1} tokens (the step writes slot C-1), got {total}")
        logits = None
        with method_attention(self.model):
            for start in range(0, total, chunk):
                end = min(total, start + chunk)
                positions = torch.arange(start, end, device=self.device)
                keys = torch.arange(end, device=self.device)
                mask = (keys[None, :] <= positions[:, None])[None, None].expand(self.batch, 1, -1, -1)
                self.cache.write_positions = positions
                self.cache.visible = end
                self.state.begin_step("prefill")
                logits = self._forward(input_ids[:, start:end], positions[None].expand(self.batch, -1), mask)
        self.cache.visible = None
        self.cache.write_positions = self.decode_slot
        self.cache.length = total
        return logits

    def step(self) -> torch.Tensor:
        """One eager decode step at context C (writes slot C-1; the cache keeps C-1 earlier tokens)."""
        self.cache.write_positions = self.decode_slot
        self.cache.visible = None
        self.state.begin_step("decode", [self.context] * self.batch)
        with torch.inference_mode(), method_attention(self.model):
            self.logits = self._forward(self.input_ids, self.position_ids, self.decode_mask)
        return self.logits

    def capture(self, warmup: int = 3) -> None:
        """Warm up (compiles kernels, builds plans) on a side stream, then capture one decode step."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def replay(self) -> torch.Tensor:
        """One decode step: the captured graph where there is one, else eager."""
        if self.graph is None:
            return self.step()
        self.graph.replay()
        return self.logits

    def context_length(self) -> int:
        """Tokens attended by the step: the written slot + 1 (read back; for checks, never inside timing)."""
        return int(self.decode_slot.item()) + 1

    def release(self) -> None:
        self.graph = None
        self.logits = None
        self.static.method_cache.clear()


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}_ms": self.median_ms,
            f"{prefix}_p10_ms": self.p10_ms,
            f"{prefix}_p90_ms": self.p90_ms,
            f"{prefix}_reps": self.reps,
        }


def summarize_times(times: list[float]) -> Timing:
    ordered = sorted(times)

    def pick(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return Timing(pick(0.5), pick(0.1), pick(0.9), len(ordered))


def time_cuda(run: Callable[[], Any], reps: int, warmup: int = 3) -> Timing:
    """Median of ``reps`` runs, each bracketed by CUDA events and synchronised before its time is read."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summarize_times(times)


def time_wall(run: Callable[[], Any], reps: int, warmup: int = 1) -> Timing:
    """Wall-clock timing for the CPU smoke mode (not a measurement of anything that matters)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize_times(times)


def capture_graph(calls: Callable[[], Any], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Warm ``calls`` up on a side stream and capture it once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            calls()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    return graph
