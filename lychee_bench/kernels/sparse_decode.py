"""One Triton decode-attention kernel for every "attend to these positions" method.

TidalDecode, Kascade, Quest, DuoAttention and StreamingLLM differ in *which* cache positions a head attends to
during decode, not in how it attends to them (SPEC §4). This module is the efficient path they share: a
split-KV ("flash-decoding") pass over per-row position lists, then a log-sum-exp merge, matching
:func:`lychee_bench.methods.common.masked_decode_attention` with the same positions kept.

Rows. A *selection row* is a set of query heads that attend to the same positions of one KV head: one row per
KV head (its whole GQA group: Kascade, DuoAttention, StreamingLLM) or one row per query head (TidalDecode,
Quest). Row ``r`` of ``HS`` rows belongs to KV head ``r // (HS // Hkv)`` and serves query heads
``r * GS .. r * GS + GS - 1`` with ``GS = Hq // HS``.

Positions. A *listed* row reads the entries of its row of ``index`` [B, HS, W] (int32): entry ``e`` means
tokens ``e * unit .. e * unit + unit - 1`` (``unit`` 1: tokens; Quest's pages: 16), counted from the sequence's
first real token (``starts``: left padding), and -1 is an unused entry. A *dense* row (``dense_rows``) reads
all of the sequence's ``lengths`` tokens in order, with no index (DuoAttention's retrieval heads). Entries
must not repeat: a position listed twice would count twice.

Work. Every row is cut into chunks of ``chunk_tiles`` tiles of ``TILE`` tokens; one program per (row, chunk)
leaves a partial (running max, sum of exponentials, unnormalised output), and one program per (row, 32 head
dims) merges the partials of the chunks that hold the row's tokens. The grid depends only on host numbers
(batch, rows, index width, the longest sequence), so a decode step with it can be captured in a CUDA graph.
Runs under ``TRITON_INTERPRET=1`` on CPU, where the dot operands are upcast to float32 (the interpreter's
bfloat16 ``tl.dot`` is wrong, see lychee_triton.py).

All rows dense (``index`` None: ``full`` attention's fast path, SPEC §4) has its own kernel,
:func:`dense_decode_attention`: each program walks a contiguous run of positions with plain loads (no index
load, whose wait held back the software pipeline of K/V loads in the general kernel), no mask except on a
sequence's last partial tile, and the grid's chunks of every row split the row's *real* length evenly on the
device, so a grid sized once for the longest length of a generation keeps every program busy at any length;
its merge reads a row's few chunks in one load.
Its launch knobs are :class:`DenseLaunch` (default :data:`DENSE_LAUNCH`); ``specialise_dense=False`` runs such a
launch through the general kernel instead (the benchmark's "before").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from lychee_bench.kernels.lychee_plan import SUPPORTED_HEAD_DIMS, default_target_programs
from lychee_bench.kernels.lychee_triton import (
    LOG2E,
    SUPPORTED_DTYPES,
    _interpreting,
    _merge_range,
    _softmax_update,
    _store_out,
)

TILE = 64  # tokens per loop step
WARPS = 4
STAGES = 3
MERGE_ROWS = 64  # partial rows (chunks x query heads) per merge load
MERGE_DIMS = 32  # head dims per merge program: a long row's many chunks are merged by D / 32 programs
DENSE_MERGE_ELEMENTS = 4096  # partial values (chunks x query heads x head dims) per load of the dense merge


@dataclass(frozen=True)
class DenseLaunch:
    """Launch knobs of the all-dense kernel (tools/bench_dense.py sweeps them on a GPU).

    ``tile`` tokens per loop step, ``warps`` and ``stages`` (software-pipeline depth) of the partials kernel,
    ``programs_per_sm`` the grid's target size on a GPU as a multiple of its SM count (the chunks of a row are
    ``target // (batch * Hkv)``, at least one: rounded down, so no second wave). A program holds
    ``(stages - 1) * tile * D * 4`` bytes of K/V tiles (bf16) in shared memory (Hopper: 227 KB per block and
    228 KB per SM); where a device has too little, the launch lowers ``stages`` until it fits.

    The defaults won the sweep of ``bench_dense`` on an H200 (torch 2.11, Triton 3.6; Llama-3-8B and
    SmolLM2-135M shapes at 32K and 128K, batch 1 and 4): one deep-pipelined program per SM, whose few chunks
    also keep the merge short; geometric mean 1.004x the time of torch's fastest SDPA backend (cuDNN), where
    tile 64, 4 warps, 3 stages, 2 per SM took 1.025x, the general kernel 1.40x and SDPA flash 1.37x."""

    tile: int = 128
    warps: int = 4
    stages: int = 4  # 200 KB of shared memory at head dim 128; lowered where a device has less per block
    programs_per_sm: int = 1

    def __post_init__(self) -> None:
        if self.tile not in (16, 32, 64, 128, 256) or self.warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"tile {self.tile} must be a power of two in 16..256 and warps {self.warps} in 1..16")
        if self.stages < 1 or self.programs_per_sm < 1:
            raise ValueError(f"stages {self.stages} and programs_per_sm {self.programs_per_sm} must be >= 1")


DENSE_LAUNCH = DenseLaunch()


@triton.jit
def _sparse_partials_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    starts_ptr,
    index_ptr,
    dense_ptr,
    score_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    scale_log2e,
    width,
    chunk_tiles,
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
    stride_sb,
    stride_sh,
    HS: tl.constexpr,
    ROWS_PER_KV: tl.constexpr,
    GS: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    UNIT: tl.constexpr,
    TILE: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WRITE_SCORES: tl.constexpr,
):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    b = (row // HS).to(tl.int64)
    hs = row % HS
    kvh = (hs // ROWS_PER_KV).to(tl.int64)
    length = tl.load(lengths_ptr + b)
    start = tl.load(starts_ptr + b).to(tl.int64)
    dense_flag = tl.load(dense_ptr + hs)
    row_tokens = tl.where(dense_flag != 0, length, width * UNIT)
    tile_first = chunk * chunk_tiles
    tile_end = tl.minimum(tile_first + chunk_tiles, (row_tokens + TILE - 1) // TILE)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    t = tl.arange(0, TILE)
    g_valid = g < GS
    q_rows = q_ptr + b * stride_qb + (hs * GS + g)[:, None] * stride_qh + d[None, :]
    q = tl.load(q_rows, mask=g_valid[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh + start * stride_ks
    v_base = v_ptr + b * stride_vb + kvh * stride_vh + start * stride_vs
    index_row = index_ptr + b * stride_ib + hs * stride_ih
    # Per-lane copies of the row kind: the interpreter turns `tensor & scalar` into an int mask tl.load refuses.
    listed_lanes = (t * 0 + dense_flag) == 0

    m_i = tl.full([G_PAD], -1.0e30, tl.float32)  # finite: exp2(-inf - -inf) would be NaN for an empty chunk
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for tile in range(tile_first, tile_end):
        offset = tile * TILE + t  # the tile's tokens within the row
        entry = offset // UNIT
        listed = tl.load(index_row + entry, mask=listed_lanes & (entry < width), other=-1)
        pos = tl.where(listed_lanes, listed * UNIT + offset % UNIT, offset)
        valid = (offset < row_tokens) & (pos >= 0) & (pos < length)
        k = tl.load(k_base + pos[:, None] * stride_ks + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vs + d[None, :], mask=valid[:, None], other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
        if WRITE_SCORES:  # a dense row's mean query . key per token, at its cache slot (the listed rows: none)
            mean_qk = tl.sum(tl.where(g_valid[:, None], qk, 0.0), axis=0) / GS
            score_at = score_ptr + b * stride_sb + hs * stride_sh + start + pos
            tl.store(score_at, mean_qk, mask=valid & (listed_lanes == 0))
        s = tl.where(valid[None, :], qk * scale_log2e, float("-inf"))
        m_i, l_i, acc = _softmax_update(s, v, m_i, l_i, acc, DOT_IN_FP32, INPUT_PRECISION)

    part = (row * tl.num_programs(1) + chunk).to(tl.int64) * GS + g
    tl.store(part_m_ptr + part, m_i, mask=g_valid)
    tl.store(part_l_ptr + part, l_i, mask=g_valid)
    tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=g_valid[:, None])


@triton.jit
def _sparse_merge_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    lengths_ptr,
    dense_ptr,
    out_ptr,
    num_chunks,
    width,
    chunk_tiles,
    stride_ob,
    stride_oh,
    HS: tl.constexpr,
    GS: tl.constexpr,
    GM: tl.constexpr,
    D: tl.constexpr,
    DS: tl.constexpr,
    UNIT: tl.constexpr,
    TILE: tl.constexpr,
    MERGE_TILE: tl.constexpr,
):
    """One program per (row, slice of DS head dims): a log-sum-exp merge of the chunks that hold the row's
    tokens (a listed row's index is short: its later chunks are empty and not read)."""
    row = tl.program_id(0)
    d0 = tl.program_id(1) * DS
    b = (row // HS).to(tl.int64)
    hs = row % HS
    length = tl.load(lengths_ptr + b)
    row_tokens = tl.where(tl.load(dense_ptr + hs) != 0, length, width * UNIT)
    count = tl.maximum(1, tl.minimum(num_chunks, tl.cdiv(tl.cdiv(row_tokens, TILE), chunk_tiles)))
    m, l_sum, acc = _merge_range(
        part_acc_ptr, part_m_ptr, part_l_ptr, row * num_chunks, count, GS, GM, D, MERGE_TILE, d0, DS
    )
    _store_out(out_ptr, b, hs, l_sum, acc, stride_ob, stride_oh, GS, GM, d0, DS)


@triton.jit
def _attend_tile(
    q,
    k,
    v,
    valid,
    m_i,
    l_i,
    acc,
    scale_log2e,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One online-softmax step over a [TILE, D] tile of keys and values (``valid`` [TILE]: only with MASKED)."""
    if DOT_IN_FP32:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale_log2e
    if MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    return _softmax_update(s, v, m_i, l_i, acc, DOT_IN_FP32, INPUT_PRECISION)


@triton.jit
def _dense_partials_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lengths_ptr,
    starts_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    scale_log2e,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    HKV: tl.constexpr,
    GS: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One program per (sequence x KV head, chunk): the chunk's share of the sequence's ``length`` tokens, cut
    evenly over the grid's chunks from the real length, read as contiguous tiles."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    b = (row // HKV).to(tl.int64)
    kvh = (row % HKV).to(tl.int64)
    length = tl.load(lengths_ptr + b)
    start = tl.load(starts_ptr + b).to(tl.int64)
    tiles = tl.cdiv(length, TILE)
    per_chunk = tl.cdiv(tiles, tl.num_programs(1))
    tile_first = chunk * per_chunk
    tile_end = tl.minimum(tile_first + per_chunk, tiles)
    full_end = tl.maximum(tile_first, tl.minimum(tile_end, length // TILE))  # tiles before it need no mask

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    t = tl.arange(0, TILE)
    g_valid = g < GS
    q = tl.load(
        q_ptr + b * stride_qb + (kvh * GS + g)[:, None] * stride_qh + d[None, :], mask=g_valid[:, None], other=0.0
    )
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    first = start + tile_first * TILE  # the chunk's first cache slot
    k_tile = k_ptr + b * stride_kb + kvh * stride_kh + (first + t)[:, None] * stride_ks + d[None, :]
    v_tile = v_ptr + b * stride_vb + kvh * stride_vh + (first + t)[:, None] * stride_vs + d[None, :]

    m_i = tl.full([G_PAD], -1.0e30, tl.float32)  # finite: exp2(-inf - -inf) would be NaN for an empty chunk
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for _ in range(tile_first, full_end):
        k = tl.load(k_tile)
        v = tl.load(v_tile)
        m_i, l_i, acc = _attend_tile(q, k, v, t, m_i, l_i, acc, scale_log2e, DOT_IN_FP32, INPUT_PRECISION, False)
        k_tile += TILE * stride_ks
        v_tile += TILE * stride_vs
    if full_end < tile_end:  # the sequence's last tile, partly past its end (those slots are never read)
        valid = full_end * TILE + t < length
        k = tl.load(k_tile, mask=valid[:, None], other=0.0)
        v = tl.load(v_tile, mask=valid[:, None], other=0.0)
        m_i, l_i, acc = _attend_tile(q, k, v, valid, m_i, l_i, acc, scale_log2e, DOT_IN_FP32, INPUT_PRECISION, True)

    part = (row * tl.num_programs(1) + chunk).to(tl.int64) * GS + g
    tl.store(part_m_ptr + part, m_i, mask=g_valid)
    tl.store(part_l_ptr + part, l_i, mask=g_valid)
    tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=g_valid[:, None])


@triton.jit
def _dense_merge_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    lengths_ptr,
    out_ptr,
    num_chunks,
    stride_ob,
    stride_oh,
    HKV: tl.constexpr,
    GS: tl.constexpr,
    GM: tl.constexpr,
    D: tl.constexpr,
    DS: tl.constexpr,
    TILE: tl.constexpr,
    MERGE_TILE: tl.constexpr,
):
    """One program per (sequence x KV head, slice of DS head dims): the merge of the chunks that hold tokens."""
    row = tl.program_id(0)
    d0 = tl.program_id(1) * DS
    b = (row // HKV).to(tl.int64)
    tiles = tl.cdiv(tl.load(lengths_ptr + b), TILE)
    per_chunk = tl.maximum(1, tl.cdiv(tiles, num_chunks))
    count = tl.maximum(1, tl.cdiv(tiles, per_chunk))
    m, l_sum, acc = _merge_range(
        part_acc_ptr, part_m_ptr, part_l_ptr, row * num_chunks, count, GS, GM, D, MERGE_TILE, d0, DS
    )
    _store_out(out_ptr, b, row % HKV, l_sum, acc, stride_ob, stride_oh, GS, GM, d0, DS)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, rows: int) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"expected q [B, Hq, D] and k/v caches [B, Hkv, S_max, D] of one shape, got {tuple(q.shape)}, "
            f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    batch, hq, dim = q.shape
    hkv = k_cache.shape[1]
    if k_cache.shape[0] != batch or k_cache.shape[3] != dim or hq % hkv:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache {tuple(k_cache.shape)}")
    if rows not in (hkv, hq):
        raise ValueError(f"{rows} selection rows: need one per KV head ({hkv}) or one per query head ({hq})")
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"dtypes q={q.dtype} k={k_cache.dtype} v={v_cache.dtype}; need one of {SUPPORTED_DTYPES}")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache)):
        raise ValueError("q, k_cache and v_cache need a contiguous last (head) dimension")


def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    index: torch.Tensor | None,
    scale: float,
    *,
    dense_rows: Sequence[bool] | None = None,
    unit: int = 1,
    max_length: int | None = None,
    chunk_tiles: int | None = None,
    scores: torch.Tensor | None = None,
    specialise_dense: bool = True,
    dense_launch: DenseLaunch | None = None,
) -> torch.Tensor:
    """Decode attention of ``q`` [B, Hq, D] over the listed positions; returns [B, Hq, D] in q's dtype.

    ``lengths`` / ``starts`` [B] int32 on q's device: real tokens per sequence and where the first one sits.
    ``index`` [B, HS, W] int32 (any strides; an expanded row is fine) or None when every row is dense (then
    HS = Hkv). ``dense_rows`` (host, HS flags) marks rows that read all their tokens instead of a list.
    ``max_length`` (host) bounds ``lengths``; it is needed with dense rows to size the grid (default: the
    cache size). ``chunk_tiles`` (tiles of 64 tokens per program) defaults to the rows' total work (dense rows
    their lengths, listed rows their index width) over about two programs per SM.

    ``scores`` [B, HS, S_max] float32 (optional): each dense row writes, at the cache slot of every token it
    reads, the unscaled mean over its query heads of q . k (LycheeDecode's token scores, without a second pass
    over K). Slots it does not read, and listed rows, are left as they were.

    With ``index`` None and no ``scores`` the call goes to :func:`dense_decode_attention` (``dense_launch``
    its knobs; there ``chunk_tiles`` counts tiles of ``dense_launch.tile`` tokens), unless ``specialise_dense``
    is False, which keeps the general kernel.
    """
    if index is None and scores is None and specialise_dense:
        return dense_decode_attention(
            q,
            k_cache,
            v_cache,
            lengths,
            starts,
            scale,
            max_length=max_length,
            chunk_tiles=chunk_tiles,
            launch=dense_launch,
        )
    if unit < 1:
        raise ValueError(f"unit {unit} must be >= 1 token per index entry")
    hkv = k_cache.shape[1]
    rows = hkv if index is None else index.shape[1]
    _check(q, k_cache, v_cache, rows)
    batch, hq, dim = q.shape
    dense = [True] * rows if index is None else [bool(x) for x in (dense_rows or [False] * rows)]
    if len(dense) != rows:
        raise ValueError(f"dense_rows has {len(dense)} flags for {rows} selection rows")
    width = 0 if index is None else index.shape[2]
    if index is not None and (index.shape[0] != batch or index.dtype != torch.int32):
        raise ValueError(f"index must be int32 [B={batch}, rows, W], got {index.dtype} {tuple(index.shape)}")
    longest = k_cache.shape[2] if max_length is None else max_length
    row_tokens = max(longest if any(dense) else 0, width * unit if not all(dense) else 0, 1)
    max_tiles = -(-row_tokens // TILE)
    if chunk_tiles is None:  # cut the work, not the rows, evenly: a long dense row gets many programs
        dense_tiles = -(-max(longest, 1) // TILE)
        listed_tiles = -(-max(width * unit, 1) // TILE)
        work = batch * sum(dense_tiles if flag else listed_tiles for flag in dense)
        chunk_tiles = max(1, -(-work // default_target_programs(q.device)))
    num_chunks = -(-max_tiles // chunk_tiles)
    group = hq // rows
    f32 = dict(device=q.device, dtype=torch.float32)
    part_acc = torch.empty(batch * rows * num_chunks, group, dim, **f32)
    part_m = torch.empty(batch * rows * num_chunks, group, **f32)
    part_l = torch.empty(batch * rows * num_chunks, group, **f32)
    out = torch.empty_like(q)
    dense_flags = _dense_flags(dense, q.device)
    index_arg = index if index is not None else dense_flags  # never read for dense rows
    dot_in_fp32 = _interpreting() or q.dtype == torch.float32
    score_shape = (batch, rows, k_cache.shape[2])
    if scores is not None and (
        scores.dtype != torch.float32 or tuple(scores.shape) != score_shape or scores.stride(-1) != 1
    ):
        raise ValueError(
            f"scores must be float32 [B={batch}, rows={rows}, S={k_cache.shape[2]}] with unit stride last, "
            f"got {scores.dtype} {tuple(scores.shape)}"
        )
    _sparse_partials_kernel[(batch * rows, num_chunks)](
        q,
        k_cache,
        v_cache,
        lengths,
        starts,
        index_arg,
        dense_flags,
        scores if scores is not None else part_m,  # never written without scores
        part_acc,
        part_m,
        part_l,
        scale * LOG2E,
        width,
        chunk_tiles,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        index.stride(0) if index is not None else 0,
        index.stride(1) if index is not None else 0,
        scores.stride(0) if scores is not None else 0,
        scores.stride(1) if scores is not None else 0,
        HS=rows,
        ROWS_PER_KV=rows // hkv,
        GS=group,
        G_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPUs
        D=dim,
        UNIT=unit,
        TILE=TILE,
        DOT_IN_FP32=dot_in_fp32,
        INPUT_PRECISION="ieee" if dot_in_fp32 else "tf32",
        WRITE_SCORES=scores is not None,
        num_warps=WARPS,
        num_stages=STAGES,
    )
    _sparse_merge_kernel[(batch * rows, dim // MERGE_DIMS)](
        part_acc,
        part_m,
        part_l,
        lengths,
        dense_flags,
        out,
        num_chunks,
        width,
        chunk_tiles,
        out.stride(0),
        out.stride(1),
        HS=rows,
        GS=group,
        GM=triton.next_power_of_2(group),
        D=dim,
        DS=MERGE_DIMS,
        UNIT=unit,
        TILE=TILE,
        MERGE_TILE=max(1, MERGE_ROWS // triton.next_power_of_2(group)),
        num_warps=WARPS,
    )
    return out


def dense_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    scale: float,
    *,
    max_length: int | None = None,
    chunk_tiles: int | None = None,
    launch: DenseLaunch | None = None,
) -> torch.Tensor:
    """Decode attention of ``q`` [B, Hq, D] over every real token of each sequence; returns [B, Hq, D].

    Sequence ``b`` holds ``lengths[b]`` tokens from cache slot ``starts[b]`` on (left padding before them, any
    contents after them: neither is read); ``lengths`` / ``starts`` [B] int32 on q's device. ``max_length``
    (host) bounds ``lengths`` and sizes the grid (default: the cache size): a grid sized once for the longest
    length of a generation stays right, and fully used, as the lengths grow (CUDA graphs). ``chunk_tiles``
    caps the tiles per program (default: ``launch.programs_per_sm`` programs per SM; 16 programs in the
    interpreter). ``launch`` defaults to :data:`DENSE_LAUNCH`.
    """
    launch = launch or DENSE_LAUNCH
    hkv = k_cache.shape[1]
    _check(q, k_cache, v_cache, hkv)
    num_chunks = _dense_chunks(q, k_cache, max_length, chunk_tiles, launch)
    part_acc, part_m, part_l = _dense_partials(q, k_cache, v_cache, lengths, starts, scale, num_chunks, launch)
    return _dense_merge(part_acc, part_m, part_l, lengths, num_chunks, q, launch)


def _dense_chunks(
    q: torch.Tensor, k_cache: torch.Tensor, max_length: int | None, chunk_tiles: int | None, launch: DenseLaunch
) -> int:
    """Chunks per (sequence, KV head): the grid's second dimension."""
    if chunk_tiles is not None and chunk_tiles < 1:
        raise ValueError(f"chunk_tiles must be >= 1, got {chunk_tiles}")
    longest = k_cache.shape[2] if max_length is None else max_length
    if not 0 <= longest <= k_cache.shape[2]:
        raise ValueError(f"max_length {longest} must lie in [0, {k_cache.shape[2]}] (the cache size)")
    max_tiles = max(1, -(-longest // launch.tile))
    if chunk_tiles is not None:
        return -(-max_tiles // chunk_tiles)
    if q.device.type == "cuda":
        target = launch.programs_per_sm * torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        target = default_target_programs(q.device)
    return max(1, min(max_tiles, target // (q.shape[0] * k_cache.shape[1])))  # round down: never a second wave


def _dense_partials(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    scale: float,
    num_chunks: int,
    launch: DenseLaunch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The partials launch alone (the benchmark times it apart from the merge)."""
    batch, hq, dim = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    f32 = dict(device=q.device, dtype=torch.float32)
    part_acc = torch.empty(batch * hkv * num_chunks, group, dim, **f32)
    part_m = torch.empty(batch * hkv * num_chunks, group, **f32)
    part_l = torch.empty(batch * hkv * num_chunks, group, **f32)
    dot_in_fp32 = _interpreting() or q.dtype == torch.float32
    fit_key = (str(q.device), q.dtype, group, dim, launch.tile, launch.warps, launch.stages)
    stages = _FITTED_STAGES.get(fit_key, launch.stages)
    while True:
        try:
            _launch_dense_partials(
                q, k_cache, v_cache, lengths, starts, part_acc, part_m, part_l, scale, launch, stages, dot_in_fp32
            )
            break
        except OutOfResources:  # raised before anything runs: this device has less shared memory per block
            if stages <= 1:
                raise
            stages -= 1
            _FITTED_STAGES[fit_key] = stages
    return part_acc, part_m, part_l


# Pipeline stages that fit a device where the launch's own did not, per (device, dtype, group, dim, knobs).
_FITTED_STAGES: dict[tuple, int] = {}


def _launch_dense_partials(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    part_acc: torch.Tensor,
    part_m: torch.Tensor,
    part_l: torch.Tensor,
    scale: float,
    launch: DenseLaunch,
    stages: int,
    dot_in_fp32: bool,
) -> None:
    batch, hq, dim = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    num_chunks = part_m.shape[0] // (batch * hkv)
    _dense_partials_kernel[(batch * hkv, num_chunks)](
        q,
        k_cache,
        v_cache,
        lengths,
        starts,
        part_acc,
        part_m,
        part_l,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        HKV=hkv,
        GS=group,
        G_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPUs
        D=dim,
        TILE=launch.tile,
        DOT_IN_FP32=dot_in_fp32,
        INPUT_PRECISION="ieee" if dot_in_fp32 else "tf32",
        num_warps=launch.warps,
        num_stages=stages,
    )


def _dense_merge(
    part_acc: torch.Tensor,
    part_m: torch.Tensor,
    part_l: torch.Tensor,
    lengths: torch.Tensor,
    num_chunks: int,
    q: torch.Tensor,
    launch: DenseLaunch,
) -> torch.Tensor:
    """All of a row's chunks in one load where they fit (a loop over them was a chain of dependent L2 round
    trips: ~1 us each), the head dims cut finer the more chunks there are."""
    batch, hq, dim = q.shape
    rows = part_m.shape[0] // num_chunks
    group = hq // (rows // batch)
    group_pad = triton.next_power_of_2(group)
    chunks_per_load = min(triton.next_power_of_2(num_chunks), max(1, DENSE_MERGE_ELEMENTS // (group_pad * 4)))
    dims = max(4, min(MERGE_DIMS, DENSE_MERGE_ELEMENTS // (chunks_per_load * group_pad)))
    dims = 1 << (dims.bit_length() - 1)  # a power of two dividing the head dim
    out = torch.empty_like(q)
    _dense_merge_kernel[(rows, dim // dims)](
        part_acc,
        part_m,
        part_l,
        lengths,
        out,
        num_chunks,
        out.stride(0),
        out.stride(1),
        HKV=rows // batch,
        GS=group,
        GM=triton.next_power_of_2(group),
        D=dim,
        DS=dims,
        TILE=launch.tile,
        MERGE_TILE=chunks_per_load,
        num_warps=WARPS,
    )
    return out


_DENSE_FLAGS: dict[tuple[tuple[bool, ...], str], torch.Tensor] = {}


def _dense_flags(dense: list[bool], device: torch.device) -> torch.Tensor:
    """The row kinds as an int32 device tensor, made once per pattern and device (a copy per call would wait
    for the device's queued work and could not be captured in a CUDA graph)."""
    key = (tuple(dense), str(device))
    if key not in _DENSE_FLAGS:
        _DENSE_FLAGS[key] = torch.tensor([int(x) for x in dense], dtype=torch.int32, device=device)
    return _DENSE_FLAGS[key]
