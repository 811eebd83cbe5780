"""Triton kernels for one LycheeDecode decode layer (LycheeDecode, arXiv 2602.04541).

Three steps per layer, matching :func:`lychee_bench.kernels.reference.lychee_decode_layer_reference`:

1. :func:`attention_partials` — ONE split-KV ("flash-decoding") launch for all KV heads of the layer, over the
   flat work list of :mod:`lychee_bench.kernels.lychee_plan`. A retrieval item streams a contiguous range of
   the whole cache and, from the same ``q·K`` product it needs for attention, also writes each block's
   selection score (``max_t q̄·k_t = max_t mean_g q_g·k_t``, raw logits), so K is read once, not twice as in
   the public code's separate scoring kernel. A sparse item streams the blocks listed in its slot. Each item
   leaves a partial (running max, sum of exponentials, unnormalised output) for its G query heads.
2. :func:`merge_partials` — log-sum-exp combine of each (sequence, KV head)'s partials into the output.
3. :func:`select_retrieval_blocks` — ``torch.topk`` over the retrieval heads' block scores; the winners are
   written into the heads' slots for the sparse heads of later layers.

Retrieval and sparse heads of one layer are independent (a sparse head reads a slot written by an *earlier*
layer), which is what lets them share one balanced launch.

The kernels run under ``TRITON_INTERPRET=1`` on CPU. The interpreter's ``tl.dot`` mishandles bfloat16 (it
multiplies the raw bits), so there the dot operands are upcast to float32; on a GPU bf16/fp16 go to the
tensor cores with fp32 accumulation and fp32 inputs use exact ("ieee") products.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lychee_bench.kernels.lychee_plan import (
    BLOCK_SIZE,
    SUPPORTED_HEAD_DIMS,
    DecodePlan,
    plan_decode_work,
)

LOG2E = 1.4426950408889634
# Launch knobs of the small kernels (the benchmark sweeps them): few warps keep the top-k's 32 dependent
# reductions cheap; the merge reads MERGE_TILE partials per step.
TOPK_WARPS = 4
MERGE_TILE = 64
MERGE_WARPS = 4

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _attention_partials_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    starts_ptr,
    slot_ptr,
    items_ptr,
    retrieval_row_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    scores_ptr,
    scale_log2e,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_sb,
    stride_sh,
    stride_cb,
    stride_cr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    item = tl.program_id(0)
    b = tl.load(items_ptr + item * 5 + 0).to(tl.int64)
    h = tl.load(items_ptr + item * 5 + 1).to(tl.int64)
    first = tl.load(items_ptr + item * 5 + 2)
    count = tl.load(items_ptr + item * 5 + 3)
    retrieval_flag = tl.load(items_ptr + item * 5 + 4)
    is_retrieval = retrieval_flag != 0
    length = tl.load(lengths_ptr + b)
    # Left-padded caches: the sequence's first real token sits at `start`; blocks count from there.
    start = tl.load(starts_ptr + b).to(tl.int64)
    score_row = tl.load(retrieval_row_ptr + h).to(tl.int64)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    t = tl.arange(0, BLOCK)
    g_valid = g < G
    # Padding rows are zero: they add nothing to the group sum that gives q̄·k.
    q = tl.load(q_ptr + b * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :], mask=g_valid[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh + start * stride_ks
    v_base = v_ptr + b * stride_vb + h * stride_vh + start * stride_vs
    slot_base = slot_ptr + b * stride_sb + h * stride_sh
    score_base = scores_ptr + b * stride_cb + score_row * stride_cr

    # A finite stand-in for -inf as the running max: exp2(-inf - -inf) would be NaN for a chunk with no token.
    m_i = tl.full([G_PAD], -1.0e30, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for j in range(first, first + count):
        # Retrieval items walk the cache in order; sparse items look their block up in the slot. Branch-free,
        # so the loop body is the same for both kinds.
        listed = tl.load(slot_base + j, mask=retrieval_flag == 0, other=0)
        block = tl.where(is_retrieval, j, listed)
        pos = block * BLOCK + t
        # A -1 (padding) entry gives negative positions. Both sides are tensors on purpose: the interpreter
        # turns `tensor & scalar` into an int mask that tl.load refuses.
        valid = (pos >= 0) & (pos < length)
        k = tl.load(k_base + pos[:, None] * stride_ks + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vs + d[None, :], mask=valid[:, None], other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # [G_PAD, BLOCK] raw logits

        block_score = tl.max(tl.where(valid, tl.sum(qk, axis=0) / G, float("-inf")), axis=0)
        tl.store(score_base + block, block_score, mask=is_retrieval)

        s = tl.where(valid[None, :], qk * scale_log2e, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # Probabilities are rounded to the cache dtype for the tensor-core product, as flash attention does.
        p_v = p.to(v.dtype)
        if DOT_IN_FP32:
            p_v = p_v.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=INPUT_PRECISION)
        m_i = m_new

    part = item * G + g
    tl.store(part_m_ptr + part, m_i, mask=g_valid)
    tl.store(part_l_ptr + part, l_i, mask=g_valid)
    tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=g_valid[:, None])


@triton.jit
def _merge_partials_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    offsets_ptr,
    counts_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    HKV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
):
    # One program per (sequence, query head). A retrieval head of a long sequence has hundreds of partials;
    # reading them TILE at a time keeps this a few wide loads instead of a long chain of small dependent ones.
    pid = tl.program_id(0)
    b = pid // (HKV * G)
    head = pid % (HKV * G)
    h = head // G
    g = head % G
    first = tl.load(offsets_ptr + b * HKV + h)
    count = tl.load(counts_ptr + b * HKV + h)
    c = tl.arange(0, TILE)
    d = tl.arange(0, D)

    m = tl.max(tl.full([TILE], -1.0e30, tl.float32), axis=0)
    l_sum = tl.sum(tl.zeros([TILE], tl.float32), axis=0)
    acc = tl.zeros([D], tl.float32)
    for start in range(0, count, TILE):
        present = start + c < count
        part = (first + start + c) * G + g
        m_c = tl.load(part_m_ptr + part, mask=present, other=-1.0e30)
        l_c = tl.load(part_l_ptr + part, mask=present, other=0.0)
        acc_c = tl.load(part_acc_ptr + part[:, None] * D + d[None, :], mask=present[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(m_c, axis=0))
        keep = tl.exp2(m - m_new)
        take = tl.exp2(m_c - m_new)
        l_sum = l_sum * keep + tl.sum(l_c * take, axis=0)
        acc = acc * keep + tl.sum(acc_c * take[:, None], axis=0)
        m = m_new
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _top_blocks_kernel(
    scores_ptr,
    slots_ptr,
    heads_ptr,
    num_blocks,
    slot_width,
    stride_cb,
    stride_cr,
    stride_sb,
    stride_sh,
    NB_PAD: tl.constexpr,
    W_PAD: tl.constexpr,
):
    # One program per (sequence, retrieval head): the top `slot_width` finite block scores, written in block
    # order straight into the head's slot row (-1 after them). torch.topk costs ~30 us here whatever the size;
    # this is a 32-step binary search for the k-th largest score on order-preserving integer keys, then one
    # prefix sum to place the winners (ties at the cut-off go to the lowest block indices).
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1)
    h = tl.load(heads_ptr + r).to(tl.int64)
    i = tl.arange(0, NB_PAD)
    x = tl.load(scores_ptr + b * stride_cb + r * stride_cr + i, mask=i < num_blocks, other=float("-inf"))
    finite = x > float("-inf")
    bits = x.to(tl.int32, bitcast=True)
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)  # larger float -> larger integer
    k = tl.minimum(slot_width, tl.sum(finite.to(tl.int32), axis=0))
    lo = tl.full([], -2147483648, tl.int64)  # count(key >= lo) >= k always holds
    hi = tl.full([], 2147483647, tl.int64)
    for _ in range(32):
        mid = lo + (hi - lo + 1) // 2
        enough = tl.sum(((key >= mid) & finite).to(tl.int32), axis=0) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    greater = (key > lo) & finite
    ties = (key == lo) & finite
    tie_rank = tl.cumsum(ties.to(tl.int32), axis=0)
    chosen = greater | (ties & (tie_rank <= k - tl.sum(greater.to(tl.int32), axis=0)))
    place = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
    row = slots_ptr + b * stride_sb + h * stride_sh
    tl.store(row + place, i.to(tl.int32), mask=chosen)
    w = tl.arange(0, W_PAD)
    tl.store(row + w, tl.full([W_PAD], -1, tl.int32), mask=(w >= k) & (w < slot_width))


@dataclass
class DecodeBuffers:
    """Scratch and output tensors of one layer call; allocate once and reuse (e.g. inside a CUDA graph)."""

    part_acc: torch.Tensor  # [n_items, G, D] fp32
    part_m: torch.Tensor  # [n_items, G] fp32, running max in log2 units
    part_l: torch.Tensor  # [n_items, G] fp32
    scores: torch.Tensor  # [B, R, NB] fp32 block scores of the retrieval heads
    out: torch.Tensor  # [B, Hq, D] in q's dtype

    @classmethod
    def allocate(cls, plan: DecodePlan, q: torch.Tensor) -> DecodeBuffers:
        batch, hq, dim = q.shape
        group = hq // plan.num_kv_heads
        f32 = dict(device=q.device, dtype=torch.float32)
        return cls(
            part_acc=torch.empty(plan.num_items, group, dim, **f32),
            part_m=torch.empty(plan.num_items, group, **f32),
            part_l=torch.empty(plan.num_items, group, **f32),
            scores=torch.empty(batch, plan.num_retrieval, plan.num_blocks, **f32),
            out=torch.empty_like(q),
        )


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: DecodePlan) -> int:
    """Refuse shapes the kernels do not handle, naming the bad value; returns the group size G."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"expected q [B, Hq, D] and k/v caches [B, Hkv, S_max, D] of one shape, got {tuple(q.shape)}, "
            f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    batch, hq, dim = q.shape
    if k_cache.shape[0] != batch or k_cache.shape[3] != dim or hq % k_cache.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache {tuple(k_cache.shape)}")
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"dtypes q={q.dtype} k={k_cache.dtype} v={v_cache.dtype}; need one of {SUPPORTED_DTYPES}")
    if (plan.batch, plan.num_kv_heads, plan.block_size) != (batch, k_cache.shape[1], BLOCK_SIZE):
        raise ValueError("the plan was built for a different batch, KV-head count or block size")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache)):
        raise ValueError("q, k_cache and v_cache need a contiguous last (head) dimension")
    return hq // k_cache.shape[1]


