"""How much device memory a batch needs, known from its shapes before it starts.

A batch holds: the static KV cache (every row, every layer, prefill + decode tail), the activations of one
prefill chunk (one row at a time, so they do not grow with the batch), and the decode step's workspace (logits
and sampling over the vocabulary, the methods' per-token score buffers). The engine splits a batch whose
estimate exceeds what the device has free, and refuses, with the numbers, a single row that does not fit:
never an out-of-memory error halfway through a run.

Under tensor parallelism over W processes each holds 1/W of the KV heads, of the attention and MLP activations and
of the weights (harness/tensor_parallel.py), and a batch must fit the fullest process. `device_fit_refusal` is the
check before anything is loaded: one process's weights + KV cache + workspace against its GPU, refused with the
arithmetic (the bench uses it for every point it is asked to measure).
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


def prefill_bytes_per_token(config: Any, dtype: torch.dtype, tensor_parallel: int = 1) -> int:
    """Activation bytes per prefilled token of one chunk: hidden states and residuals, fused QKV, attention
    output, fused gate/up and the activated MLP input (cache dtype), float32 norm temporaries (one process's share
    of the heads and the MLP under tensor parallelism; the hidden states are whole on every process)."""
    element = torch.empty((), dtype=dtype).element_size()
    head_dim = _head_dim(config)
    qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim // tensor_parallel
    attended = config.num_attention_heads * head_dim // tensor_parallel
    intermediate = -(-config.intermediate_size // tensor_parallel)
    per_token = element * (4 * config.hidden_size + 2 * qkv + 2 * attended + 3 * intermediate)
    return int(SAFETY * (per_token + 2 * 4 * config.hidden_size))


def decode_workspace_bytes(config: Any, batch: int, capacity: int, tensor_parallel: int = 1) -> int:
    """Logits and sampling (float64 probabilities, sorted copy, cumulative sums; the whole vocabulary, gathered on
    every process) plus a float32 score per query head (the process's own) and cache slot (token-level selection)
    and its top-k temporaries."""
    sampling = batch * config.vocab_size * (4 + 3 * 8)
    scores = batch * (config.num_attention_heads // tensor_parallel) * capacity * 4 * 2
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


def batch_memory(
    config: Any, dtype: torch.dtype, batch: int, capacity: int, prefill_chunk: int, tensor_parallel: int = 1
) -> BatchMemory:
    """What a batch takes on one device (on each of `tensor_parallel` processes under tensor parallelism)."""
    return BatchMemory(
        cache=batch * capacity * kv_bytes_per_token(config, dtype, tensor_parallel),
        prefill=prefill_chunk * prefill_bytes_per_token(config, dtype, tensor_parallel),
        workspace=decode_workspace_bytes(config, batch, capacity, tensor_parallel),
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
    config: Any,
    dtype: torch.dtype,
    capacity: int,
    prefill_chunk: int,
    wanted: int,
    available: int | None,
    tensor_parallel: int = 1,
) -> int:
    """The most rows (at most `wanted`) whose batch fits in `available` bytes; 0 when not even one does."""
    if available is None:
        return wanted
    fits = 0
    for batch in range(1, wanted + 1):
        if batch_memory(config, dtype, batch, capacity, prefill_chunk, tensor_parallel).total > available:
            break
        fits = batch
    return fits


GB = 10**9


def weight_bytes(config: Any, dtype: torch.dtype, tensor_parallel: int = 1) -> int:
    """Bytes of the parameters one process holds: the whole model in one process; under tensor parallelism over
    `tensor_parallel` processes the fullest share of what transformers' plan shards (embedding and LM head rows,
    q/k/v/gate/up rows, o/down columns) plus every replicated norm. From the config alone (before loading)."""
    element = torch.empty((), dtype=dtype).element_size()
    world = tensor_parallel
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = _head_dim(config)
    q_rows, kv_rows = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    share = -(-vocab // world) * hidden * (1 if config.tie_word_embeddings else 2)
    layer = (q_rows + 2 * kv_rows) // world * hidden + hidden * (q_rows // world) + 3 * hidden * -(-inter // world)
    layer += 2 * hidden  # the input and post-attention norms
    if getattr(config, "model_type", "") == "qwen2":
        layer += (q_rows + 2 * kv_rows) // world  # q/k/v biases
    if getattr(config, "model_type", "") == "qwen3":
        layer += 2 * head_dim  # per-head query and key norms
    return element * (share + config.num_hidden_layers * layer + hidden)


def device_fit_refusal(
    config: Any, dtype: torch.dtype, batch: int, ctx: int, available: int | None, tensor_parallel: int = 1
) -> str | None:
    """Why `batch` rows of `ctx` tokens cannot run here (None: they fit, or nothing is known about the device):
    one process's weights + KV cache + decode workspace against the `available` bytes of its device, before
    anything is loaded. The message gives the arithmetic and the smallest process count that would fit."""
    if available is None:
        return None
    world = tensor_parallel

    def per_process(processes: int) -> tuple[int, int, int]:
        weights = weight_bytes(config, dtype, processes)
        cache = batch * ctx * kv_bytes_per_token(config, dtype, processes)
        return weights, cache, decode_workspace_bytes(config, batch, ctx, processes)

    weights, cache, workspace = per_process(world)
    if weights + cache + workspace <= available:
        return None
    element = torch.empty((), dtype=dtype).element_size()
    kv_total = batch * ctx * kv_bytes_per_token(config, dtype)
    where = "one GPU" if world == 1 else f"{world} GPUs"
    message = (
        f"batch {batch} at context {ctx} does not fit {where}: the KV cache is {config.num_hidden_layers} layers x "
        f"{config.num_key_value_heads} KV heads x {_head_dim(config)} x 2 (K, V) x {element} bytes x {ctx} tokens x "
        f"{batch} = {kv_total / GB:.1f} GB and the weights {weight_bytes(config, dtype) / GB:.1f} GB; "
        f"{'each' if world > 1 else 'the'} GPU holds {weights / GB:.1f} GB of weights + {cache / GB:.1f} GB of cache "
        f"+ {workspace / GB:.1f} GB of workspace = {(weights + cache + workspace) / GB:.1f} GB, over the "
        f"{available / GB:.1f} GB ({available / GIB:.1f} GiB) it has free"
    )
    heads = config.num_key_value_heads
    larger = [n for n in range(world + 1, heads + 1) if heads % n == 0 and sum(per_process(n)) <= available]
    fix = "; use fewer rows or a shorter context"
    if larger:
        fix = f"; use fewer rows, a shorter context, or {larger[0]} GPUs (--tensor-parallel)"
    return message + fix
