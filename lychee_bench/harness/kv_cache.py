"""The engine's static KV cache: keys and values of every layer, preallocated once per batch.

Layout per layer: [B, Hkv, S, D] for keys and for values. Row b's prompt is left-padded so that every row's
prompt ends at the same slot W (the prefill width); decoding writes slot W + t at step t for every row, so one
device index names the slot of a step and the positions never drift apart. Slots after the context are free
space for the decode tail; what a method writes there is overwritten by the next method that decodes from the
same prefill (nothing before slot W is ever written by a decode step). Under tensor parallelism each process's cache
holds its own KV heads only (harness/tensor_parallel.py).
"""

from __future__ import annotations

from typing import Any

import torch


def kv_bytes_per_token(config: Any, dtype: torch.dtype, tensor_parallel: int = 1) -> int:
    """Bytes of keys + values one token occupies in every layer of the cache (of one process's share of the KV
    heads under tensor parallelism over `tensor_parallel` processes)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * (config.num_key_value_heads // tensor_parallel) * head_dim * element


class StaticKVCache:
    """Preallocated keys/values [B, Hkv, S, D] per layer."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (batch, num_kv_heads, capacity, head_dim)
        # Zeros, not empty: a masked dense kernel (SDPA with a mask, the reference paths) still multiplies the
        # slots it masks, and stale memory can hold inf or NaN, which a mask does not cancel (0 x inf).
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.batch = batch
        self.capacity = capacity

    @classmethod
    def for_config(
        cls,
        config: Any,
        batch: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
        tensor_parallel: int = 1,
    ) -> StaticKVCache:
        """The cache of a model with this config; under tensor parallelism over `tensor_parallel` processes, of one
        process's KV heads (each holds Hkv / tensor_parallel of them)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = config.num_key_value_heads // tensor_parallel
        return cls(config.num_hidden_layers, batch, kv_heads, head_dim, capacity, dtype, device)

    def write(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store key/value [B, Hkv, T, D] at cache slots `slots` [T] (a device tensor: no host value)."""
        self.keys[layer].index_copy_(2, slots, key)
        self.values[layer].index_copy_(2, slots, value)

    def write_row(self, layer: int, row: int, first: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one row's key/value [1, Hkv, T, D] at slots first .. first + T - 1 (prefill)."""
        end = first + key.shape[2]
        self.keys[layer][row : row + 1, :, first:end] = key
        self.values[layer][row : row + 1, :, first:end] = value

    @torch.no_grad()
    def fill_random(self, length: int, seed: int = 0, std: float = 1.0) -> None:
        """Random keys/values in slots [0, length): a speed measurement needs a full cache, not a meaningful one."""
        generator = torch.Generator(device=self.keys[0].device).manual_seed(seed)
        for tensor in (*self.keys, *self.values):
            tensor[:, :, :length].normal_(0.0, std, generator=generator)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
