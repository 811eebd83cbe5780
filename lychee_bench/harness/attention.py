"""The one place where methods meet the model: a transformers attention function plus per-step state.

The harness registers `lychee_bench` with transformers' AttentionInterface and selects it with
`model.set_attn_implementation`. Every forward call passes a `DecodeState` as the `lychee_state` keyword,
which transformers hands through to the attention function untouched. Prefill (more than one query token) is
dense in every method; a decode step (one query token) goes to the active method. Cross-layer data such as
selected token sets lives in the state, never in module globals or on the model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from lychee_bench.methods.base import Method

ATTENTION_NAME = "lychee_bench"


@dataclass
class DecodeState:
    """What one forward call of the model carries across its layers.

    `slots` maps a KV-head index to the token set chosen for it in this step (absolute cache positions, or
    block indices, as the method defines); it is emptied at the start of every step. `layer_data` is free
    per-step space keyed by whatever the method needs. `counters` accumulates statistics over the whole run
    (for example the K/V tokens actually read), so a result can report them; a tensor value is added on its
    device, and `totals()` reads everything back once at the end instead of once per layer. `lengths` are the
    real tokens of each sequence in this decode step (the current one included), known on the host: the
    engine sets them so that methods need not read the validity mask back from the device.
    """

    method: Method
    phase: str = "prefill"  # "prefill" or "decode"
    step: int = 0
    slots: dict[Any, torch.Tensor] = field(default_factory=dict)
    layer_data: dict[Any, Any] = field(default_factory=dict)
    counters: dict[str, float | torch.Tensor] = field(default_factory=dict)
    lengths: list[int] | None = None
    # What a method keeps from one decode step to the next (Quest's page summaries); a prefill empties it.
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


def key_validity(attention_mask: torch.Tensor | None, batch: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """[batch, kv_len] bool: which cache positions hold real tokens (left padding is False).

    For a single decode query the 4-D mask row of the query is exactly the set of keys it may see.
    """
    if attention_mask is None:
        return torch.ones(batch, kv_len, dtype=torch.bool, device=device)
    row = attention_mask[:, 0, -1, :kv_len]
    if row.dtype != torch.bool:
        row = row > torch.finfo(row.dtype).min / 2
    return row


def lychee_bench_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lychee_state: DecodeState | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, Hq, q, D], key/value [B, Hkv, kv, D] (whole cache)."""
    if lychee_state is None:
        raise RuntimeError(
            "the model uses lychee-bench attention but no `lychee_state` was passed to forward; "
            "run it through lychee_bench.harness.engine.Engine."
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if query.shape[2] > 1 or lychee_state.phase == "prefill":
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    valid = key_validity(attention_mask, query.shape[0], key.shape[2], key.device)
    output = lychee_state.method.decode_attention(module.layer_idx, query, key, value, valid, scaling, lychee_state)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, lychee_bench_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Route the model's attention through the registered attention function `name` for the duration; always
    restores the original."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def method_attention(model: torch.nn.Module) -> AbstractContextManager[None]:
    """Route the model's attention through lychee-bench for the duration; always restores the original."""
    return attention_implementation(model, ATTENTION_NAME)
