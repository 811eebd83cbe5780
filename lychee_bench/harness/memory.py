"""How much device memory a batch needs, known from its shapes before it starts.

A batch holds: the static KV cache (every row, every layer, prefill + decode tail), the activations of one
prefill chunk (one row at a time, so they do not grow with the batch), and the decode step's workspace (logits
and sampling over the vocabulary, the methods' per-token score buffers). The engine splits a batch whose
estimate exceeds what the device has free, and refuses, with the numbers, a single row that does not fit:
never an out-of-memory error halfway through a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lychee_bench.harness.kv_cache import kv_bytes_per_token

GIB = 2**30
HEADROOM = 1 * GIB  # allocator fragmentation, CUDA graph pools, library workspaces
SAFETY = 1.25  # over the activation and workspace estimates (temporaries of the eager pieces)


class MemoryPlanError(ValueError):
    """One row does not fit on the device; the message gives the numbers and the fix."""


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def prefill_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Activation bytes per prefilled token of one chunk: hidden states and residuals, fused QKV, attention
    output, fused gate/up and the activated MLP input (cache dtype), float32 norm temporaries."""
    element = torch.empty((), dtype=dtype).element_size()
    head_dim = _head_dim(config)
    qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    attended = config.num_attention_heads * head_dim
    per_token = element * (4 * config.hidden_size + 2 * qkv + 2 * attended + 3 * config.intermediate_size)
    return int(SAFETY * (per_token + 2 * 4 * config.hidden_size))


def decode_workspace_bytes(config: Any, batch: int, capacity: int) -> int:
    """Logits and sampling (float64 probabilities, sorted copy, cumulative sums) plus a float32 score per query
    head and cache slot (token-level selection) and its top-k temporaries."""
    sampling = batch * config.vocab_size * (4 + 3 * 8)
    scores = batch * config.num_attention_heads * capacity * 4 * 2
    return int(SAFETY * (sampling + scores))


@dataclass(frozen=True)
class BatchMemory:
    cache: int
    prefill: int
    workspace: int

    @property
    def total(self) -> int:
        return self.cache + self.prefill + self.workspace

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (KV cache {self.cache / GIB:.1f}, prefill activations "
            f"{self.prefill / GIB:.1f}, decode workspace {self.workspace / GIB:.1f})"
        )


def batch_memory(config: Any, dtype: torch.dtype, batch: int, capacity: int, prefill_chunk: int) -> BatchMemory:
    return BatchMemory(
        cache=batch * capacity * kv_bytes_per_token(config, dtype),
        prefill=prefill_chunk * prefill_bytes_per_token(config, dtype),
        workspace=decode_workspace_bytes(config, batch, capacity),
    )


def available_bytes(device: torch.device) -> int | None:
    """Bytes a new batch may take on `device`: free device memory plus what torch's allocator holds unused,
    less a headroom; None on the CPU (no limit is enforced there)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(0, free + cached - HEADROOM)


def largest_fitting_batch(
    config: Any, dtype: torch.dtype, capacity: int, prefill_chunk: int, wanted: int, available: int | None
) -> int:
    """The most rows (at most `wanted`) whose batch fits in `available` bytes; 0 when not even one does."""
    if available is None:
        return wanted
    fits = 0
    for batch in range(1, wanted + 1):
        if batch_memory(config, dtype, batch, capacity, prefill_chunk).total > available:
            break
        fits = batch
    return fits
