"""Plain-torch definition of one LycheeDecode decode step (LycheeDecode, arXiv 2602.04541).

Everything here is the *definition of correct* for the Triton kernels in this package: readable, runs on CPU,
computes in float32 whatever the input dtype, and returns float32.

Shapes (one decode step, one layer, one new query token per sequence):

- ``q``            [B, Hq, D]          the new token's queries (RoPE applied)
- ``k``, ``v``     [B, Hkv, S_max, D]  the KV cache; the new token is already written at ``lengths[b] - 1``
- ``lengths``      [B] int             valid tokens per sequence (positions ``0 .. lengths[b] - 1``)

Query heads ``h*G .. h*G + G - 1`` share KV head ``h`` (``G = Hq // Hkv``).

Selection scores are the raw logits ``q̄·k`` (no softmax scale), where ``q̄`` is the mean of the group's G query
vectors, as in the paper. A block's score is the max over its valid tokens; blocks past the length score -inf.
Sets are absolute cache positions (or absolute block numbers: block ``j`` is positions ``64j .. 64j + 63``).
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 64
NEG_INF = float("-inf")


def _group_size(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query heads per KV head; refuses shapes where the query heads do not split evenly."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    return hq // hkv


def valid_token_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, S_max] bool: True for positions below each sequence's length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention of each query head over the tokens where ``keep`` [B, Hkv, S] is True (fp32 out)."""
    g = _group_size(q, k)
    batch, hkv, _, dim = k.shape
    qg = q.float().view(batch, hkv, g, dim)
    logits = torch.einsum("bhgd,bhsd->bhgs", qg, k.float()) * scale
    logits = logits.masked_fill(~keep[:, :, None, :], NEG_INF)
    probs = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhgs,bhsd->bhgd", probs, v.float())
    return out.reshape(batch, hkv * g, dim)


def dense_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """Full attention of every query head over its sequence's ``lengths[b]`` tokens. Returns [B, Hq, D] fp32."""
    keep = valid_token_mask(lengths, k.shape[2])[:, None, :].expand(-1, k.shape[1], -1)
    return _masked_attention(q, k, v, keep, scale)


def token_scores(q: torch.Tensor, k: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Selection score of every token: ``q̄·k`` with q̄ the mean of the group's queries (raw logit, unscaled).

    Returns [B, Hkv, S_max] fp32 with -inf past each sequence's length.
    """
    g = _group_size(q, k)
    batch, hkv, max_len, dim = k.shape
    q_mean = q.float().view(batch, hkv, g, dim).mean(dim=2)
    scores = torch.einsum("bhd,bhsd->bhs", q_mean, k.float())
    return scores.masked_fill(~valid_token_mask(lengths, max_len)[:, None, :], NEG_INF)


def block_max_scores(
    q: torch.Tensor, k: torch.Tensor, lengths: torch.Tensor, block_size: int = BLOCK_SIZE
) -> torch.Tensor:
    """Block score = max of ``q̄·k`` over the block's valid tokens (the paper's hardware-efficient top-k).

    Returns [B, Hkv, ceil(S_max / block_size)] fp32; blocks wholly past the length are -inf.
    """
    scores = token_scores(q, k, lengths)
    batch, hkv, max_len = scores.shape
    num_blocks = -(-max_len // block_size)
    padded = scores.new_full((batch, hkv, num_blocks * block_size), NEG_INF)
    padded[..., :max_len] = scores
    return padded.view(batch, hkv, num_blocks, block_size).amax(dim=-1)


def select_top_blocks(scores: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Indices of the ``num_blocks`` highest-scoring blocks per (b, head), best first.

    ``scores`` [B, H, NB] as from :func:`block_max_scores`. Returns [B, H, min(num_blocks, NB)] int32; blocks
    scoring -inf (past the length) are never chosen, so a short sequence gets fewer blocks, padded with -1 at
    the end. Ties are broken by ``torch.topk`` (callers compare sets allowing ties).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    k = min(num_blocks, scores.shape[-1])
    values, index = torch.topk(scores.float(), k, dim=-1)
    return torch.where(values > NEG_INF, index, -1).to(torch.int32)


def block_keep_mask(
    block_idx: torch.Tensor, lengths: torch.Tensor, max_len: int, block_size: int = BLOCK_SIZE
) -> torch.Tensor:
    """[B, H, S_max] bool: tokens inside the listed blocks (-1 entries ignored) and below the length."""
    batch, heads, _ = block_idx.shape
    num_blocks = -(-max_len // block_size)
    chosen = torch.zeros(batch, heads, num_blocks + 1, dtype=torch.bool, device=block_idx.device)
    # -1 padding lands in the spare last column, which is dropped.
    chosen.scatter_(-1, torch.where(block_idx >= 0, block_idx, num_blocks).long(), True)
    per_token = chosen[..., :num_blocks].repeat_interleave(block_size, dim=-1)[..., :max_len]
    return per_token & valid_token_mask(lengths, max_len)[:, None, :]


def sparse_block_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    block_idx: torch.Tensor,
    scale: float,
    block_size: int = BLOCK_SIZE,
) -> torch.Tensor:
    """Each KV head's query heads attend only to the tokens of the blocks in ``block_idx`` [B, Hkv, k] (int,
    -1 padding), restricted to positions below the length. Returns [B, Hq, D] fp32."""
    keep = block_keep_mask(block_idx, lengths, k.shape[2], block_size)
    return _masked_attention(q, k, v, keep, scale)


def select_top_tokens(
    scores: torch.Tensor, lengths: torch.Tensor, budget: int, sink: int = 128, recent: int = 256
) -> torch.Tensor:
    """Token-granularity selection: ``budget`` tokens per (b, head) = the first ``sink`` tokens, the last
    ``recent`` tokens (the current one included) and the highest-scoring rest.

    ``scores`` [B, H, S_max] (e.g. :func:`token_scores`). Returns keep [B, H, S_max] bool. A sequence no longer
    than the budget keeps all its tokens.
    """
    if budget < sink + recent:
        raise ValueError(f"budget ({budget}) must be at least sink + recent ({sink} + {recent})")
    batch, heads, max_len = scores.shape
    pos = torch.arange(max_len, device=scores.device)[None, :]
    valid = pos < lengths[:, None]
    forced = valid & ((pos < sink) | (pos >= lengths[:, None] - recent))  # [B, S]
    candidates = scores.float().masked_fill(~(valid & ~forced)[:, None, :], NEG_INF)
    free = budget - sink - recent
    keep = forced[:, None, :].expand(batch, heads, max_len).clone()
    if free > 0:
        values, index = torch.topk(candidates, min(free, max_len), dim=-1)
        chosen = torch.zeros_like(keep)
        chosen.scatter_(-1, index, values > NEG_INF)
        keep |= chosen
    everything = (lengths <= budget)[:, None, None]
    return torch.where(everything, valid[:, None, :].expand_as(keep), keep)


def sparse_token_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    tokens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Each KV head's query heads attend to exactly the given token set, restricted to the length.

    ``tokens`` is either a bool mask [B, Hkv, S_max] or absolute positions [B, Hkv, n] (int, -1 padding).
    Returns [B, Hq, D] fp32.
    """
    max_len = k.shape[2]
    if tokens.dtype == torch.bool:
        keep = tokens.clone()
    else:
        keep = torch.zeros(*tokens.shape[:2], max_len + 1, dtype=torch.bool, device=tokens.device)
        keep.scatter_(-1, torch.where(tokens >= 0, tokens, max_len).long(), True)
        keep = keep[..., :max_len]
    keep &= valid_token_mask(lengths, max_len)[:, None, :]
    return _masked_attention(q, k, v, keep, scale)


