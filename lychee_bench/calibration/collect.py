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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lychee_bench.harness.attention import attention_implementation

ATTENTION_NAME = "lychee_bench_calibration"


def recording_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    calibration_record: dict[int, torch.Tensor] | None = None,
    calibration_queries: int = 1,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Dense SDPA, plus the probabilities [Hq, n, S] of the last n queries (batch 1, no padding) per layer."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if calibration_record is not None:
        num_heads, length = query.shape[1], key.shape[2]
        n = min(calibration_queries, query.shape[2])
        last = query[0, :, -n:].float()  # [Hq, n, D]
        keys = key[0].float().repeat_interleave(num_heads // key.shape[1], dim=0)  # [Hq, S, D]
        logits = torch.einsum("hnd,hsd->hns", last, keys) * scaling
        position = torch.arange(length, device=key.device)
        visible = position[None, :] <= (length - n + torch.arange(n, device=key.device))[:, None]  # causal
        logits = logits.masked_fill(~visible[None], float("-inf"))
        calibration_record[module.layer_idx] = torch.softmax(logits, dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)


AttentionInterface.register(ATTENTION_NAME, recording_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def recording(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Route attention through `recording_attention` and collect each layer's importance; always restores."""
    importance: list[torch.Tensor] = [torch.zeros(()) for _ in model.model.layers]
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(model.model.layers):

        def keep_input(module, args, kwargs, index=index):
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        def score(module, args, output, index=index):
            x = inputs.pop(index).float()
            attended = output[0] if isinstance(output, tuple) else output
            importance[index] = 1 - F.cosine_similarity(x, x + attended.float(), dim=-1).mean()

        handles.append(layer.register_forward_pre_hook(keep_input, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(score))
    try:
        with attention_implementation(model, ATTENTION_NAME):
            yield importance
    finally:
        for handle in handles:
            handle.remove()


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


@torch.no_grad()
def collect_statistics(
    model: torch.nn.Module, prompts: list[list[int]], queries: int, k: int, progress: bool = True
) -> SetStatistics:
    """Run each prompt densely (batch 1) and average the per-prompt statistics."""
    config = model.config
    num_layers, num_kv_heads = config.num_hidden_layers, config.num_key_value_heads
    device = next(model.parameters()).device
    recall = torch.zeros(num_layers, num_layers, num_kv_heads, num_kv_heads)
    recall_q = torch.zeros(num_layers, num_layers)
    importance = torch.zeros(num_layers)
    for ids in tqdm(prompts, desc="calibrate", unit="prompt", disable=not progress):
        record: dict[int, torch.Tensor] = {}
        with recording(model) as layer_importance:
            model.model(  # the decoder stack only: the LM head's logits are not needed
                torch.tensor([ids], device=device),
                use_cache=False,
                calibration_record=record,
                calibration_queries=queries,
            )
        probabilities = [record[layer].cpu() for layer in range(num_layers)]
        prompt_recall, prompt_recall_q = prompt_statistics(probabilities, num_kv_heads, k)
        recall += prompt_recall
        recall_q += prompt_recall_q
        importance += torch.stack([value.cpu() for value in layer_importance])
    count = len(prompts)
    return SetStatistics(recall / count, recall_q / count, importance / count, k, count)
