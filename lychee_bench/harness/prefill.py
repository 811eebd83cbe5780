"""Dense, mask-free prefill of one row into a static KV cache: the engine's, training's and calibration's.

A row is run through the compact layer stack (forward.py) in chunks. Each chunk writes its keys and values into
the cache and attends to the row's cached keys through SDPA's causal kernels (lower-right aligned when earlier
chunks precede it), so no mask is ever built and memory is linear in the context. An observer may watch every
layer's attention (calibration records probabilities and layer importance through it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.backends.cuda import SDPAParams, can_use_flash_attention
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from lychee_bench.harness.forward import LayerStack
from lychee_bench.harness.kv_cache import StaticKVCache

CPU_PREFILL_CHUNK = 2048
MAX_PREFILL_CHUNK = 131072  # a row up to 128K in one chunk: SDPA's square causal kernels (the fastest)
FAST_SDPA_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]

# observer(layer, begin, layer_input, query, keys, attended): a chunk's tokens begin at row position `begin`;
# layer_input [1, T, hidden] enters the layer, query [1, Hq, T, D] (after rotary), keys [1, Hkv, begin + T, D]
# are the row's cached keys so far, attended [1, Hq, T, D] is the attention output (before the projection).
Observer = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def prefill_chunk(device: torch.device, tokens: int, override: int | None = None) -> int:
    """Tokens per forward of one row: `override` when given, else 2048 on the CPU and up to 128K on a GPU."""
    if override:
        return min(tokens, override)
    return min(tokens, MAX_PREFILL_CHUNK if device.type == "cuda" else CPU_PREFILL_CHUNK)


def _flash_takes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether SDPA's flash kernel runs these shapes as they are (GQA included), with no mask."""
    if not query.is_cuda:
        return False
    params = SDPAParams(query, key, value, None, 0.0, False, query.shape[1] != key.shape[1])
    return bool(can_use_flash_attention(params))


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """query [1, Hq, T, D] over the row's keys [1, Hkv, S, D] whose last T are the queries' own tokens: SDPA's
    causal kernels (lower-right aligned when S > T), no mask. On a GPU the keys' heads are repeated for the
    query heads when the flash kernel does not take GQA as it is, and SDPA's math backend (which would build
    [Hq, T, S] scores) is never used."""
    tokens, keys = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if not query.is_cuda:
        if tokens == keys:
            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=gqa)
        bias = causal_lower_right(tokens, keys)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale, enable_gqa=gqa)
    if gqa and not _flash_takes(query, key, value):
        group = query.shape[1] // key.shape[1]
        key, value, gqa = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), False
    with sdpa_kernel(FAST_SDPA_BACKENDS):
        if tokens == keys:
            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=gqa)
        bias = causal_lower_right(tokens, keys)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale, enable_gqa=gqa)


def prefill_row(
    stack: LayerStack,
    cache: StaticKVCache,
    row: int,
    token_ids: torch.Tensor,
    first: int = 0,
    chunk: int | None = None,
    observer: Observer | None = None,
) -> torch.Tensor:
    """Prefill token_ids [T] of cache row `row` into slots first .. first + T - 1; the final layer's hidden
    state [1, hidden] of the last position (before the final norm). Runs under the caller's grad mode."""
    length = token_ids.shape[0]
    chunk = prefill_chunk(token_ids.device, length, chunk)
    tokens = token_ids[None]
    for begin in range(0, length, chunk):
        end = min(length, begin + chunk)
        hidden = stack.embed(tokens[:, begin:end])
        cos, sin = stack.rotary_tables(hidden, torch.arange(begin, end, device=token_ids.device)[None])
        layer_input = [hidden]

        def attend(layer, q, k, v, begin=begin, end=end, layer_input=layer_input):
            cache.write_row(layer, row, first + begin, k, v)
            keys = cache.keys[layer][row : row + 1, :, first : first + end]
            values = cache.values[layer][row : row + 1, :, first : first + end]
            attended = causal_attention(q, keys, values, stack.scaling)
            if observer is not None:
                observer(layer, begin, layer_input[0], q, keys, attended)
            return attended

        for layer in range(stack.num_layers):
            layer_input[0] = hidden
            hidden = stack.layer(layer, hidden, cos, sin, attend)
    return hidden[0, -1:]
