"""The latency bench's decode step: the engine's own step (harness/engine.py `decode_forward`), held at a fixed
context so that it can be replayed as often as timing needs.

Every row holds C tokens in a cache of exactly C slots; the step always writes slot C-1 and attends to all C
slots, so the context never drifts however often the captured graph is replayed (SPEC §6). The methods see the
same state as in a generation, with exact host lengths (C) and a geometry whose bounds are C.
"""

from __future__ import annotations

import torch

from lychee_bench.harness.engine import Engine, decode_forward
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.kernels.timing import capture_graph
from lychee_bench.methods.base import Method
from lychee_bench.methods.state import DecodeState, StepGeometry


class FixedContextStep:
    """One decode step of `method` at context C = the cache's capacity, for batch = the cache's rows."""

    def __init__(self, engine: Engine, cache: StaticKVCache, method: Method):
        self.engine, self.cache, self.method = engine, cache, method
        batch, context, device = cache.batch, cache.capacity, engine.device
        self.batch, self.context = batch, context
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.full((batch, 1), context - 1, dtype=torch.long, device=device)
        self.slot = torch.full((1,), context - 1, dtype=torch.long, device=device)
        self.valid = torch.ones(batch, context, dtype=torch.bool, device=device)
        lengths = torch.full((batch,), context, dtype=torch.int32, device=device)
        starts = torch.zeros(batch, dtype=torch.int32, device=device)
        self.lengths_host = [context] * batch
        self.geometry = StepGeometry(lengths, starts, self.lengths_host, self.lengths_host)
        self.state = DecodeState(method=method, counting=False, geometry=self.geometry)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def step(self) -> torch.Tensor:
        """One eager step (writes slot C-1; the cache keeps its C-1 earlier tokens)."""
        self.state.begin_step("decode", self.lengths_host)
        with torch.inference_mode():
            self.logits = decode_forward(
                self.engine.stack,
                self.cache,
                self.method,
                self.state,
                self.tokens,
                self.positions,
                self.slot,
                self.valid,
            )
        return self.logits

    def capture(self, warmup: int = 3) -> None:
        """Warm up (compiles kernels, builds plans) on a side stream, then capture one step."""
        self.graph = capture_graph(self.step, warmup)

    def replay(self) -> torch.Tensor:
        """One decode step: the captured graph where there is one, else eager."""
        if self.graph is None:
            return self.step()
        self.graph.replay()
        return self.logits

    def context_length(self) -> int:
        """Tokens attended by the step: the written slot + 1 (read back; for checks, never inside timing)."""
        return int(self.slot.item()) + 1

    def release(self) -> None:
        self.graph = None
        self.logits = None
        self.state.persistent.clear()
