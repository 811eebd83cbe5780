"""The training forward of LycheeDecode's head-role learning: every head mixes full and sparse attention.

For the answer segment (many query tokens over a densely prefilled cache), each attention layer computes both
the full output and a sparse output, and mixes them per KV head: `O = z * O_full + (1 - z) * O_sparse` (z of a
KV head is broadcast to its group of query heads). Layer 0 is always full.

The sparse token set of layer l comes from layer l-1's full logits (its own, computed in the same student
forward), which is how the paper trains it. Our exact rule (the paper leaves it loose; recorded here):
- Scores: per KV head, the raw logit of the group's mean query, `q̄ · k` (= the mean of the group's logits),
  before softmax: the score LycheeDecode's retrieval heads use at decode time (SPEC §2). The public training
  code scores each query head separately; `granularity="query_head"` does that instead.
- Per query row (one answer-segment token at absolute position p, which sees keys 0..p): keep
  `floor(ratio * (p + 1))` keys, always including the first `sink` keys and the `recent` keys ending at p
  (itself included); the rest of the budget goes to the highest-scoring other visible keys. When sink + recent
  exceed the budget, exactly sink + recent are kept. The mask of layer l-1's KV head h is used by layer l's KV
  head h (the slot semantics of decoding).
The selection is discrete and runs without gradients; gradients reach z through the mixing only.

This plugs into transformers through its attention-function interface (`lychee_bench_train`, selected with
`set_attn_implementation` by `training_attention`), never by replacing a forward; the per-forward state
travels as the `lychee_train_state` keyword, like the harness's `lychee_state`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TRAIN_ATTENTION_NAME = "lychee_bench_train"
MODES = ("hybrid", "sparse", "full")


@dataclass(frozen=True)
class SparseConfig:
    """How the training-time sparse heads choose their keys (paper: 30%, 128 sink, 256 recent)."""

    ratio: float = 0.3
    sink: int = 128
    recent: int = 256
    granularity: str = "kv_group"  # "kv_group" (q̄ · k per KV head) or "query_head" (each query head's q · k)

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"sparse ratio {self.ratio} must be in (0, 1]")
        if self.sink < 0 or self.recent < 1:
            raise ValueError(f"sink={self.sink}, recent={self.recent}: need sink >= 0 and recent >= 1")
        if self.granularity not in ("kv_group", "query_head"):
            raise ValueError(f"granularity {self.granularity!r}: use 'kv_group' or 'query_head'")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "scores_from": "previous layer, raw logits before softmax"}


@dataclass
class HybridState:
    """Carried through one student forward. `z` [num_layers, num_kv_heads] in [0, 1] (float32, may need grad).

    mode "hybrid" mixes by z; "sparse" uses only the sparse output after layer 0 (the z = 0 limit); "full" only
    the full output (the z = 1 limit). `keep` is the mask handed from one layer to the next.
    """

    z: torch.Tensor | None
    config: SparseConfig
    mode: str = "hybrid"
    keep: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=lambda: {"kept": 0.0, "visible": 0.0})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: use one of {MODES}")
        if self.mode == "hybrid" and self.z is None:
            raise ValueError("mode 'hybrid' needs the gate sample z")

    @property
    def kept_fraction(self) -> float:
        return self.stats["kept"] / max(self.stats["visible"], 1.0)


@torch.no_grad()
def select_keys(query: torch.Tensor, key: torch.Tensor, config: SparseConfig) -> torch.Tensor:
    """The keep-mask the NEXT layer's sparse heads use: [B, H, q, S] bool (H = KV heads or query heads).

    query [B, Hq, q, D] are the last q positions of the key sequence key [B, Hkv, S, D] (no padding).
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    grouped = query.float().view(batch, num_kv_heads, group, q_len, head_dim)
    if config.granularity == "kv_group":
        scores = torch.einsum("bhqd,bhsd->bhqs", grouped.mean(dim=2), key.float())
    else:
        scores = torch.einsum("bhgqd,bhsd->bhgqs", grouped, key.float()).reshape(batch, num_heads, q_len, kv_len)
    device = query.device
    positions = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # [q, 1] absolute query positions
    columns = torch.arange(kv_len, device=device)[None, :]
    visible = columns <= positions
    always = visible & ((columns < config.sink) | (columns > positions - config.recent))
    budget = torch.floor(config.ratio * (positions[:, 0] + 1).float()).long()
    extra = (budget - always.sum(dim=-1)).clamp(min=0)  # [q]
    keep = always.expand_as(scores).clone()
    top = int(extra.max())
    if top > 0:
        candidates = scores.masked_fill(~(visible & ~always), float("-inf"))
        index = candidates.topk(top, dim=-1).indices
        take = (torch.arange(top, device=device)[None, :] < extra[:, None]).expand_as(index)
        keep |= torch.zeros_like(keep).scatter_(-1, index, take)
    return keep


