"""Exact top-k over long rows of token scores: LycheeDecode's token-granularity selection without torch.topk.

A retrieval head scores every cached token (``q̄ · k``, float32 ``scores`` [B, H, S]) and keeps its top ``k``
candidates (LycheeDecode, arXiv 2602.04541, SPEC §2; the sink and recent tokens are kept by the caller and are
not candidates). torch.topk of ~3700 out of 131072 costs about as much as a whole dense attention layer on an
H200; this module does the same selection, exactly, in three launches and no host synchronisation.

Rule. The candidates of row (b, h) are the relative positions ``r`` in ``[sink, lengths[b] - recent)``; the
score of ``r`` is ``scores[b, h, starts[b] + r]`` (slots outside that range are never read). A candidate is
selectable when its score is ``> -inf`` (``-inf`` and NaN are not). The row keeps its ``min(k_row, selectable)``
best candidates, ``k_row = min(k, k_per_row[b])``, ordered by score, then by position: of equal scores the
lowest positions win (``-0.0`` equals ``0.0``). :func:`select_top_tokens_reference` is the same rule in torch.

Why not a plain radix select. The obvious GPU design builds histograms of the high bits of an order-preserving
key with shared-memory atomics. Triton has no shared-memory atomics; its ``tl.histogram`` costs about 40
integer instructions per element at 64 bins (a ballot per key bit, a popcount per bin), and global atomics
serialise on the skewed (many near-equal) scores of real attention. Over every score of 32 rows of 131072 that
would cost more than the whole budget, so here only cheap work (loads, compares, sums, prefix sums; about 50
instructions per score in each of launches 2 and 3) touches every score, and the histograms run on a sample
and on the few hundred candidates left in the end.

The three launches:

1. ``_cuts_kernel``, one program per row. Reads a stratified sample of ``SAMPLE`` candidates (one at a
   pseudo-random offset in each of ``SAMPLE`` equal strata; all candidates when there are fewer) and places
   ``CUTS`` cut-off keys at the sample ranks where the k-th best should fall, ``rank ≈ k·SAMPLE/n`` from -4 to
   +8 binomial standard deviations (two 64-bin histogram levels zoom in on those ranks). Ranks, not values, so
   the placement does not depend on how the scores are distributed. Also zeroes the row's ticket.
2. ``_count_kernel``, rows × parts programs. Each program counts, in its part of the row, the selectable
   candidates and those at or above each cut, and their largest key. No atomics.
3. ``_select_kernel``, rows × parts programs. Every program sums its row's counts (a few hundred integers) and
   finds the same bracket: the two neighbouring cuts with ``count(≥ upper) < k_eff ≤ count(≥ lower)``
   (usually a few hundred candidates wide). The candidates at or above the upper cut are all selected: each
   part writes its own straight into the output, after those of the parts before it. The bracket's
   candidates go to a per-row list the same way; the last part to finish (an atomic ticket, acquire-release)
   picks the missing ``k_eff - count(≥ upper)`` of them and writes the ``-1`` tail. The pick narrows the
   list's keys by 64-bin histogram levels (in registers when the list fits one block) until a bin edge
   splits it exactly or one key is left; the candidates tied at that key are then narrowed the same way by
   position, lowest first.

The cuts only decide speed, never the result: any non-increasing cuts give the exact answer, because the
bracket is chosen from exact counts and the two open-ended brackets (above the top cut, below the bottom one)
exist too. A bracket wider than ``cap`` candidates (heavy exact ties at the cut-off, or a sample that missed)
is resolved by scanning the whole row from ``scores`` instead of the list: exact, but one program, so slower.

Output order: per row, the selected positions come first and ``-1`` after them; the positions are not sorted
(those above the bracket, part by part in a fixed order inside each part, then those picked from the
bracket), but the order is deterministic: no atomic decides where an entry goes.

CUDA graphs: the grid depends only on host numbers (B, rows, S, k, sink, recent); scratch comes from
``torch.empty`` inside the call; the only counter (the ticket) is reset by launch 1 of the same call.
Runs under ``TRITON_INTERPRET=1`` on CPU (programs run one after another there, so the ticket is exercised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

from lychee_bench.kernels.lychee_triton import _interpreting

SAMPLE = 1024  # sampled candidates per row (launch 1); the rank noise it leaves sets the bracket's width
CUTS = 8  # cut-offs counted over every candidate (launch 2): a compare and an add per score each
SLOTS = 16  # per-part count slots: 0 (the +inf cut), 1..CUTS, CUTS + 1 (selectable), CUTS + 2 (largest key)
BINS = 64  # bins per histogram level (sample zoom and the final pick): cheap for tl.histogram
ZOOM_LEVELS = 2  # sample histogram levels; the key range shrinks ~32x per level
BLOCK = 1024  # scores per loop step in the full-row passes
PICK_BLOCKS = 2  # the final pick keeps a bracket of up to this many blocks in registers (the usual case)
MAX_PARTS = 256  # parts per row at most (every program of launch 3 reads all its row's counts)
MIN_CAP = 16384  # the per-row bracket list holds at least this many candidates (and at least 8 k)
CUTS_WARPS = 8  # launch 1 (one program per row: latency-bound, so many warps share its sample)
PASS_WARPS = 8  # launches 2 and 3: four scores per thread per step; 4 warps would need ~160 registers
LANES = 32 * PASS_WARPS  # launch 3 ranks a block as [BLOCK // LANES, LANES]: one column per thread
MAX_LISTED_HEAD = 125  # `rows` is passed as two 63-bit masks

# Order-preserving int32 keys: the +inf cut lies above every selectable key (the largest is +inf's,
# 0x7F800000), the -inf cut at or below all of them; non-selectable scores get KEY_MIN.
KEY_MIN = tl.constexpr(-(2**31))
KEY_TOP = tl.constexpr(2**31 - 1)


@triton.jit
def _keys(x):
    """Order-preserving int32 keys of float32 scores, and which are selectable (> -inf; NaN is not).
    -0.0 is folded onto +0.0 so that keys tie exactly when the floats compare equal."""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = tl.where(key == -1, 0, key)  # -0.0 has key -1 (no other float does)
    return key, x > float("-inf")


@triton.jit
def _row_setup(
    row, rows_per_batch, mask0, mask1, num_heads, lengths_ptr, starts_ptr, sink, recent, ALL_HEADS: tl.constexpr
):
    """(batch index, head index, candidate count, first candidate's slot) of selection row ``row``.

    The listed heads arrive as two 63-bit masks (no device copy of a host list, so nothing to capture); the
    i-th listed head of a batch row is the i-th set bit."""
    b = row // rows_per_batch
    i = row % rows_per_batch
    if ALL_HEADS:
        h = i
    else:
        h = i * 0
        seen = i * 0
        wide = tl.full([], 0, tl.int64)  # the masks may arrive as int32 or as specialised constants
        for bit in range(0, num_heads):
            word = tl.where(bit < 63, wide + mask0, wide + mask1)
            on = ((word >> tl.where(bit < 63, bit, bit - 63)) & 1).to(tl.int32)
            h = tl.where((on == 1) & (seen == i), bit, h)
            seen += on
    length = tl.load(lengths_ptr + b)
    start = tl.load(starts_ptr + b)
    n = tl.maximum(length - recent - sink, 0)
    return b.to(tl.int64), h.to(tl.int64), n, (start + sink).to(tl.int64)


@triton.jit
def _row_budget(k, b, kpr_ptr, HAS_KPR: tl.constexpr):
    k_row = k + b.to(tl.int32) * 0
    if HAS_KPR:
        k_row = tl.minimum(k_row, tl.maximum(tl.load(kpr_ptr + b), 0))
    return k_row


@triton.jit
def _shift_for(span, BINS: tl.constexpr):
    """Smallest power-of-two bin width (as a shift) that covers ``span + 1`` keys with BINS bins."""
    shift = span * 0
    while (span >> shift) >= BINS:
        shift += 1
    return shift


@triton.jit
def _bin_counts(value, ok, lo, hi, shift, BINS: tl.constexpr):
    """Histogram of the values in [lo, hi], bins of 2**shift values from lo."""
    inside = ok & (value >= lo) & (value <= hi)
    hist = tl.histogram(tl.where(inside, ((value - lo) >> shift).to(tl.int32), 0), BINS)
    # The others (padding lanes too) went to bin 0 as well: take them out (no histogram mask in older Triton 3).
    return hist - tl.where(tl.arange(0, BINS) == 0, tl.sum((inside == 0).to(tl.int32), axis=0), 0)


@triton.jit
def _narrow(hist, lo, hi, shift, above, need, BINS: tl.constexpr):
    """One level: keep the bin that holds the need-th largest value (``above`` values lie over ``hi``). Returns
    the new (lo, hi, above), and done = 1 with ``threshold`` when a bin edge splits the values exactly (take
    the values above the threshold)."""
    bins = tl.arange(0, BINS)
    at_least = above + tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # values >= each bin's lower edge
    target = tl.sum((at_least >= need).to(tl.int32), axis=0) - 1
    in_target = tl.sum(tl.where(bins == target, hist, 0), axis=0)
    over_target = tl.sum(tl.where(bins == target, at_least, 0), axis=0) - in_target
    edge = lo + (target.to(tl.int64) << shift)
    done = over_target + in_target == need
    hi = tl.where(done, hi, tl.minimum(hi, edge + (1 << shift) - 1))
    lo = tl.where(done, lo, edge)
    above = tl.where(done, above, over_target)
    return lo, hi, above, done.to(tl.int32), edge - 1


@triton.jit
def _cuts_kernel(
    scores_ptr,
    lengths_ptr,
    starts_ptr,
    kpr_ptr,
    cuts_ptr,
    tickets_ptr,
    mask0,
    mask1,
    rows_per_batch,
    num_heads,
    k,
    sink,
    recent,
    stride_b,
    stride_h,
    SAMPLE: tl.constexpr,
    CUTS: tl.constexpr,
    SLOTS: tl.constexpr,
    BINS: tl.constexpr,
    LEVELS: tl.constexpr,
    ALL_HEADS: tl.constexpr,
    HAS_KPR: tl.constexpr,
):
    tl.static_assert(CUTS == 8, "the rank offsets below are written for 8 cuts")
    row = tl.program_id(0)
    b, h, n, first = _row_setup(
        row, rows_per_batch, mask0, mask1, num_heads, lengths_ptr, starts_ptr, sink, recent, ALL_HEADS
    )
    tl.store(tickets_ptr + row, 0)  # launch 3's ticket: reset here, by the same call, before anyone takes it
    k_row = _row_budget(k, b, kpr_ptr, HAS_KPR)
    base = scores_ptr + b * stride_b + h * stride_h + first

    # The sample: every candidate when there are at most SAMPLE, else one per stratum of n / SAMPLE, at a hashed
    # offset (a fixed stride could alias with periodic structure in the scores).
    j = tl.arange(0, SAMPLE)
    exact = n <= SAMPLE
    n64 = n.to(tl.int64)
    stratum = (j.to(tl.int64) * n64) // SAMPLE
    size = ((j + 1).to(tl.int64) * n64) // SAMPLE - stratum
    jitter = (((j * 1103515245 + 12345) >> 7) & 0xFFFFF).to(tl.int64)
    idx = tl.where(exact, j.to(tl.int64), stratum + jitter % tl.maximum(size, 1))
    valid = idx < n64
    key, sel = _keys(tl.load(base + idx, mask=valid, other=float("-inf")))
    sel = sel & valid
    key = tl.where(sel, key, KEY_MIN)
    picked = tl.sum(sel.to(tl.int32), axis=0)

    # Target sample ranks around r = k_row * (sample size / n): the k-th best of the row sits near sample rank r
    # give or take sqrt(r) (binomial); offsets -4..+8 standard deviations, more room below (a bracket above
    # the top cut holds at most ~k candidates, one below the bottom cut can hold the whole row).
    taken = tl.minimum(n, SAMPLE).to(tl.float32)
    r = k_row.to(tl.float32) * taken / tl.maximum(n, 1).to(tl.float32)
    spread = tl.sqrt(r * tl.maximum(1.0 - r / tl.maximum(taken, 1.0), 0.0)) + 1.0
    spread = tl.where(exact, 0.5, spread)  # the whole row is the sample: its ranks are the row's
    c = tl.arange(0, CUTS)
    offset = tl.where(c < 3, -(1 << tl.maximum(2 - c, 0)), tl.where(c == 3, 0, 1 << tl.maximum(c - 4, 0)))
    rank = (r + spread * offset.to(tl.float32) + 0.5).to(tl.int32)
    rank = tl.minimum(tl.maximum(rank, 1), tl.maximum(picked, 1))

    # Starting key range: [a lower bound for the deepest target rank, the sample's largest key]. The smallest of
    # G interleaved group maxima has G keys at or above it, so with G >= the deepest rank it is a bound.
    deepest = tl.max(rank, axis=0)
    smallest = tl.min(tl.where(sel, key, KEY_TOP), axis=0)
    g64 = tl.min(tl.max(tl.reshape(key, [SAMPLE // 64, 64]), axis=0), axis=0)
    g128 = tl.min(tl.max(tl.reshape(key, [SAMPLE // 128, 128]), axis=0), axis=0)
    g256 = tl.min(tl.max(tl.reshape(key, [SAMPLE // 256, 256]), axis=0), axis=0)
    bound = tl.where(deepest <= 64, g64, tl.where(deepest <= 128, g128, tl.where(deepest <= 256, g256, smallest)))
    lo = tl.maximum(bound, smallest).to(tl.int64)
    hi = tl.maximum(tl.max(key, axis=0).to(tl.int64), lo)  # an empty sample: lo = KEY_TOP, one-key range

    key64 = key.to(tl.int64)
    cut = lo + c.to(tl.int64) * 0
    for level in tl.static_range(LEVELS):
        shift = _shift_for(hi - lo, BINS)
        hist = _bin_counts(key64, sel, lo, hi, shift, BINS)
        above = tl.sum((sel & (key64 > hi)).to(tl.int32), axis=0)
        # at_least[i]: sample keys >= the lower edge of bin i. The target rank's bin: the last with enough.
        at_least = above + tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
        bin_of = tl.sum((at_least[None, :] >= rank[:, None]).to(tl.int32), axis=1) - 1
        bin_of = tl.maximum(bin_of, 0).to(tl.int64)
        cut = lo + (bin_of << shift)  # non-increasing: ranks grow with c
        if level < LEVELS - 1:  # zoom onto the bins that hold the target ranks
            top = tl.max(bin_of, axis=0)
            lo_next = lo + (tl.min(bin_of, axis=0) << shift)
            hi = tl.minimum(hi, lo + ((top + 1) << shift) - 1)
            lo = lo_next
    slots = cuts_ptr + row * SLOTS
    tl.store(slots, KEY_TOP)
    tl.store(slots + 1 + c, cut.to(tl.int32))
    tl.store(slots + CUTS + 1, KEY_MIN)


@triton.jit
def _count_kernel(
    scores_ptr,
    lengths_ptr,
    starts_ptr,
    cuts_ptr,
    counts_ptr,
    mask0,
    mask1,
    rows_per_batch,
    num_heads,
    sink,
    recent,
    stride_b,
    stride_h,
    part_len,
    CUTS: tl.constexpr,
    SLOTS: tl.constexpr,
    BLOCK: tl.constexpr,
    ALL_HEADS: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    b, h, n, first = _row_setup(
        row, rows_per_batch, mask0, mask1, num_heads, lengths_ptr, starts_ptr, sink, recent, ALL_HEADS
    )
    base = scores_ptr + b * stride_b + h * stride_h + first
    cut = tl.load(cuts_ptr + row * SLOTS + 1 + tl.arange(0, CUTS))
    lanes = tl.arange(0, BLOCK)
    above = tl.zeros([CUTS, BLOCK], tl.int32)  # per-lane counts, reduced once at the end
    selectable = tl.zeros([BLOCK], tl.int32)
    largest = tl.full([BLOCK], KEY_MIN, tl.int32)
    begin = part * part_len
    end = tl.minimum(begin + part_len, n)
    for off in range(begin, end, BLOCK):
        i = off + lanes
        valid = i < end
        key, sel = _keys(tl.load(base + i, mask=valid, other=float("-inf")))
        sel = sel & valid
        key = tl.where(sel, key, KEY_MIN)  # below every cut (cuts are > KEY_MIN)
        above += (key[None, :] >= cut[:, None]).to(tl.int32)
        selectable += sel.to(tl.int32)
        largest = tl.maximum(largest, key)
    slots = counts_ptr + (row * tl.num_programs(1) + part).to(tl.int64) * SLOTS
    tl.store(slots, 0)
    tl.store(slots + 1 + tl.arange(0, CUTS), tl.sum(above, axis=1))
    tl.store(slots + CUTS + 1, tl.sum(selectable, axis=0))
    tl.store(slots + CUTS + 2, tl.max(largest, axis=0))


@triton.jit
def _source(off, count, lanes, listed_lanes, list_pos, list_key, base, sink, lower, upper):
    """One block of the bracket's candidates: from the row's list, or (the list was not kept) straight from the
    scores in position order, filtered to the bracket [lower, upper). Returns (positions, keys, which are real)."""
    i = off + lanes
    valid = i < count
    pos = tl.load(list_pos + i, mask=valid & listed_lanes, other=0, cache_modifier=".cg")
    listed_key = tl.load(list_key + i, mask=valid & listed_lanes, other=0, cache_modifier=".cg")
    scanned_key, sel = _keys(tl.load(base + i, mask=valid & (listed_lanes == 0), other=float("-inf")))
    in_bracket = sel & (scanned_key >= lower) & (scanned_key < upper)
    key = tl.where(listed_lanes, listed_key, scanned_key)
    ok = valid & (listed_lanes | in_bracket)
    return tl.where(listed_lanes, pos, sink + i), key.to(tl.int64), ok


@triton.jit
def _narrow_in_registers(value, ok, need, lo, hi, BINS: tl.constexpr):
    """Histogram levels over one block held in registers until [lo, hi] is one value or an edge splits exactly.
    Returns (lo, hi, above, done, threshold) as :func:`_narrow`."""
    above = need * 0
    done = need * 0
    threshold = lo
    while (lo < hi) & (done == 0):
        shift = _shift_for(hi - lo, BINS)
        hist = _bin_counts(value, ok, lo, hi, shift, BINS)
        lo, hi, above, done, threshold = _narrow(hist, lo, hi, shift, above, need, BINS)
    return lo, hi, above, done, threshold


@triton.jit
def _narrow_in_blocks(
    stage,
    tie_key,
    need,
    lo,
    hi,
    count,
    n,
    lanes,
    listed_lanes,
    list_pos,
    list_key,
    base,
    sink,
    lower,
    upper,
    BLOCK: tl.constexpr,
    BINS: tl.constexpr,
):
    """:func:`_narrow_in_registers` over ``count`` candidates read block by block at every level. Stage 0 narrows
    the keys; stage 1 the reversed positions ``sink + n - 1 - pos`` of the candidates whose key is ``tie_key``."""
    by_key = (lanes * 0 + stage) == 0
    above = need * 0
    done = need * 0
    threshold = lo
    while (lo < hi) & (done == 0):
        shift = _shift_for(hi - lo, BINS)
        hist = tl.zeros([BINS], tl.int32)
        for off in range(0, count, BLOCK):
            pos, key, ok = _source(off, count, lanes, listed_lanes, list_pos, list_key, base, sink, lower, upper)
            value = tl.where(by_key, key, (sink + n - 1 - pos).to(tl.int64))
            hist += _bin_counts(value, ok & (by_key | (key == tie_key)), lo, hi, shift, BINS)
        lo, hi, above, done, threshold = _narrow(hist, lo, hi, shift, above, need, BINS)
    return lo, hi, above, done, threshold


@triton.jit
def _take(pos, key, ok, n, sink, strict, tie_key, reversed_cut, taken, written, out_row):
    """Write the keys over ``strict`` and the ties (key ``tie_key``) whose reversed position is over
    ``reversed_cut``, after the ``written + taken`` entries already there; returns the new ``taken``."""
    ties = (key == tie_key) & ((sink + n - 1 - pos) > reversed_cut)
    take = ok & ((key > strict) | ties)
    tl.store(out_row + written + taken + tl.cumsum(take.to(tl.int32), axis=0) - 1, pos, mask=take)
    return taken + tl.sum(take.to(tl.int32), axis=0)


@triton.jit
def _pick_from_bracket(
    base,
    list_pos,
    list_key,
    out_row,
    listed,
    count,
    n,
    sink,
    lower,
    upper,
    largest,
    need,
    written,
    BLOCK: tl.constexpr,
    BINS: tl.constexpr,
):
    """Write the best ``need`` of the bracket's ``count`` candidates (keys in [lower, upper)) at
    ``out_row[written:]``.

    Stage 0: histogram levels narrow a key range that always holds the need-th best key, until a bin edge
    splits the candidates exactly (take everything above it) or one key T is left: the keys over T are taken
    and the rest are ties at T. Stage 1 then picks the lowest positions among those ties the same way, on
    reversed positions (distinct, so it always ends on an exact split). A bracket of one block (the usual case)
    stays in registers throughout; a longer one is re-read block by block at every level."""
    lanes = tl.arange(0, BLOCK)
    listed_lanes = (lanes * 0 + listed.to(tl.int32)) != 0  # per-lane copy: the interpreter dislikes tensor & scalar
    lo = lower.to(tl.int64)
    hi = tl.minimum(upper.to(tl.int64) - 1, largest.to(tl.int64))
    no_tie = tl.full([], KEY_TOP, tl.int64)  # no selectable key equals it
    if count <= BLOCK:
        pos, key, ok = _source(0, count, lanes, listed_lanes, list_pos, list_key, base, sink, lower, upper)
        lo, hi, above, done, threshold = _narrow_in_registers(key, ok, need, lo, hi, BINS)
        strict = tl.where(done != 0, threshold, lo)
        tie_key = tl.where(done != 0, no_tie, lo)
        ties = tl.where(done != 0, 0, need - above)
        top = tl.where(ties > 0, n - 1, 0).to(tl.int64)
        reversed_pos = (sink + n - 1 - pos).to(tl.int64)
        p_lo, _, _, p_done, p_threshold = _narrow_in_registers(
            reversed_pos, ok & (key == tie_key), ties, top * 0, top, BINS
        )
        reversed_cut = tl.where(p_done != 0, p_threshold, p_lo - 1)
        _take(pos, key, ok, n, sink, strict, tie_key, reversed_cut, need * 0, written, out_row)
    else:
        lo, hi, above, done, threshold = _narrow_in_blocks(
            0, no_tie, need, lo, hi, count, n, lanes, listed_lanes, list_pos, list_key, base, sink, lower, upper,
            BLOCK, BINS,
        )  # fmt: skip
        strict = tl.where(done != 0, threshold, lo)
        tie_key = tl.where(done != 0, no_tie, lo)
        ties = tl.where(done != 0, 0, need - above)
        top = tl.where(ties > 0, n - 1, 0).to(tl.int64)
        p_lo, _, _, p_done, p_threshold = _narrow_in_blocks(
            1, tie_key, ties, top * 0, top, count, n, lanes, listed_lanes, list_pos, list_key, base, sink, lower,
            upper, BLOCK, BINS,
        )  # fmt: skip
        reversed_cut = tl.where(p_done != 0, p_threshold, p_lo - 1)
        taken = need * 0
        off = need * 0
        while (off < count) & (taken < need):  # stops early: many ties at the top end after a few blocks
            pos, key, ok = _source(off, count, lanes, listed_lanes, list_pos, list_key, base, sink, lower, upper)
            taken = _take(pos, key, ok, n, sink, strict, tie_key, reversed_cut, taken, written, out_row)
            off += BLOCK


@triton.jit
def _select_kernel(
    scores_ptr,
    lengths_ptr,
    starts_ptr,
    kpr_ptr,
    cuts_ptr,
    counts_ptr,
    tickets_ptr,
    list_pos_ptr,
    list_key_ptr,
    out_ptr,
    mask0,
    mask1,
    rows_per_batch,
    num_heads,
    k,
    sink,
    recent,
    stride_b,
    stride_h,
    stride_ob,
    stride_oh,
    part_len,
    cap,
    CUTS: tl.constexpr,
    SLOTS: tl.constexpr,
    PARTS_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    LANES: tl.constexpr,
    PICK: tl.constexpr,
    BINS: tl.constexpr,
    ALL_HEADS: tl.constexpr,
    HAS_KPR: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    parts = tl.num_programs(1)
    b, h, n, first = _row_setup(
        row, rows_per_batch, mask0, mask1, num_heads, lengths_ptr, starts_ptr, sink, recent, ALL_HEADS
    )
    k_row = _row_budget(k, b, kpr_ptr, HAS_KPR)
    base = scores_ptr + b * stride_b + h * stride_h + first
    out_row = out_ptr + b * stride_ob + h * stride_oh

    # The row's counts (every program of the row reads them and reaches the same decision).
    p = tl.arange(0, PARTS_PAD)
    q = tl.arange(0, SLOTS)
    counted = q <= CUTS + 1
    table_at = counts_ptr + (row * parts + p).to(tl.int64)[:, None] * SLOTS + q[None, :]
    table = tl.load(table_at, mask=(p < parts)[:, None] & counted[None, :], other=0)
    at_or_above = tl.sum(table, axis=0)  # [SLOTS]: candidates >= each cut; non-decreasing over 0..CUTS + 1
    largest = tl.max(
        tl.load(counts_ptr + (row * parts + p).to(tl.int64) * SLOTS + CUTS + 2, mask=p < parts, other=KEY_MIN), axis=0
    )
    k_eff = tl.minimum(k_row, tl.sum(tl.where(q == CUTS + 1, at_or_above, 0), axis=0))
    # Bracket: cut j is the first with >= k_eff candidates at or above it; cut j - 1 has fewer.
    j = tl.min(tl.where(counted & (at_or_above >= k_eff), q, SLOTS), axis=0)
    cut = tl.load(cuts_ptr + row * SLOTS + q, mask=counted, other=0)
    lower = tl.sum(tl.where(q == j, cut, 0), axis=0)
    upper = tl.where(j == 0, KEY_TOP, tl.sum(tl.where(q == j - 1, cut, 0), axis=0))
    over = tl.sum(tl.where(q == j - 1, at_or_above, 0), axis=0)  # candidates >= upper (all selected)
    in_bracket = tl.sum(tl.where(q == j, at_or_above, 0), axis=0) - over
    need = k_eff - over
    take_all = need == in_bracket  # the bracket is selected whole (also: nothing to select at all)
    sure_slot = tl.where(take_all, j, j - 1)
    sure_cut = tl.where(take_all, lower, upper)
    pick = need < in_bracket
    listed = pick & (in_bracket <= cap)
    # Where this part's selected and listed candidates go: after those of the parts before it.
    before = (p < part)[:, None]
    sure_at = tl.sum(tl.sum(tl.where(before & (q[None, :] == sure_slot), table, 0), axis=1), axis=0)
    bracket_cols = tl.where(q[None, :] == j, table, 0) - tl.where(q[None, :] == j - 1, table, 0)
    list_at = tl.sum(tl.sum(tl.where(before, bracket_cols, 0), axis=1), axis=0)

    list_pos = list_pos_ptr + row.to(tl.int64) * cap
    list_key = list_key_ptr + row.to(tl.int64) * cap
    # Blocks as [BLOCK // LANES, LANES] tiles: element (r, c) is score off + r * LANES + c, and each lane (column)
    # holds its own rows. Ranks go column by column: a lane adds up its rows in registers and one prefix sum runs
    # across the lanes, a quarter of the cross-lane work of a prefix sum over every element. (So the order is
    # not the position order; it is fixed, hence the output is deterministic.)
    tile = tl.arange(0, BLOCK // LANES)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    listed_tile = (tile * 0 + listed.to(tl.int32)) != 0
    begin = part * part_len
    end = tl.minimum(begin + part_len, n)
    for off in range(begin, end, BLOCK):
        i = off + tile
        valid = i < end
        key, sel = _keys(tl.load(base + i, mask=valid, other=float("-inf")))
        sel = sel & valid
        sure = sel & (key >= sure_cut)
        keep = sel & (key >= lower) & (key < upper) & listed_tile
        # One prefix sum ranks both kinds: selected in the low 16 bits, listed in the high (BLOCK < 2**16).
        packed = sure.to(tl.int32) + (keep.to(tl.int32) << 16)
        per_lane = tl.sum(packed, axis=0)
        ranks = (tl.cumsum(per_lane, axis=0) - per_lane)[None, :] + tl.cumsum(packed, axis=0)
        tl.store(out_row + sure_at + (ranks & 0xFFFF) - 1, sink + i, mask=sure)
        place = list_at + (ranks >> 16) - 1
        tl.store(list_pos + place, sink + i, mask=keep)
        tl.store(list_key + place, key, mask=keep)
        totals = tl.sum(per_lane, axis=0)
        sure_at += totals & 0xFFFF
        list_at += totals >> 16

    # The last part of the row to finish completes it: the list is whole once every part has taken its ticket.
    tl.debug_barrier()  # every thread's stores are issued before the ticket (released with it)
    ticket = tl.atomic_add(tickets_ptr + row, 1, sem="acq_rel")
    if ticket == parts - 1:
        if pick:
            count = tl.where(listed, in_bracket, n)
            _pick_from_bracket(
                base, list_pos, list_key, out_row, listed, count, n, sink, lower, upper, largest, need, over,
                PICK, BINS,
            )  # fmt: skip
        lanes = tl.arange(0, BLOCK)
        for off in range((k_eff // BLOCK) * BLOCK, k, BLOCK):
            e = off + lanes
            tl.store(out_row + e, tl.full([BLOCK], -1, tl.int32), mask=(e >= k_eff) & (e < k))


def _check(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    k: int,
    sink: int,
    recent: int,
    k_per_row: torch.Tensor | None,
    rows: Sequence[int] | None,
    out: torch.Tensor | None,
) -> list[int]:
    """Validate the inputs (shapes, dtypes, devices: host facts only); returns the listed heads."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.dtype != torch.float32:
        got = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float32 tensor [B, H, S], got {got}; convert with scores.float()")
    batch, heads, slots = scores.shape
    if slots > 1 and scores.stride(-1) != 1:
        raise ValueError(f"scores needs a unit stride on its last (token) dim, got strides {scores.stride()}")
    device = scores.device
    if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
        raise ValueError(f"scores on {device}: the kernel needs a CUDA device, or TRITON_INTERPRET=1 on CPU")
    for name, t in (("lengths", lengths), ("starts", starts), ("k_per_row", k_per_row)):
        if t is None and name == "k_per_row":
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (batch,):
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an int32 tensor [B={batch}], got {got}; use .to(torch.int32)")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but scores on {device}; move it with .to(scores.device)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a host int >= 1 (the list width), got {k!r}")
    for name, value in (("sink", sink), ("recent", recent)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a host int >= 0, got {value!r}")
    if rows is None:
        listed = list(range(heads))
    else:
        listed = [int(r) for r in rows]
        bad = [r for r in listed if not 0 <= r < heads]
        if bad or len(set(listed)) != len(listed):
            raise ValueError(f"rows must be distinct head indices in [0, {heads}), got {list(rows)}")
        if listed and max(listed) > MAX_LISTED_HEAD and listed != list(range(heads)):
            raise ValueError(
                f"rows lists head {max(listed)}; a subset of heads supports indices up to {MAX_LISTED_HEAD} "
                "(pass the selected heads' scores as their own tensor with rows=None instead)"
            )
    if out is not None:
        if out.dtype != torch.int32 or tuple(out.shape) != (batch, heads, k) or out.device != device:
            raise ValueError(
                f"out must be int32 [B={batch}, H={heads}, k={k}] on {device}, got {out.dtype} {tuple(out.shape)} "
                f"on {out.device}"
            )
        if k > 1 and out.stride(-1) != 1:
            raise ValueError(f"out needs a unit stride on its last dim, got strides {out.stride()}")
    return listed


def _part_len(candidates: int, num_rows: int, device: torch.device, block: int) -> int:
    """Scores per program of launches 2 and 3: about four programs per SM over all rows, whole blocks, at most
    MAX_PARTS parts per row (each program of launch 3 reads its row's counts of every part)."""
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 16
    per_program = triton.next_power_of_2(max(1, -(-candidates * num_rows // target)))
    length = min(max(per_program, block), 16 * block)
    return max(length, block * -(-candidates // (block * MAX_PARTS)))


def select_top_tokens(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    k: int,
    *,
    sink: int = 0,
    recent: int = 0,
    k_per_row: torch.Tensor | None = None,
    rows: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The top-``k`` candidates of each row of ``scores`` [B, H, S] float32; returns ``out`` int32 [B, H, k].

    Row (b, h)'s candidates are the relative positions ``r`` with ``sink <= r < lengths[b] - recent``, scored
    ``scores[b, h, starts[b] + r]`` (``lengths``, ``starts``: int32 [B] on the scores' device, with
    ``starts[b] + lengths[b] <= S``; other slots are never read). Selectable: score > -inf (not -inf, not NaN).
    Entry values are relative positions ``r``. ``k_per_row`` (int32 [B], optional) lowers row b's budget to
    ``k_per_row[b]`` (values above k count as k, below 0 as 0).
    Row (b, h) of the result holds ``min(k, k_per_row[b], selectable)`` positions — the highest scores, ties
    going to the lowest positions — then ``-1``. The positions are not sorted, but their order is deterministic
    (the same inputs give the same list).

    ``rows``: the head indices to compute (host list; default all). Only those rows of ``out`` are written; the
    others keep their contents (``out=None`` and a subset: they are ``-1``). Subsets support heads up to 125.
    ``out``: a preallocated int32 [B, H, k] result (unit stride on the last dim).

    No host reads of device values; grid and scratch sizes depend only on B, len(rows), S, k, sink and recent,
    so the call can be captured in a CUDA graph. Scratch, from torch.empty per call (in a graph: the graph's
    pool): about ``8 * max(8 k, 16384)`` bytes per computed row, 7.6 MB for 32 rows at k = 3712.
    """
    return _select(scores, lengths, starts, k, sink=sink, recent=recent, k_per_row=k_per_row, rows=rows, out=out)


def _select(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    k: int,
    *,
    sink: int = 0,
    recent: int = 0,
    k_per_row: torch.Tensor | None = None,
    rows: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
    block: int = BLOCK,
    part_len: int | None = None,
    cap: int | None = None,
    cut_hook: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """:func:`select_top_tokens` with the tuning knobs the tests turn (block, part length, list capacity) and a
    hook that may rewrite the cut table [rows, SLOTS] between launches 1 and 2 (slot 0 KEY_TOP, slots
    1..CUTS non-increasing keys > KEY_MIN, slot CUTS + 1 KEY_MIN): the result must not depend on it."""
    listed = _check(scores, lengths, starts, k, sink, recent, k_per_row, rows, out)
    batch, heads, slots = scores.shape
    all_heads = listed == list(range(heads))
    if out is None:  # every row written, or the unlisted ones must read as empty
        shape = (batch, heads, k)
        out = (
            torch.empty(shape, dtype=torch.int32, device=scores.device)
            if all_heads
            else torch.full(shape, -1, dtype=torch.int32, device=scores.device)
        )
    num_rows = batch * len(listed)
    if num_rows == 0:
        return out
    candidates = max(slots - sink - recent, 0)  # a host bound on every row's candidate count
    part_len = part_len or _part_len(candidates, num_rows, scores.device, block)
    if part_len % block or not 16 <= block <= 32768 or block & (block - 1):
        raise ValueError(f"block {block} must be a power of two in [16, 32768] and divide part_len {part_len}")
    parts = max(1, -(-candidates // part_len))
    cap = max(1, min(candidates, cap or max(8 * k, MIN_CAP)))
    mask = sum(1 << h for h in listed) if not all_heads else 0
    mask0, mask1 = mask & ((1 << 63) - 1), mask >> 63

    # One scratch allocation, carved up: cuts, counts, tickets, then the bracket lists (positions, keys).
    sizes = (num_rows * SLOTS, num_rows * parts * SLOTS, num_rows, num_rows * cap, num_rows * cap)
    scratch = torch.empty(sum(sizes), dtype=torch.int32, device=scores.device)
    cuts, counts, tickets, list_pos, list_key = torch.split(scratch, sizes)
    kpr = k_per_row if k_per_row is not None else lengths  # never read without k_per_row
    heads_args = (mask0, mask1, len(listed), heads)
    strides = (scores.stride(0), scores.stride(1))

    _cuts_kernel[(num_rows,)](
        scores, lengths, starts, kpr, cuts, tickets, *heads_args, k, sink, recent, *strides,
        SAMPLE=SAMPLE, CUTS=CUTS, SLOTS=SLOTS, BINS=BINS, LEVELS=ZOOM_LEVELS, ALL_HEADS=all_heads,
        HAS_KPR=k_per_row is not None, num_warps=CUTS_WARPS,
    )  # fmt: skip
    if cut_hook is not None:
        cut_hook(cuts.view(num_rows, SLOTS))
    _count_kernel[(num_rows, parts)](
        scores, lengths, starts, cuts, counts, *heads_args, sink, recent, *strides, part_len,
        CUTS=CUTS, SLOTS=SLOTS, BLOCK=block, ALL_HEADS=all_heads, num_warps=PASS_WARPS,
    )  # fmt: skip
    _select_kernel[(num_rows, parts)](
        scores, lengths, starts, kpr, cuts, counts, tickets, list_pos, list_key, out, *heads_args, k, sink,
        recent, *strides, out.stride(0), out.stride(1), part_len, cap,
        CUTS=CUTS, SLOTS=SLOTS, PARTS_PAD=triton.next_power_of_2(parts), BLOCK=block,
        LANES=min(block, LANES), PICK=PICK_BLOCKS * block, BINS=BINS,
        ALL_HEADS=all_heads, HAS_KPR=k_per_row is not None, num_warps=PASS_WARPS,
    )  # fmt: skip
    return out


def select_top_tokens_reference(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    k: int,
    *,
    sink: int = 0,
    recent: int = 0,
    k_per_row: torch.Tensor | None = None,
    rows: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-torch definition of :func:`select_top_tokens` (reads lengths back: not for CUDA graphs).

    Same arguments and result, except that each row's positions come sorted ascending. A stable descending sort
    of the selectable candidates' scores puts equal scores in position order, so the first ``k_row`` are the
    kernel's set, ties included."""
    listed = _check_reference(scores, k, rows)
    batch, heads, _ = scores.shape
    if out is None:
        out = torch.full((batch, heads, k), -1, dtype=torch.int32, device=scores.device)
    lengths_host, starts_host = lengths.tolist(), starts.tolist()
    budgets = k_per_row.tolist() if k_per_row is not None else [k] * batch
    for b in range(batch):
        positions = torch.arange(sink, max(sink, lengths_host[b] - recent), device=scores.device)
        k_row = max(0, min(k, budgets[b]))
        for h in listed:
            values = scores[b, h, starts_host[b] + positions].float()
            selectable = values > float("-inf")  # NaN compares False too
            candidates, values = positions[selectable], values[selectable] + 0.0  # + 0.0: -0.0 becomes 0.0
            order = torch.sort(values, descending=True, stable=True).indices[:k_row]
            chosen = torch.sort(candidates[order]).values.to(torch.int32)
            out[b, h] = -1
            out[b, h, : chosen.numel()] = chosen
    return out


def _check_reference(scores: torch.Tensor, k: int, rows: Sequence[int] | None) -> list[int]:
    if scores.dim() != 3:
        raise ValueError(f"scores must be [B, H, S], got {tuple(scores.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a host int >= 1, got {k!r}")
    heads = scores.shape[1]
    listed = list(range(heads)) if rows is None else [int(r) for r in rows]
    if any(not 0 <= r < heads for r in listed) or len(set(listed)) != len(listed):
        raise ValueError(f"rows must be distinct head indices in [0, {heads}), got {rows}")
    return listed
