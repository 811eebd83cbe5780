"""The training forward of LycheeDecode's head-role learning: every head mixes full and sparse attention.

For the answer segment (many query tokens over a densely prefilled cache), each attention layer computes both
the full output and a sparse output, and mixes them per KV head: `O = z * O_full + (1 - z) * O_sparse` (z of a
KV head is broadcast to its group of query heads). Layer 0 is always full.

The sparse token set of layer l comes from layer l-1's full logits (its own, computed in the same student
forward), which is how the paper trains it. Our exact rule (recorded with the roles):
- Scores: per query head, its raw logit `q · k` before softmax, as the official training code scores them
  (default, `granularity="query_head"`); query head i of layer l attends over the keys query head i of layer
  l-1 chose. `granularity="kv_group"` (the ablation, and what earlier runs used) scores per KV head with the
  group's mean query `q̄ · k`, the score the retrieval heads use at decode time (SPEC §2).
- Sharing, training vs decoding (as in the official code): in training every layer from 1 on reads the sets the
  layer just before it chose, whatever its gates, because the roles are what is being learned; at decode time
  only retrieval heads choose (group-mean query, per KV head) and a sparse head reads slot h, filled by the
  nearest earlier retrieval head with KV index h (methods/lychee.py).
- Per query row (one answer-segment token at absolute position p, which sees keys 0..p): keep
  int(ratio' * (p + 1)) keys with ratio' = 1 - (1 - ratio) (the official code's truncation of (1 - r) L with its
  sparsity r = 0.7, methods/lychee.py `ratio_keep_factor`), always including the first `sink` keys and the
  `recent` keys ending at p (itself included); the rest of the budget goes to the highest-scoring other visible
  keys. When sink + recent exceed the budget, exactly sink + recent are kept. The official code sizes every row
  by the whole key length S and puts the recent window at the end of S, so a segment row more than `recent`
  tokens before the end has no recent window there and spends part of its budget on keys it cannot see; we size
  and place each row's window as that row would be at decode time (the last row is the same in both).
The selection is discrete and runs without gradients; gradients reach z through the mixing only.

This plugs into transformers through its attention-function interface (`lychee_bench_train`, selected with
`set_attn_implementation` by `training_attention`), never by replacing a forward; the per-forward state
travels as the `lychee_train_state` keyword, like the harness's `lychee_state`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lychee_bench.harness.attention import attention_implementation, cache_keyword
from lychee_bench.harness.forward import LayerStack
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.prefill import prefill_row
from lychee_bench.methods.lychee import ratio_keep_factor

TRAIN_ATTENTION_NAME = "lychee_bench_train"
MODES = ("hybrid", "sparse", "full")
SELECTION_SCORES = ("query_head", "kv_group")  # SparseConfig.granularity: the official per-query-head, or q̄ · k


@dataclass(frozen=True)
class SparseConfig:
    """How the training-time sparse heads choose their keys (paper: 30%, 128 sink, 256 recent)."""

    ratio: float = 0.3  # the fraction kept (the official sparse_radio_train 0.7 is 1 - ratio)
    sink: int = 128
    recent: int = 256
    granularity: str = "query_head"  # "query_head" (each query head's q · k, official) or "kv_group" (q̄ · k)

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"sparse ratio {self.ratio} must be in (0, 1]")
        if self.sink < 0 or self.recent < 1:
            raise ValueError(f"sink={self.sink}, recent={self.recent}: need sink >= 0 and recent >= 1")
        if self.granularity not in SELECTION_SCORES:
            raise ValueError(f"granularity {self.granularity!r}: use one of {', '.join(SELECTION_SCORES)}")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "scores_from": "previous layer, raw logits before softmax"}


def _row_budgets(positions: torch.Tensor, config: SparseConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(always, extra) per query row at absolute position p: how many of its p + 1 visible keys are sink or recent
    keys, and how many more its budget floor(ratio (p + 1)) allows (at most its other visible keys).

    Elementwise in float64 on host and device alike (the official truncation, `ratio_keep_factor`), so the host
    evaluates the same numbers without reading anything back from the device.
    """
    seen = positions + 1
    between = ((positions - config.recent + 1).clamp(min=0) - seen.clamp(max=config.sink)).clamp(min=0)
    always = seen - between
    budget = torch.floor(seen.double() * ratio_keep_factor(config.ratio)).long()
    return always, (budget - always).clamp(min=0)


