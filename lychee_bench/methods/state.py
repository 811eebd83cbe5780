"""What one decode step carries across a model's layers: the per-step state a method reads and writes.

The harness owns the state (one per method per generation) and hands it to every layer's attention call;
methods keep their cross-layer data (selected token sets) in it, never in module globals or on the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lychee_bench.methods.base import Method


@dataclass
class StepGeometry:
    """Where each sequence's real tokens sit in the cache during a decode step.

    Row b's real tokens (the current one included) are the cache slots ``starts[b] .. starts[b] + lengths[b]
    - 1``; slots before them are left padding, slots after them are not written yet (a static cache is larger
    than the context). ``lengths`` and ``starts`` are device tensors the engine keeps up to date, also inside a
    captured CUDA graph. The host lists bound them for every step the state serves: ``lengths_max`` sizes
    grids, buffers and top-k widths (a graph captured once is replayed while the context grows), and
    ``lengths_min`` decides what may only be skipped when every row is long enough. In an eager step that
    knows its exact lengths the two lists are equal.
    """

    lengths: torch.Tensor  # [B] int32 on the device: real tokens, the current one included
    starts: torch.Tensor  # [B] int32: cache slot of the first real token
    lengths_max: list[int]
    lengths_min: list[int]

    @property
    def longest(self) -> int:
        """No row holds more real tokens than this during the steps the geometry serves."""
        return max(self.lengths_max)

    @property
    def shortest(self) -> int:
        """No row holds fewer real tokens than this during the steps the geometry serves."""
        return min(self.lengths_min)

    @property
    def exact(self) -> bool:
        return self.lengths_max == self.lengths_min

    @classmethod
    def from_valid(cls, valid: torch.Tensor, lengths_host: list[int] | None = None) -> StepGeometry:
        """The geometry of a left-padded cache whose real tokens end at its last slot (one read-back when the
        host lengths are not given)."""
        count = valid.sum(-1)
        host = count.tolist() if lengths_host is None else list(lengths_host)
        return cls(
            lengths=count.to(torch.int32),
            starts=(valid.shape[1] - count).to(torch.int32),
            lengths_max=host,
            lengths_min=host,
        )


@dataclass
class DecodeState:
    """What one forward call of the model carries across its layers.

    `slots` maps a KV-head index to the token set chosen for it in this step (absolute cache positions, or
    block indices, as the method defines); it is emptied at the start of every step. `layer_data` is free
    per-step space keyed by whatever the method needs. `persistent` is what a method keeps from one decode step
    to the next (Quest's page summaries, a kernel's work plan); a prefill empties it. `counters` accumulates
    statistics over the whole run (for example the K/V tokens actually read), so a result can report them; a
    tensor value is added on its device, and `totals()` reads everything back once at the end.

    `lengths` are the real tokens of each sequence in this step (the current one included), known on the host,
    and `geometry` where they sit in the cache (see StepGeometry); the engine sets both so that methods need
    not read the validity mask back from the device. A state serving a captured CUDA graph has `lengths` None
    (they change at every replay) and a geometry whose host lists bound them.
    """

    method: Method
    phase: str = "prefill"  # "prefill" or "decode"
    step: int = 0
    slots: dict[Any, torch.Tensor] = field(default_factory=dict)
    layer_data: dict[Any, Any] = field(default_factory=dict)
    counters: dict[str, float | torch.Tensor] = field(default_factory=dict)
    lengths: list[int] | None = None
    geometry: StepGeometry | None = None
    persistent: dict[Any, Any] = field(default_factory=dict)
    # False where the statistics are not wanted (a timed step: bench models its bytes in tasks/latency/traffic.py)
    # so that the kernels computing them do not run and are not timed.
    counting: bool = True

    def begin_step(self, phase: str, lengths: list[int] | None = None) -> None:
        self.phase = phase
        self.lengths = lengths
        self.slots.clear()
        self.layer_data.clear()
        if phase == "prefill":
            self.persistent.clear()
        if phase == "decode":
            self.step += 1

    def count(self, name: str, value: float | torch.Tensor | Callable[[], float | torch.Tensor]) -> None:
        """Add to a run statistic; a tensor stays on its device (no sync) until `totals()`. Pass a function
        when the value costs device work: it runs only while `counting`."""
        if not self.counting:
            return
        if callable(value):
            value = value()
        if isinstance(value, torch.Tensor):
            value = value.detach().double()
        self.counters[name] = self.counters.get(name, 0.0) + value

    def totals(self) -> dict[str, float]:
        """The statistics as plain numbers (one read-back per statistic)."""
        return {name: float(value) for name, value in self.counters.items()}

    def host_lengths(self, valid: torch.Tensor) -> list[int]:
        """Real tokens per sequence in this step: the engine's host copy, or one read-back of `valid` per step."""
        if self.lengths is None:
            self.lengths = valid.sum(-1).tolist()
        return self.lengths

    def step_geometry(self, valid: torch.Tensor) -> StepGeometry:
        """The engine's geometry, or (a cache whose real tokens end at its last slot) one derived from `valid`
        once per step."""
        if self.geometry is not None:
            return self.geometry
        derived = self.layer_data.get("geometry")
        if derived is None:
            derived = StepGeometry.from_valid(valid, self.host_lengths(valid))
            self.layer_data["geometry"] = derived
        return derived
