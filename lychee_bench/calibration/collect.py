"""One dense pass per calibration prompt, reduced to cross-layer similarity of top-k token sets.

For the last `queries` tokens of each prompt, every layer's post-softmax attention is recorded. A top-k set is
the k keys with the largest probability. The similarity of layer a's set to layer j is Kascade's attention-mass
recall: the probability mass of layer j that a's set captures, divided by the mass j's own top-k captures (1 when
the sets agree). Kept per prompt:
- per KV head (probabilities summed over the group's query heads; Kascade's sets): recall[a, j, h_j, h_a], the
  minimum over the queries (Kascade's `select_layers` takes the worst query), averaged over prompts;
- per query head with the same head index (TidalDecode's sets; top-k by probability = top-k by logit):
  recall_query_heads[a, j], the mean over queries and heads, averaged over prompts;
- layer importance (Kascade): 1 - cos(x, x + attention(x)) of the residual stream x entering the layer,
  averaged over positions and prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lychee_bench.harness.forward import LayerStack
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.prefill import prefill_row


@dataclass
class PromptRecord:
    """What one prompt's dense pass leaves: per layer the probabilities [Hq, n, S] of the last n queries over
    all S keys (causal: a query's later keys hold 0), and the importance 1 - cos(x, x + attention(x))."""

    probabilities: list[torch.Tensor]
    importance: torch.Tensor  # [L]


@torch.no_grad()
def record_prompt(stack: LayerStack, ids: list[int], queries: int, chunk: int | None = None) -> PromptRecord:
    """One dense pass of a prompt through the engine's chunked prefill (harness/prefill.py), observed per layer.

    The attention's probabilities are recomputed in float32 for the last `queries` positions only (whichever
    chunks they fall in); importance is averaged over every position of the prompt.
    """
    weights = stack.layers
    device = weights[0].qkv.device
    length = len(ids)
    n = min(queries, length)
    cache = StaticKVCache.for_config(stack.config, 1, length, weights[0].qkv.dtype, device)
    probabilities = [torch.zeros(stack.num_heads, n, length) for _ in weights]
    importance = torch.zeros(len(weights), dtype=torch.float64)

    def observe(layer, begin, layer_input, query, keys, attended):
        tokens = query.shape[2]
        w = weights[layer]
        projected = attended.transpose(1, 2).reshape(1, tokens, -1) @ w.out.T
        if w.out_bias is not None:
            projected = projected + w.out_bias
        x = layer_input.float()
        cosine = F.cosine_similarity(x, x + projected.float(), dim=-1)
        importance[layer] += float((1 - cosine).sum())
        first = max(begin, length - n)  # the first recorded query position in this chunk
        if first >= begin + tokens:
            return
        mine = query[0, :, first - begin :].float()  # [Hq, m, D]
        group = stack.num_heads // keys.shape[1]
        logits = torch.einsum("hmd,hsd->hms", mine, keys[0].float().repeat_interleave(group, 0)) * stack.scaling
        position = torch.arange(keys.shape[2], device=device)
        seen = position[None, :] <= torch.arange(first, begin + tokens, device=device)[:, None]
        logits = logits.masked_fill(~seen[None], float("-inf"))
        rows = slice(first - (length - n), begin + tokens - (length - n))
        probabilities[layer][:, rows, : keys.shape[2]] = torch.softmax(logits, dim=-1).cpu()

    prefill_row(stack, cache, 0, torch.tensor(ids, device=device), 0, chunk, observe)
    return PromptRecord(probabilities, (importance / length).float())


def topk_mask(probabilities: torch.Tensor, k: int) -> torch.Tensor:
    """Float 0/1 mask of the k largest entries along the last dim."""
    index = torch.topk(probabilities, min(k, probabilities.shape[-1]), dim=-1).indices
    return torch.zeros_like(probabilities).scatter_(-1, index, 1.0)


@dataclass
class SetStatistics:
    recall: torch.Tensor  # [L, L, Hkv, Hkv]: [anchor a, layer j, head of j, head of a]; a <= j filled
    recall_query_heads: torch.Tensor  # [L, L]: [selecting layer a, layer j], same query head; a <= j filled
    importance: torch.Tensor  # [L]
    topk: int
    samples: int


def prompt_statistics(probabilities: list[torch.Tensor], num_kv_heads: int, k: int) -> tuple[torch.Tensor, ...]:
    """Per-layer probabilities [Hq, n, S] of one prompt -> (recall [L, L, Hkv, Hkv], per query head [L, L])."""
    num_layers = len(probabilities)
    num_heads, n, length = probabilities[0].shape
    pooled = [p.view(num_kv_heads, num_heads // num_kv_heads, n, length).sum(1) for p in probabilities]
    kv_sets = [topk_mask(p, k) for p in pooled]
    q_sets = [topk_mask(p, k) for p in probabilities]
    kv_own = [(p * s).sum(-1) for p, s in zip(pooled, kv_sets, strict=True)]  # [Hkv, n]
    q_own = [(p * s).sum(-1) for p, s in zip(probabilities, q_sets, strict=True)]  # [Hq, n]
    recall = torch.zeros(num_layers, num_layers, num_kv_heads, num_kv_heads)
    recall_q = torch.zeros(num_layers, num_layers)
    for a in range(num_layers):
        for j in range(a, num_layers):
            captured = torch.einsum("hns,gns->hgn", pooled[j], kv_sets[a])  # [Hkv of j, Hkv of a, n]
            recall[a, j] = (captured / kv_own[j][:, None, :]).amin(-1)
            recall_q[a, j] = ((probabilities[j] * q_sets[a]).sum(-1) / q_own[j]).mean()
    return recall, recall_q


def collect_statistics(
    model: torch.nn.Module,
    prompts: list[list[int]],
    queries: int,
    k: int,
    progress: bool = True,
    prefill_chunk: int | None = None,
) -> SetStatistics:
    """Run each prompt densely (batch 1, the engine's prefill) and average the per-prompt statistics."""
    config = model.config
    num_layers, num_kv_heads = config.num_hidden_layers, config.num_key_value_heads
    stack = LayerStack(model)
    recall = torch.zeros(num_layers, num_layers, num_kv_heads, num_kv_heads)
    recall_q = torch.zeros(num_layers, num_layers)
    importance = torch.zeros(num_layers)
    for ids in tqdm(prompts, desc="calibrate", unit="prompt", disable=not progress):
        record = record_prompt(stack, ids, queries, prefill_chunk)
        prompt_recall, prompt_recall_q = prompt_statistics(record.probabilities, num_kv_heads, k)
        recall += prompt_recall
        recall_q += prompt_recall_q
        importance += record.importance
    count = len(prompts)
    return SetStatistics(recall / count, recall_q / count, importance / count, k, count)