@dataclass(frozen=True)
class KeyPlan:
    """The part of the key selection that depends only on (q_len, kv_len) and the config, not on the scores.

    Every layer of one student forward has the same shapes, so HybridState builds this once per forward rather
    than once per layer; `top`, `kept` and `visible` are host integers, so no layer waits for the device.
    """

    always: torch.Tensor  # [q, S] bool: each row's visible sink and recent keys
    excluded: torch.Tensor  # [q, S] bool: keys that are not candidates for the scored part (invisible or always)
    take: torch.Tensor  # [q, top] bool: a row keeps its r-th best candidate when r < its extra budget
    top: int  # the largest extra budget of any row (0: no row keeps a scored key)
    kept: int  # (query row, key) pairs kept per head
    visible: int  # (query row, key) pairs visible per head

    @classmethod
    def build(cls, q_len: int, kv_len: int, config: SparseConfig, device: torch.device) -> KeyPlan:
        """For query rows at the last q_len of kv_len positions (no padding)."""
        host_always, host_extra = _row_budgets(torch.arange(kv_len - q_len, kv_len), config)
        top = int(host_extra.max())
        positions = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        columns = torch.arange(kv_len, device=device)[None, :]
        visible = columns <= positions
        always = visible & ((columns < config.sink) | (columns > positions - config.recent))
        _, extra = _row_budgets(positions[:, 0], config)
        take = torch.arange(top, device=device)[None, :] < extra[:, None]
        kept = int((host_always + host_extra).sum())
        return cls(always, ~visible | always, take, top, kept, q_len * kv_len - q_len * (q_len - 1) // 2)


@dataclass
class HybridState:
    """Carried through one student forward. `z` [num_layers, num_kv_heads] in [0, 1] (float32, may need grad).

    mode "hybrid" mixes by z; "sparse" uses only the sparse output after layer 0 (the z = 0 limit); "full" only
    the full output (the z = 1 limit). `keep` is the mask handed from one layer to the next. `kept` and
    `visible` count (query row, key) pairs per head over the sparse layers, as host integers: a row keeps
    exactly its sink and recent keys plus its extra budget (select_keys' contract, checked by the tests), so
    counting needs no device reduction and no sync.
    """

    z: torch.Tensor | None
    config: SparseConfig
    mode: str = "hybrid"
    keep: torch.Tensor | None = None
    kept: int = 0
    visible: int = 0
    plans: dict[tuple[int, int, torch.device], KeyPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: use one of {MODES}")
        if self.mode == "hybrid" and self.z is None:
            raise ValueError("mode 'hybrid' needs the gate sample z")

    def key_plan(self, q_len: int, kv_len: int, device: torch.device) -> KeyPlan:
        """The shape-only part of the selection, built by the first layer and reused by the others."""
        key = (q_len, kv_len, device)
        if key not in self.plans:
            self.plans[key] = KeyPlan.build(q_len, kv_len, self.config, device)
        return self.plans[key]

    @property
    def kept_fraction(self) -> float:
        return self.kept / max(self.visible, 1)


@torch.no_grad()
def select_keys(
    query: torch.Tensor, key: torch.Tensor, config: SparseConfig, plan: KeyPlan | None = None
) -> torch.Tensor:
    """The keep-mask the NEXT layer's sparse heads use: [B, H, q, S] bool (H = KV heads or query heads).

    query [B, Hq, q, D] are the last q positions of the key sequence key [B, Hkv, S, D] (no padding); `plan` is
    KeyPlan.build(q, S, config, device), given by callers that reuse it. When no row keeps a scored key the
    mask is a broadcast view of the sink and recent keys.
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    plan = plan or KeyPlan.build(q_len, kv_len, config, query.device)
    shape = (batch, num_kv_heads if config.granularity == "kv_group" else num_heads, q_len, kv_len)
    if plan.top == 0:
        return plan.always.expand(shape)
    grouped = query.float().view(batch, num_kv_heads, num_heads // num_kv_heads, q_len, head_dim)
    if config.granularity == "kv_group":
        scores = torch.einsum("bhqd,bhsd->bhqs", grouped.mean(dim=2), key.float())
    else:
        scores = torch.einsum("bhgqd,bhsd->bhgqs", grouped, key.float()).reshape(shape)
    index = scores.masked_fill_(plan.excluded, float("-inf")).topk(plan.top, dim=-1).indices
    chosen = torch.zeros(shape, dtype=torch.bool, device=query.device).scatter_(-1, index, plan.take.expand_as(index))
    return chosen | plan.always


def sparse_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention over the kept keys only: [B, Hq, q, D] from a [B, Hkv or Hq, q, S] keep-mask.

    Each KV head becomes a batch entry holding its group of query heads, so a per-KV-head mask broadcasts over
    its group instead of being copied to every query head (SDPA broadcasts a mask over all heads or none).
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    out = F.scaled_dot_product_attention(
        query.reshape(batch * num_kv_heads, group, q_len, head_dim),
        key.reshape(batch * num_kv_heads, 1, kv_len, head_dim),
        value.reshape(batch * num_kv_heads, 1, kv_len, value.shape[-1]),
        attn_mask=keep.reshape(batch * num_kv_heads, -1, q_len, kv_len),
        scale=scaling,
        enable_gqa=group > 1,
    )
    return out.reshape(batch, num_heads, q_len, -1)


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
    plan = state.key_plan(query.shape[2], key.shape[2], query.device)
    state.keep = None if last else select_keys(query, key, state.config, plan)
    if previous is None:
        return full, None  # layer 0 is always full
    state.kept += plan.kept
    state.visible += plan.visible
    sparse = sparse_attention(query, key, value, previous, scaling).transpose(1, 2)  # [B, q, Hq, D]
    if state.mode == "sparse":
        return sparse.contiguous(), None
    # A KV head's z covers its group of query heads: mix on [B, q, Hkv, group, D] views.
    grouped = (*full.shape[:2], key.shape[1], -1, full.shape[-1])
    z = state.z[layer].view(1, 1, -1, 1, 1)
    mixed = z * full.float().view(grouped) + (1.0 - z) * sparse.float().view(grouped)
    return mixed.reshape(full.shape).to(full.dtype).contiguous(), None


AttentionInterface.register(TRAIN_ATTENTION_NAME, lychee_bench_train_attention)
AttentionMaskInterface.register(TRAIN_ATTENTION_NAME, sdpa_mask)


def training_attention(model: torch.nn.Module) -> AbstractContextManager[None]:
    """Route attention through the hybrid training function for the duration; always restores the original."""
    return attention_implementation(model, TRAIN_ATTENTION_NAME)


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The base model (embeddings, layers, final norm) without the LM head: its last_hidden_state is normed."""
    return getattr(model, model.base_model_prefix, model)


@torch.no_grad()
def prefill(model: torch.nn.Module, context_ids: torch.Tensor, chunk: int | None = None) -> DynamicCache:
    """Dense prefill of the context [1, ctx] by the engine's mask-free chunked prefill (harness/prefill.py; the
    chunk bounds activation memory), handed to transformers' forward as the cache of the segment passes."""
    parameter = next(model.parameters())
    length = context_ids.shape[1]
    static = StaticKVCache.for_config(model.config, 1, length, parameter.dtype, parameter.device)
    prefill_row(LayerStack(model), static, 0, context_ids[0], 0, chunk)
    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in enumerate(zip(static.keys, static.values, strict=True)):
        cache.update(keys, values, layer)
    return cache


def segment_hidden(
    model: torch.nn.Module, cache: DynamicCache, segment_ids: torch.Tensor, state: HybridState | None
) -> torch.Tensor:
    """Final hidden states (after the last norm) of the segment [1, seg] over the cache, which is left as it was.

    With a state the hybrid attention runs (gradients flow to state.z); without one, the model's own attention.
    """
    base = decoder(model)
    keyword = cache_keyword(base)
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
    """Mean over the loss tokens of the mean squared difference of the hidden vectors (float32).

    `mask` is a bool mask over the segment or the indices of its loss tokens; indices (a fixed count) spare the
    device-to-host sync that selecting by a device bool mask needs to size its result.
    """
    squared = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # [1, seg]
    return squared[:, mask].mean()