def attention_partials(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    slot_block_idx: torch.Tensor | None,
    plan: DecodePlan,
    buffers: DecodeBuffers,
    scale: float,
    *,
    starts: torch.Tensor | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> None:
    """Launch the split-KV kernel over ``plan.items``: fills the partials and the retrieval block scores.

    Block scores for blocks past a sequence's length are not visited, so the score buffer is reset to -inf
    first (a few KB per layer). ``num_warps``/``num_stages`` are GPU launch knobs (for tuning sweeps).
    """
    group = _check_inputs(q, k_cache, v_cache, plan)
    if plan.num_retrieval < plan.num_kv_heads and slot_block_idx is None:
        raise ValueError("slot_block_idx is required when the layer has sparse heads")
    if plan.num_items == 0:
        return
    buffers.scores.fill_(float("-inf"))
    slots = slot_block_idx if slot_block_idx is not None else plan.items  # never read when all heads retrieve
    scores = buffers.scores if buffers.scores.numel() else buffers.part_m  # never written without retrieval heads
    dot_in_fp32 = _interpreting() or q.dtype == torch.float32
    if starts is None:
        starts = torch.zeros_like(lengths)
    _attention_partials_kernel[(plan.num_items,)](
        q,
        k_cache,
        v_cache,
        lengths,
        starts,
        slots,
        plan.items,
        plan.retrieval_row,
        buffers.part_acc,
        buffers.part_m,
        buffers.part_l,
        scores,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        slots.stride(0) if slots.dim() == 3 else 0,
        slots.stride(1) if slots.dim() == 3 else 0,
        scores.stride(0) if scores.dim() == 3 else 0,
        scores.stride(1) if scores.dim() == 3 else 0,
        G=group,
        G_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPUs
        D=q.shape[2],
        BLOCK=plan.block_size,
        DOT_IN_FP32=dot_in_fp32,
        INPUT_PRECISION="ieee" if dot_in_fp32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )


def merge_partials(plan: DecodePlan, buffers: DecodeBuffers) -> torch.Tensor:
    """Log-sum-exp combine of each (sequence, query head)'s partials into ``buffers.out`` [B, Hq, D]."""
    out = buffers.out
    group = out.shape[1] // plan.num_kv_heads
    _merge_partials_kernel[(out.shape[0] * out.shape[1],)](
        buffers.part_acc,
        buffers.part_m,
        buffers.part_l,
        plan.offsets,
        plan.counts,
        out,
        out.stride(0),
        out.stride(1),
        HKV=plan.num_kv_heads,
        G=group,
        D=out.shape[2],
        TILE=MERGE_TILE,
        num_warps=MERGE_WARPS,
    )
    return out


def select_retrieval_blocks(scores: torch.Tensor, slot_width: int) -> torch.Tensor:
    """Top ``slot_width`` blocks per retrieval head from [B, R, NB] scores: [B, R, slot_width] int32, best first.

    Blocks scoring -inf (past the length) become -1, so a short sequence is capped at its valid blocks and its
    valid entries come first, as the plan assumes for sparse heads.
    """
    values, index = torch.topk(scores, slot_width, dim=-1)
    return torch.where(values > float("-inf"), index, -1).to(torch.int32)


def write_slots(
    slot_block_idx: torch.Tensor | None, plan: DecodePlan, chosen: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """Slot table with the retrieval heads' rows replaced by ``chosen`` and sparse heads' rows passed on.

    ``inplace`` overwrites the given table (no copy): safe within a decode step, since a layer's sparse heads
    read other rows than its retrieval heads write; the default returns a new table."""
    if slot_block_idx is None:
        slot_block_idx = torch.full(
            (plan.batch, plan.num_kv_heads, plan.slot_width), -1, dtype=torch.int32, device=chosen.device
        )
        inplace = True
    new_slots = slot_block_idx if inplace else slot_block_idx.clone()
    if plan.num_retrieval:
        new_slots[:, plan.retrieval_heads] = chosen
    return new_slots


def select_into_slots(scores: torch.Tensor, slots: torch.Tensor, plan: DecodePlan) -> torch.Tensor:
    """Top ``plan.slot_width`` blocks of each retrieval head's [B, R, NB] scores, written in place into its row of
    ``slots`` [B, Hkv, W] in block order, -1 after them (one launch; same sets as :func:`select_retrieval_blocks`
    up to ties). Returns ``slots``."""
    batch, num_retrieval, num_blocks = scores.shape
    if num_retrieval == 0:
        return slots
    _top_blocks_kernel[(batch, num_retrieval)](
        scores,
        slots,
        plan.retrieval_heads,
        num_blocks,
        plan.slot_width,
        scores.stride(0),
        scores.stride(1),
        slots.stride(0),
        slots.stride(1),
        NB_PAD=triton.next_power_of_2(num_blocks),
        W_PAD=triton.next_power_of_2(plan.slot_width),
        num_warps=TOPK_WARPS,
    )
    return slots


def lychee_decode_layer(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    is_retrieval: torch.Tensor,
    slot_block_idx: torch.Tensor | None,
    budget_blocks: int,
    scale: float,
    *,
    plan: DecodePlan | None = None,
    buffers: DecodeBuffers | None = None,
    starts: torch.Tensor | None = None,
    inplace_slots: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of a LycheeDecode decode step with the Triton kernels (block granularity, 64-token blocks).

    Same meaning as :func:`lychee_bench.kernels.reference.lychee_decode_layer_reference`: retrieval KV heads
    attend to the whole cache and write their top ``budget_blocks`` blocks into their slot; sparse KV heads
    attend to the blocks in their slot. ``slot_block_idx`` [B, Hkv, min(budget_blocks, NB)] int32 (-1 padding,
    valid entries first) may be None when every head retrieves.

    Pass a ``plan`` (from :func:`plan_decode_work`, built from host-side lengths and the same roles; it then
    decides which heads retrieve) to avoid a device-to-host copy of ``lengths``, and ``buffers`` to avoid
    allocations; both are needed for CUDA-graph capture. ``starts`` [B] (default 0) is where each sequence's
    first real token sits in a left-padded cache; lengths and blocks count from there. ``inplace_slots``
    writes the retrieval heads' picks into ``slot_block_idx`` itself instead of a copy (one launch fewer).
    Returns (out [B, Hq, D] in q's dtype, new slots [B, Hkv, min(budget_blocks, NB)] int32).
    """
    if plan is None:
        plan = plan_decode_work(lengths, is_retrieval, k_cache.shape[2], budget_blocks, q.device)
    if slot_block_idx is not None and slot_block_idx.shape != (plan.batch, plan.num_kv_heads, plan.slot_width):
        raise ValueError(
            f"slot_block_idx has shape {tuple(slot_block_idx.shape)}, expected "
            f"{(plan.batch, plan.num_kv_heads, plan.slot_width)} (batch, KV heads, min(budget_blocks, NB))"
        )
    if buffers is None:
        buffers = DecodeBuffers.allocate(plan, q)
    lengths = lengths.to(device=q.device, dtype=torch.int32)
    if starts is not None:
        starts = starts.to(device=q.device, dtype=torch.int32)
    attention_partials(q, k_cache, v_cache, lengths, slot_block_idx, plan, buffers, scale, starts=starts)
    out = merge_partials(plan, buffers)
    if plan.num_retrieval == 0:
        return out, slot_block_idx if inplace_slots else slot_block_idx.clone()
    if slot_block_idx is None:
        new_slots = torch.full((plan.batch, plan.num_kv_heads, plan.slot_width), -1, dtype=torch.int32, device=q.device)
    else:
        new_slots = slot_block_idx if inplace_slots else slot_block_idx.clone()
    select_into_slots(buffers.scores, new_slots, plan)
    return out, new_slots
