"""q . k for every cache slot in one pass over K: the scores the selection layers of TidalDecode and Kascade rank.

In plain torch those scores are an einsum over a float32 copy of K (the reference paths): at 128K tokens that
copy costs more than the attention it serves. This kernel reads K once in its own dtype, multiplies on the
tensor cores with float32 accumulation and writes float32 logits, -inf at slots that hold no real token (left
padding), which is what the reference produces after its mask. Per query head ([B, Hq, S]) or, with
``mean=True``, the mean over each KV head's query heads ([B, Hkv, S]: TidalDecode's per-KV-head option).
One program per (batch row, KV head, tile of slots); the grid depends only on shapes (CUDA-graph safe).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lychee_bench.kernels.lychee_plan import SUPPORTED_HEAD_DIMS
from lychee_bench.kernels.lychee_triton import SUPPORTED_DTYPES, _interpreting

TILE = 128  # cache slots per program
WARPS = 4


@triton.jit
def _token_logits_kernel(
    q_ptr,
    k_ptr,
    lengths_ptr,
    starts_ptr,
    out_ptr,
    slots,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_ob,
    stride_oh,
    HKV: tl.constexpr,
    GS: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    MEAN: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    b = (row // HKV).to(tl.int64)
    kvh = row % HKV
    start = tl.load(starts_ptr + b)
    length = tl.load(lengths_ptr + b)
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    slot = tl.program_id(1) * TILE + tl.arange(0, TILE)
    in_cache = slot < slots
    real = in_cache & (slot >= start) & (slot < start + length)
    q = tl.load(q_ptr + b * stride_qb + (kvh * GS + g)[:, None] * stride_qh + d[None, :], mask=(g < GS)[:, None])
    k_rows = k_ptr + b * stride_kb + kvh.to(tl.int64) * stride_kh + slot.to(tl.int64)[:, None] * stride_ks
    k = tl.load(k_rows + d[None, :], mask=real[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # [G_PAD, TILE] float32
    if MEAN:
        mean = tl.sum(tl.where((g < GS)[:, None], qk, 0.0), axis=0) / GS
        mean = tl.where(real, mean, float("-inf"))
        tl.store(out_ptr + b * stride_ob + kvh * stride_oh + slot, mean, mask=in_cache)
    else:
        qk = tl.where(real[None, :], qk, float("-inf"))
        heads = kvh * GS + g
        out = out_ptr + b * stride_ob + heads[:, None] * stride_oh + slot[None, :]
        tl.store(out, qk, mask=(g < GS)[:, None] & in_cache[None, :])


def token_logits(
    q: torch.Tensor, k_cache: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, *, mean: bool = False
) -> torch.Tensor:
    """Logits of ``q`` [B, Hq, D] against every slot of ``k_cache`` [B, Hkv, S, D]: float32 [B, Hq, S] (or
    [B, Hkv, S] group means with ``mean``), -inf outside each sequence's ``lengths`` real tokens that start at
    ``starts`` (int32 [B] on the device)."""
    batch, hq, dim = q.shape
    if k_cache.dim() != 4 or k_cache.shape[0] != batch or k_cache.shape[3] != dim or hq % k_cache.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache {tuple(k_cache.shape)}")
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype:
        raise ValueError(f"dtypes q={q.dtype} k={k_cache.dtype}; need one of {SUPPORTED_DTYPES}, the same")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1:
        raise ValueError("q and k_cache need a contiguous last (head) dimension")
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    out = torch.empty(batch, hkv if mean else hq, slots, device=q.device, dtype=torch.float32)
    dot_in_fp32 = _interpreting() or q.dtype == torch.float32
    _token_logits_kernel[(batch * hkv, triton.cdiv(slots, TILE))](
        q,
        k_cache,
        lengths,
        starts,
        out,
        slots,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        out.stride(0),
        out.stride(1),
        HKV=hkv,
        GS=group,
        G_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPUs
        D=dim,
        TILE=TILE,
        MEAN=mean,
        DOT_IN_FP32=dot_in_fp32,
        INPUT_PRECISION="ieee" if dot_in_fp32 else "tf32",
        num_warps=WARPS,
    )
    return out