def lychee_decode_layer_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    is_retrieval: torch.Tensor,
    slot_block_idx: torch.Tensor | None,
    budget_blocks: int,
    scale: float,
    block_size: int = BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of a LycheeDecode decode step, block granularity (the twin of the Triton entry point).

    Retrieval KV heads (``is_retrieval`` [Hkv] bool) attend to the whole cache and write their top
    ``budget_blocks`` blocks (capped at the valid blocks) into their slot; sparse KV heads attend only to the
    blocks already in their slot (written by an earlier layer's retrieval head of the same index) and leave it
    unchanged. ``slot_block_idx`` [B, Hkv, k] int32 (-1 padding, ``k = min(budget_blocks, NB)``) may be None
    only if every head is a retrieval head (layer 0).

    Returns (out [B, Hq, D] fp32, new slots [B, Hkv, k] int32).
    """
    is_retrieval = is_retrieval.to(device=q.device, dtype=torch.bool)
    g = _group_size(q, k_cache)
    batch, hkv, max_len, _ = k_cache.shape
    width = min(budget_blocks, -(-max_len // block_size))
    if slot_block_idx is None:
        if not bool(is_retrieval.all()):
            raise ValueError("slot_block_idx is required when the layer has sparse heads")
        slot_block_idx = torch.full((batch, hkv, width), -1, dtype=torch.int32, device=q.device)
    if slot_block_idx.shape != (batch, hkv, width):
        raise ValueError(f"slot_block_idx has shape {tuple(slot_block_idx.shape)}, expected {(batch, hkv, width)}")
    dense = dense_decode_attention(q, k_cache, v_cache, lengths, scale)
    sparse = sparse_block_decode_attention(q, k_cache, v_cache, lengths, slot_block_idx, scale, block_size)
    per_query_head = is_retrieval.repeat_interleave(g)[None, :, None]
    out = torch.where(per_query_head, dense, sparse)
    chosen = select_top_blocks(block_max_scores(q, k_cache, lengths, block_size), budget_blocks)
    new_slots = torch.where(is_retrieval[None, :, None], chosen, slot_block_idx.to(torch.int32))
    return out, new_slots


def block_set_mismatches(
    actual: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, rel_tol: float = 1e-3
) -> list[str]:
    """Compare two selections [B, H, k] (-1 padding) as sets, allowing swaps between near-tied blocks.

    A block in one set but not the other is accepted only if its score (from ``scores`` [B, H, NB]) is within
    ``rel_tol`` of the lower of the two sets' cut-off scores: top-k is then ambiguous. Returns one message per
    offending (b, head); empty means the selections agree.
    """
    problems = []
    for b in range(actual.shape[0]):
        for h in range(actual.shape[1]):
            got = {int(x) for x in actual[b, h].tolist() if x >= 0}
            want = {int(x) for x in expected[b, h].tolist() if x >= 0}
            if got == want:
                continue
            if len(got) != len(want):
                problems.append(f"(b={b}, h={h}): {len(got)} blocks selected, expected {len(want)}")
                continue
            row = scores[b, h].float()
            cut = min(row[sorted(want)].min().item(), row[sorted(got)].min().item())
            far = [x for x in got ^ want if abs(row[x].item() - cut) > rel_tol * max(1.0, abs(cut))]
            if far:
                problems.append(f"(b={b}, h={h}): blocks {sorted(far)} differ beyond ties (cut-off {cut:.5g})")
    return problems
