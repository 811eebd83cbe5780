"""Triton kernels for one LycheeDecode decode layer (LycheeDecode, arXiv 2602.04541).

One layer is ONE launch (:func:`lychee_decode_layer`), matching
:func:`lychee_bench.kernels.reference.lychee_decode_layer_reference`:

1. Attention — a split-KV ("flash-decoding") pass for all KV heads of the layer over the flat work list of
   :mod:`lychee_bench.kernels.lychee_plan`. A retrieval item streams a contiguous range of the whole cache and,
   from the same ``q·K`` product it needs for attention, also writes each block's selection score
   (``max_t q̄·k_t = max_t mean_g q_g·k_t``, raw logits), so K is read once, not twice as in the public code's
   separate scoring kernel. A sparse item streams the blocks listed in its slot. Each item leaves a partial
   (running max, sum of exponentials, unnormalised output) for its G query heads.
2. Merge — the last program to finish among each group of ``MERGE_GROUP`` items of a (sequence, KV head)
   merges the group's partials (log-sum-exp); the last group of the head merges the group partials and writes
   the output. "Last" is decided with an atomic ticket per group and per head (reset by its last user, so the
   buffers can be reused and captured in a CUDA graph); a barrier and acquire-release atomics order the
   partials before the ticket.
3. Top-k — the program that finishes a retrieval head then picks its top blocks (a many-way search for the
   k-th largest score on order-preserving integer keys, narrowed to [min of interleaved group maxima, max] and
   stopped as soon as exactly k scores lie above the cut) and writes them, in block order, into the head's slot
   row for the sparse heads of later layers.

Retrieval and sparse heads of one layer are independent (a sparse head reads a slot written by an *earlier*
layer), which is what lets them share one balanced launch. The three steps also exist as separate launches
(:func:`attention_partials`, :func:`merge_partials`, :func:`select_into_slots`) for the benchmark's breakdown
and for tests.

The kernels run under ``TRITON_INTERPRET=1`` on CPU (programs run one after another there, so the tickets are
exercised too). The interpreter's ``tl.dot`` mishandles bfloat16 (it multiplies the raw bits), so there the
dot operands are upcast to float32; on a GPU bf16/fp16 go to the tensor cores with fp32 accumulation and fp32
inputs use exact ("ieee") products.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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
# Launch knobs (the benchmark sweeps them). STEP_BLOCKS 64-token blocks per loop step of the attention;
# MERGE_ROWS partial rows (items x query heads) per merge load.
ATTENTION_WARPS = 4
ATTENTION_STAGES = 3
STEP_BLOCKS = 2
MERGE_ROWS = 64
SMALL_WARPS = 4  # the separate merge and top-k launches
TOPK_WAYS = 4  # cut-offs per round of the top-k search (2: binary search)
FUSED = True  # one launch per layer; False: attention, merge and top-k as three launches
# What the fused launch finishes (the benchmark's breakdown lowers it): 2 merge and top-k, 1 merge only.
FUSED_FINISH = 2

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _merge_range(
    acc_ptr,
    m_ptr,
    l_ptr,
    first,
    count,
    G: tl.constexpr,
    GM: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    d0,
    DS: tl.constexpr,
):
    """Log-sum-exp merge of partial rows ``first .. first+count-1`` ([rows, G] m and l, [rows, G, D] acc), over
    head dims ``d0 .. d0+DS-1`` (the whole head: 0 and D)."""
    p = tl.arange(0, TILE)[:, None]
    g = tl.arange(0, GM)[None, :]
    d = d0 + tl.arange(0, DS)[None, None, :]
    m = tl.full([GM], -1.0e30, tl.float32)
    l_sum = tl.zeros([GM], tl.float32)
    acc = tl.zeros([GM, DS], tl.float32)
    for start in range(0, count, TILE):
        present = (start + p < count) & (g < G)
        row = (first + start + p).to(tl.int64) * G + g
        # .cg: read from L2, where the other programs' stores landed (L1 is not coherent across SMs).
        m_c = tl.load(m_ptr + row, mask=present, other=-1.0e30, cache_modifier=".cg")
        l_c = tl.load(l_ptr + row, mask=present, other=0.0, cache_modifier=".cg")
        acc_c = tl.load(acc_ptr + row[:, :, None] * D + d, mask=present[:, :, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(m_c, axis=0))
        keep = tl.exp2(m - m_new)
        take = tl.exp2(m_c - m_new[None, :])
        l_sum = l_sum * keep + tl.sum(l_c * take, axis=0)
        acc = acc * keep[:, None] + tl.sum(acc_c * take[:, :, None], axis=0)
        m = m_new
    return m, l_sum, acc


@triton.jit
def _store_rows(acc_ptr, m_ptr, l_ptr, row, m, l_sum, acc, G: tl.constexpr, GM: tl.constexpr, D: tl.constexpr):
    g = tl.arange(0, GM)
    d = tl.arange(0, D)
    part = row.to(tl.int64) * G + g
    tl.store(m_ptr + part, m, mask=g < G)
    tl.store(l_ptr + part, l_sum, mask=g < G)
    tl.store(acc_ptr + part[:, None] * D + d[None, :], acc, mask=(g < G)[:, None])


@triton.jit
def _store_out(
    out_ptr, b, h, l_sum, acc, stride_ob, stride_oh, G: tl.constexpr, GM: tl.constexpr, d0, DS: tl.constexpr
):
    """Normalised output of KV head ``h``'s query heads, head dims ``d0 .. d0+DS-1``."""
    g = tl.arange(0, GM)
    d = d0 + tl.arange(0, DS)
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    pointers = out_ptr + b.to(tl.int64) * stride_ob + (h * G + g)[:, None] * stride_oh + d[None, :]
    tl.store(pointers, out.to(out_ptr.dtype.element_ty), mask=(g < G)[:, None])