def sparse_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention over the kept keys only: [B, Hq, q, D] from a [B, Hkv or Hq, q, S] keep-mask."""
    batch, num_heads, q_len, _ = query.shape
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    if keep.shape[1] == num_kv_heads and group > 1:
        keep = keep[:, :, None].expand(batch, num_kv_heads, group, q_len, keep.shape[-1])
        keep = keep.reshape(batch, num_heads, q_len, -1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=scaling, enable_gqa=group > 1)


def lychee_bench_train_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lychee_train_state: HybridState | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function; without a state (prefill, teacher) it is plain SDPA."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    full, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    state = lychee_train_state
    if state is None or state.mode == "full":
        return full, None
    layer = module.layer_idx
    previous = None if layer == 0 else state.keep  # layer 0 starts every forward afresh
    last = layer == module.config.num_hidden_layers - 1
    state.keep = None if last else select_keys(query, key, state.config)
    if previous is None:
        return full, None  # layer 0 is always full
    sparse = sparse_attention(query, key, value, previous, scaling).transpose(1, 2)  # [B, q, Hq, D]
    state.stats["kept"] += float(previous.sum()) / previous.shape[1]
    state.stats["visible"] += float(query.shape[2] * key.shape[2] - query.shape[2] * (query.shape[2] - 1) / 2)
    if state.mode == "sparse":
        return sparse.contiguous(), None
    group = query.shape[1] // key.shape[1]
    z = state.z[layer].repeat_interleave(group).view(1, 1, -1, 1)
    mixed = z * full.float() + (1.0 - z) * sparse.float()
    return mixed.to(full.dtype).contiguous(), None


AttentionInterface.register(TRAIN_ATTENTION_NAME, lychee_bench_train_attention)
AttentionMaskInterface.register(TRAIN_ATTENTION_NAME, sdpa_mask)


@contextmanager
def training_attention(model: torch.nn.Module) -> Iterator[None]:
    """Route attention through the hybrid training function for the duration; always restores the original."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(TRAIN_ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The base model (embeddings, layers, final norm) without the LM head: its last_hidden_state is normed."""
    return getattr(model, model.base_model_prefix, model)


def _cache_keyword(module: torch.nn.Module) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(module).forward).parameters else "past_key_values"


@torch.no_grad()
def prefill(model: torch.nn.Module, context_ids: torch.Tensor, chunk: int | None = None) -> DynamicCache:
    """Dense prefill of the context [1, ctx] (optionally in chunks to bound activation memory)."""
    base = decoder(model)
    keyword = _cache_keyword(base)
    cache = DynamicCache(config=model.config)
    step = chunk or context_ids.shape[1]
    for start in range(0, context_ids.shape[1], step):
        base(input_ids=context_ids[:, start : start + step], use_cache=True, **{keyword: cache})
    return cache


def segment_hidden(
    model: torch.nn.Module, cache: DynamicCache, segment_ids: torch.Tensor, state: HybridState | None
) -> torch.Tensor:
    """Final hidden states (after the last norm) of the segment [1, seg] over the cache, which is left as it was.

    With a state the hybrid attention runs (gradients flow to state.z); without one, the model's own attention.
    """
    base = decoder(model)
    keyword = _cache_keyword(base)
    try:
        if state is None:
            with torch.no_grad():
                return base(input_ids=segment_ids, use_cache=True, **{keyword: cache}).last_hidden_state
        with training_attention(model):
            out = base(input_ids=segment_ids, use_cache=True, lychee_train_state=state, **{keyword: cache})
        return out.last_hidden_state
    finally:
        cache.crop(-segment_ids.shape[1])


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens of the mean squared difference of the hidden vectors (float32)."""
    squared = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # [1, seg]
    return squared[:, mask].mean()
