"""What a user would run instead: stock transformers' decode step, timed beside ours (issue 14, SPEC §6).

The model's own forward with a `DynamicCache` and SDPA attention, eager, one token per row at the same context:
what `model.generate` does per step. It takes over the bench's static cache (its keys and values move into the
DynamicCache layer by layer, each static layer released as it goes, so memory never holds two copies) and
crops the cache back after every step so the context does not drift.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from lychee_bench.harness.attention import attention_implementation, cache_keyword
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.kernels.timing import time_cuda


@torch.inference_mode()
def take_over(model: torch.nn.Module, cache: StaticKVCache, length: int) -> DynamicCache:
    """A DynamicCache holding the first `length` slots of every layer of `cache`; `cache` is emptied."""
    dynamic = DynamicCache(config=model.config)
    for layer in range(len(cache.keys)):
        dynamic.update(cache.keys[layer][:, :, :length], cache.values[layer][:, :, :length], layer)
        cache.keys[layer] = cache.keys[layer][:, :, :0].clone()  # release the static layer
        cache.values[layer] = cache.values[layer][:, :, :0].clone()
    return dynamic


def stock_decode_step(model: torch.nn.Module, cache: StaticKVCache, context: int, reps: int, warmup: int) -> dict:
    """Median time of transformers' decode step at `context` (CUDA events); empties `cache`."""
    batch = cache.batch
    device = cache.keys[0].device
    dynamic = take_over(model, cache, context - 1)
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
    positions = torch.full((batch, 1), context - 1, dtype=torch.long, device=device)
    keyword = cache_keyword(model)

    def step() -> Any:
        out = model(input_ids=tokens, position_ids=positions, use_cache=True, logits_to_keep=1, **{keyword: dynamic})
        dynamic.crop(context - 1)
        return out

    with torch.inference_mode(), attention_implementation(model, "sdpa"):
        timing = time_cuda(step, reps, warmup=warmup)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    return {**timing.as_dict("decode"), "captured": False, "peak_memory_gib": peak / 2**30}