@triton.jit
def _top_blocks(
    score_row, num_valid, slot_row, slot_width, NB_PAD: tl.constexpr, W_PAD: tl.constexpr, WAYS: tl.constexpr
):
    """The top ``slot_width`` of the first ``num_valid`` scores, written in block order into ``slot_row`` (-1 after
    them; fewer when fewer are valid). Ties at the cut-off go to the lowest block indices.

    A WAYS-ary search for the k-th largest key: each round counts the keys above WAYS evenly spaced cut-offs in
    one pass (one reduction, not WAYS dependent ones)."""
    i = tl.arange(0, NB_PAD)
    x = tl.load(score_row + i, mask=i < num_valid, other=float("-inf"), cache_modifier=".cg")
    finite = x > float("-inf")
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(finite, bits ^ ((bits >> 31) & 0x7FFFFFFF), -2147483648)  # order-preserving int32
    k = tl.minimum(slot_width, tl.sum(finite.to(tl.int32), axis=0))
    # The answer t* = max{t : count(key >= t) >= k} lies in [lo, hi]: the W_PAD >= k interleaved groups' maxima
    # are k or more keys >= their minimum (an empty group makes that minimum the smallest key, still a bound).
    lo = tl.min(tl.max(tl.reshape(key, [NB_PAD // W_PAD, W_PAD]), axis=0), axis=0).to(tl.int64)
    hi = tl.max(key, axis=0).to(tl.int64)
    found = tl.sum(((key >= lo) & finite).to(tl.int32), axis=0) == k  # exactly k keys >= lo: that is the set
    w = tl.arange(0, WAYS)
    while (lo < hi) & (found == 0):
        span = hi - lo + 1
        cut = lo + (span * w + WAYS - 1) // WAYS  # cut[0] = lo; non-decreasing, all within [lo, hi]
        above = tl.sum(((key[None, :] >= cut[:, None].to(tl.int32)) & finite[None, :]).to(tl.int32), axis=1)
        # above[] is non-increasing and above[0] >= k, so the number of cut-offs with >= k keys above them
        # names the best one, and one of them has exactly k iff the best does: one reduction gives both.
        packed = tl.sum((above >= k).to(tl.int32) + 65536 * (above == k).to(tl.int32), axis=0)
        best = (packed % 65536 - 1).to(tl.int64)
        found = packed >= 65536
        hi = tl.where(best < WAYS - 1, lo + (span * (best + 1) + WAYS - 1) // WAYS - 1, hi)
        lo = lo + (span * best + WAYS - 1) // WAYS
    if found:
        chosen = (key >= lo) & finite
    else:  # lo is the k-th largest key and ties with it: take the lowest block indices among the ties
        greater = (key > lo) & finite
        ties = (key == lo) & finite
        tie_rank = tl.cumsum(ties.to(tl.int32), axis=0)
        chosen = greater | (ties & (tie_rank <= k - tl.sum(greater.to(tl.int32), axis=0)))
    place = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
    tl.store(slot_row + place, i.to(tl.int32), mask=chosen)
    slot = tl.arange(0, W_PAD)
    tl.store(slot_row + slot, tl.full([W_PAD], -1, tl.int32), mask=(slot >= k) & (slot < slot_width))


@triton.jit
def _load_step(
    j,
    end,
    t,
    sparse_lanes,
    is_retrieval,
    slot_base,
    k_base,
    v_base,
    length,
    d,
    stride_ks,
    stride_vs,
    BLOCK: tl.constexpr,
):
    """K and V of the STEP blocks from entry ``j`` on: retrieval items walk the cache in order, sparse items look
    their blocks up in the slot (branch-free, so the loop body is the same for both kinds)."""
    entry = j + t // BLOCK
    in_range = entry < end
    listed = tl.load(slot_base + entry, mask=in_range & sparse_lanes, other=-1)
    block = tl.where(is_retrieval, entry, listed)
    pos = block * BLOCK + t % BLOCK
    valid = in_range & (pos >= 0) & (pos < length)  # a -1 (padding) entry gives negative positions
    k = tl.load(k_base + pos[:, None] * stride_ks + d[None, :], mask=valid[:, None], other=0.0)
    v = tl.load(v_base + pos[:, None] * stride_vs + d[None, :], mask=valid[:, None], other=0.0)
    return valid, k, v


@triton.jit
def _attend_step(
    q,
    k,
    v,
    valid,
    j,
    end,
    m_i,
    l_i,
    acc,
    score_base,
    retrieval_steps,
    scale_log2e,
    G: tl.constexpr,
    STEP: tl.constexpr,
    BLOCK: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One online-softmax step over the loaded tiles; retrieval items also store the blocks' selection scores."""
    if DOT_IN_FP32:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # [G_PAD, STEP * BLOCK] raw logits
    column = tl.where(valid, tl.sum(qk, axis=0) / G, float("-inf"))
    block_score = tl.max(tl.reshape(column, [STEP, BLOCK]), axis=1)
    scored = j + tl.arange(0, STEP)
    tl.store(score_base + scored, block_score, mask=(scored < end) & retrieval_steps)

    s = tl.where(valid[None, :], qk * scale_log2e, float("-inf"))
    return _softmax_update(s, v, m_i, l_i, acc, DOT_IN_FP32, INPUT_PRECISION)


@triton.jit
def _softmax_update(
    s,
    v,
    m_i,
    l_i,
    acc,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One online-softmax step: logits ``s`` [G, T] (log2 units, -inf where masked) over value rows ``v`` [T, D]
    update the running max ``m_i``, sum ``l_i`` and unnormalised output ``acc``. Every decode kernel's inner
    step (this layer kernel, the shared position-list kernel and its dense specialisation)."""
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
    return m_new, l_i, acc


@triton.jit
def _decode_layer_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    starts_ptr,
    slots_in_ptr,
    slots_out_ptr,
    items_ptr,
    offsets_ptr,
    counts_ptr,
    group_offsets_ptr,
    retrieval_row_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    group_acc_ptr,
    group_m_ptr,
    group_l_ptr,
    tickets_ptr,
    scores_ptr,
    out_ptr,
    scale_log2e,
    slot_width,
    num_groups,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ib,
    stride_ih,
    stride_jb,
    stride_jh,
    stride_cb,
    stride_cr,
    stride_ob,
    stride_oh,
    HKV: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    GM: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    STEP: tl.constexpr,
    MERGE_TILE: tl.constexpr,
    MERGE_GROUP: tl.constexpr,
    NB_PAD: tl.constexpr,
    W_PAD: tl.constexpr,
    WAYS: tl.constexpr,
    FINISH: tl.constexpr,
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
    t = tl.arange(0, STEP * BLOCK)
    g_valid = g < G
    # Padding rows are zero: they add nothing to the group sum that gives q̄·k.
    q = tl.load(q_ptr + b * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :], mask=g_valid[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh + start * stride_ks
    v_base = v_ptr + b * stride_vb + h * stride_vh + start * stride_vs
    slot_base = slots_in_ptr + b * stride_ib + h * stride_ih
    score_base = scores_ptr + b * stride_cb + score_row * stride_cr
    end = first + count
    # Per-lane copies of the item kind: the interpreter turns `tensor & scalar` into an int mask that tl.load refuses.
    sparse_lanes = (t * 0 + retrieval_flag) == 0
    retrieval_steps = (tl.arange(0, STEP) * 0 + retrieval_flag) != 0

    # A finite stand-in for -inf as the running max: exp2(-inf - -inf) would be NaN for a chunk with no token.
    m_i = tl.full([G_PAD], -1.0e30, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for j in range(first, end, STEP):
        valid, k, v = _load_step(
            j, end, t, sparse_lanes, is_retrieval, slot_base, k_base, v_base, length, d, stride_ks, stride_vs, BLOCK
        )
        m_i, l_i, acc = _attend_step(
            q,
            k,
            v,
            valid,
            j,
            end,
            m_i,
            l_i,
            acc,
            score_base,
            retrieval_steps,
            scale_log2e,
            G,
            STEP,
            BLOCK,
            DOT_IN_FP32,
            INPUT_PRECISION,
        )

    part = item * G + g
    tl.store(part_m_ptr + part, m_i, mask=g_valid)
    tl.store(part_l_ptr + part, l_i, mask=g_valid)
    tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=g_valid[:, None])

    if FINISH >= 1:
        head = b * HKV + h
        first_item = tl.load(offsets_ptr + head)
        num_items = tl.load(counts_ptr + head)
        group = (item - first_item) // MERGE_GROUP
        group_first = first_item + group * MERGE_GROUP
        group_items = tl.minimum(num_items - group * MERGE_GROUP, MERGE_GROUP)
        head_groups = (num_items + MERGE_GROUP - 1) // MERGE_GROUP
        group_base = tl.load(group_offsets_ptr + head)
        tl.debug_barrier()  # every thread's partial is stored before the ticket is taken (released with it)
        ticket = tl.atomic_add(tickets_ptr + group_base + group, 1, sem="acq_rel")
        if ticket == group_items - 1:
            tl.atomic_xchg(tickets_ptr + group_base + group, 0)
            m, l_sum, acc_m = _merge_range(
                part_acc_ptr, part_m_ptr, part_l_ptr, group_first, group_items, G, GM, D, MERGE_TILE, 0, D
            )
            done = head_groups == 1
            if head_groups > 1:
                _store_rows(group_acc_ptr, group_m_ptr, group_l_ptr, group_base + group, m, l_sum, acc_m, G, GM, D)
                tl.debug_barrier()
                head_ticket = tl.atomic_add(tickets_ptr + num_groups + head, 1, sem="acq_rel")
                done = head_ticket == head_groups - 1
                if done:
                    tl.atomic_xchg(tickets_ptr + num_groups + head, 0)
                    m, l_sum, acc_m = _merge_range(
                        group_acc_ptr, group_m_ptr, group_l_ptr, group_base, head_groups, G, GM, D, MERGE_TILE, 0, D
                    )
            if done:
                _store_out(out_ptr, b, h, l_sum, acc_m, stride_ob, stride_oh, G, GM, 0, D)
                if FINISH >= 2:
                    if is_retrieval:
                        slot_row = slots_out_ptr + b * stride_jb + h * stride_jh
                        _top_blocks(
                            score_base, (length + BLOCK - 1) // BLOCK, slot_row, slot_width, NB_PAD, W_PAD, WAYS
                        )


@triton.jit
def _merge_heads_kernel(
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
    GM: tl.constexpr,
    D: tl.constexpr,
    MERGE_TILE: tl.constexpr,
):
    # The separate merge launch: one program per (sequence, KV head) merges all of its partials.
    head = tl.program_id(0)
    first = tl.load(offsets_ptr + head)
    count = tl.load(counts_ptr + head)
    m, l_sum, acc = _merge_range(part_acc_ptr, part_m_ptr, part_l_ptr, first, count, G, GM, D, MERGE_TILE, 0, D)
    _store_out(out_ptr, (head // HKV).to(tl.int64), head % HKV, l_sum, acc, stride_ob, stride_oh, G, GM, 0, D)


@triton.jit
def _top_blocks_kernel(
    scores_ptr,
    slots_ptr,
    heads_ptr,
    lengths_ptr,
    slot_width,
    stride_cb,
    stride_cr,
    stride_sb,
    stride_sh,
    BLOCK: tl.constexpr,
    NB_PAD: tl.constexpr,
    W_PAD: tl.constexpr,
    WAYS: tl.constexpr,
):
    # The separate top-k launch: one program per (sequence, retrieval head).
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1)
    h = tl.load(heads_ptr + r).to(tl.int64)
    num_valid = (tl.load(lengths_ptr + b) + BLOCK - 1) // BLOCK
    row = slots_ptr + b * stride_sb + h * stride_sh
    _top_blocks(scores_ptr + b * stride_cb + r * stride_cr, num_valid, row, slot_width, NB_PAD, W_PAD, WAYS)


@dataclass
class DecodeBuffers:
    """Scratch and output tensors of one layer call; allocate once and reuse (e.g. inside a CUDA graph).

    ``tickets`` must start at zero; every call leaves it at zero again."""

    part_acc: torch.Tensor  # [n_items, G, D] fp32
    part_m: torch.Tensor  # [n_items, G] fp32, running max in log2 units
    part_l: torch.Tensor  # [n_items, G] fp32
    group_acc: torch.Tensor  # [n_groups, G, D] fp32, merged groups of MERGE_GROUP items
    group_m: torch.Tensor  # [n_groups, G] fp32
    group_l: torch.Tensor  # [n_groups, G] fp32
    tickets: torch.Tensor  # [n_groups + B * Hkv] int32: per merge group, then per (sequence, KV head)
    scores: torch.Tensor  # [B, R, NB] fp32 block scores of the retrieval heads (valid blocks only)
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
            group_acc=torch.empty(plan.num_groups, group, dim, **f32),
            group_m=torch.empty(plan.num_groups, group, **f32),
            group_l=torch.empty(plan.num_groups, group, **f32),
            tickets=torch.zeros(plan.num_groups + batch * plan.num_kv_heads, dtype=torch.int32, device=q.device),
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


def _merge_tile(group: int) -> int:
    """Partials per merge load: MERGE_ROWS rows of (partial, query head), at least one partial."""
    return max(1, MERGE_ROWS // triton.next_power_of_2(group))


def layer_constants(plan: DecodePlan, group: int, head_dim: int, finish: int, dot_in_fp32: bool) -> dict[str, Any]:
    """The compile-time arguments of the fused layer kernel for a plan and the module's knobs (also what
    :mod:`lychee_bench.tools.resource_usage` compiles)."""
    return dict(
        HKV=plan.num_kv_heads,
        G=group,
        G_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPUs
        GM=triton.next_power_of_2(group),
        D=head_dim,
        BLOCK=plan.block_size,
        STEP=STEP_BLOCKS,
        MERGE_TILE=_merge_tile(group),
        MERGE_GROUP=plan.merge_group,
        NB_PAD=triton.next_power_of_2(plan.num_blocks),
        W_PAD=triton.next_power_of_2(plan.slot_width),
        WAYS=TOPK_WAYS,
        FINISH=finish,
        DOT_IN_FP32=dot_in_fp32,
        INPUT_PRECISION="ieee" if dot_in_fp32 else "tf32",
    )


def _launch_layer(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    slots_in: torch.Tensor | None,
    slots_out: torch.Tensor | None,
    plan: DecodePlan,
    buffers: DecodeBuffers,
    scale: float,
    finish: int,
) -> None:
    group = _check_inputs(q, k_cache, v_cache, plan)
    if plan.num_retrieval < plan.num_kv_heads and slots_in is None:
        raise ValueError("slot_block_idx is required when the layer has sparse heads")
    if plan.num_items == 0:
        return
    # Pointers that are never dereferenced still need a tensor: the item table stands in.
    slots_in = slots_in if slots_in is not None else plan.items
    slots_out = slots_out if slots_out is not None else plan.items
    scores = buffers.scores if buffers.scores.numel() else buffers.part_m  # never written without retrieval heads
    dot_in_fp32 = _interpreting() or q.dtype == torch.float32
    stride = lambda t, i: t.stride(i) if t.dim() == 3 else 0  # noqa: E731
    _decode_layer_kernel[(plan.num_items,)](
        q,
        k_cache,
        v_cache,
        lengths,
        starts,
        slots_in,
        slots_out,
        plan.items,
        plan.offsets,
        plan.counts,
        plan.group_offsets,
        plan.retrieval_row,
        buffers.part_acc,
        buffers.part_m,
        buffers.part_l,
        buffers.group_acc,
        buffers.group_m,
        buffers.group_l,
        buffers.tickets,
        scores,
        buffers.out,
        scale * LOG2E,
        plan.slot_width,
        plan.num_groups,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        stride(slots_in, 0),
        stride(slots_in, 1),
        stride(slots_out, 0),
        stride(slots_out, 1),
        stride(scores, 0),
        stride(scores, 1),
        buffers.out.stride(0),
        buffers.out.stride(1),
        **layer_constants(plan, group, q.shape[2], finish, dot_in_fp32),
        num_warps=ATTENTION_WARPS,
        num_stages=ATTENTION_STAGES,
    )


def _device_int32(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(device=like.device, dtype=torch.int32)


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
) -> None:
    """Step 1 alone: fills the partials and the retrieval heads' block scores (valid blocks only)."""
    lengths = _device_int32(lengths, q)
    starts = _device_int32(starts, q) if starts is not None else torch.zeros_like(lengths)
    _launch_layer(q, k_cache, v_cache, lengths, starts, slot_block_idx, None, plan, buffers, scale, finish=0)


def merge_partials(plan: DecodePlan, buffers: DecodeBuffers) -> torch.Tensor:
    """Step 2 alone: log-sum-exp combine of each (sequence, KV head)'s partials into ``buffers.out`` [B, Hq, D]."""
    out = buffers.out
    group = out.shape[1] // plan.num_kv_heads
    _merge_heads_kernel[(plan.batch * plan.num_kv_heads,)](
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
        GM=triton.next_power_of_2(group),
        D=out.shape[2],
        MERGE_TILE=_merge_tile(group),
        num_warps=SMALL_WARPS,
    )
    return out


def select_into_slots(
    scores: torch.Tensor, slots: torch.Tensor, plan: DecodePlan, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Step 3 alone: top ``plan.slot_width`` blocks of each retrieval head's [B, R, NB] scores, written in place
    into its row of ``slots`` [B, Hkv, W] in block order, -1 after them (same sets as
    :func:`lychee_bench.kernels.reference.select_top_blocks` up to ties). Blocks past ``lengths`` (default: every
    block counts; -inf scores are never picked) are not read. Returns ``slots``."""
    batch, num_retrieval, num_blocks = scores.shape
    if num_retrieval == 0:
        return slots
    if lengths is None:
        lengths = torch.full((batch,), num_blocks * plan.block_size, dtype=torch.int32, device=scores.device)
    _top_blocks_kernel[(batch, num_retrieval)](
        scores,
        slots,
        plan.retrieval_heads,
        _device_int32(lengths, scores),
        plan.slot_width,
        scores.stride(0),
        scores.stride(1),
        slots.stride(0),
        slots.stride(1),
        BLOCK=plan.block_size,
        NB_PAD=triton.next_power_of_2(num_blocks),
        W_PAD=triton.next_power_of_2(plan.slot_width),
        WAYS=TOPK_WAYS,
        num_warps=SMALL_WARPS,
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
    writes the retrieval heads' picks into ``slot_block_idx`` itself instead of a copy (no copy launch; safe:
    a layer's sparse heads read other rows than its retrieval heads write).
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
    lengths = _device_int32(lengths, q)
    starts = _device_int32(starts, q) if starts is not None else torch.zeros_like(lengths)
    if slot_block_idx is None:
        new_slots = torch.full((plan.batch, plan.num_kv_heads, plan.slot_width), -1, dtype=torch.int32, device=q.device)
    else:
        new_slots = slot_block_idx if inplace_slots or plan.num_retrieval == 0 else slot_block_idx.clone()
    if FUSED:
        _launch_layer(
            q, k_cache, v_cache, lengths, starts, slot_block_idx, new_slots, plan, buffers, scale, FUSED_FINISH
        )
        return buffers.out, new_slots
    _launch_layer(q, k_cache, v_cache, lengths, starts, slot_block_idx, None, plan, buffers, scale, finish=0)
    merge_partials(plan, buffers)
    select_into_slots(buffers.scores, new_slots, plan, lengths)
    return buffers.out, new_slots
