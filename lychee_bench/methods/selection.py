"""Top-k token and block selection in plain torch (the reference every kernel is checked against).

Positions are counted among real tokens only (left padding excluded), so "the first 128 tokens" and "block 3"
mean the same thing whatever the padding.
"""

from __future__ import annotations

import torch

from lychee_bench.methods.common import sink_and_recent, valid_rank


def select_tokens(
    scores: torch.Tensor,
    valid: torch.Tensor,
    budget: torch.Tensor,
    sink: int,
    recent: int,
    max_budget: int | None = None,
) -> torch.Tensor:
    """Keep `budget[b]` tokens per head: the sink and recent tokens always, then the highest scores.

    scores [B, H, S] (raw q·k logits), valid [B, S] bool, budget [B] int. Returns keep [B, H, S] bool.
    A row with no more real tokens than its budget keeps all of them. `max_budget`, a host bound on `budget`,
    spares the read-back that sizes the top-k.
    """
    batch, heads, length = scores.shape
    _, count = valid_rank(valid)
    forced = sink_and_recent(valid, sink, recent)[:, None, :].expand(batch, heads, length)
    free = (budget[:, None] - forced[:, 0].sum(-1, keepdim=True)).clamp(min=0)  # [B, 1]
    candidates = scores.float().masked_fill(~valid[:, None, :] | forced, float("-inf"))
    if max_budget is not None:
        k_max = min(max_budget, length)
    else:
        k_max = int(free.max().item()) if length else 0
    keep = forced.clone()
    if k_max > 0:
        order = torch.topk(candidates, min(k_max, length), dim=-1).indices  # [B, H, k]
        within = torch.arange(order.shape[-1], device=scores.device)[None, None, :] < free[:, :, None]
        chosen = torch.zeros_like(keep)
        chosen.scatter_(-1, order, within.expand_as(order))
        keep |= chosen & valid[:, None, :]
    everything = (count[:, 0] <= budget)[:, None, None]
    return torch.where(everything, valid[:, None, :].expand_as(keep), keep)


def block_scores(
    scores: torch.Tensor, valid: torch.Tensor, block_size: int, num_blocks: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max score per block of `block_size` real tokens: ([B, H, num_blocks], block id per position [B, S]).

    `num_blocks` defaults to the blocks of the longest sequence (a read-back); a host value (at least that
    many) spares it, and blocks past a sequence's end score -inf.
    """
    rank, _ = valid_rank(valid)
    block_id = torch.where(valid, rank // block_size, torch.zeros_like(rank))
    if num_blocks is None:
        num_blocks = int(block_id.max().item()) + 1 if valid.any() else 1
    masked = scores.float().masked_fill(~valid[:, None, :], float("-inf"))
    out = torch.full((*scores.shape[:2], num_blocks), float("-inf"), device=scores.device)
    index = block_id[:, None, :].expand_as(masked)
    out.scatter_reduce_(-1, index, masked, reduce="amax", include_self=True)
    return out, block_id


def select_blocks(
    scores: torch.Tensor,
    valid: torch.Tensor,
    num_blocks: torch.Tensor,
    block_size: int,
    max_blocks: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Keep the `num_blocks[b]` blocks with the highest max-score. Returns keep [B, H, S] bool.

    Host bounds spare the read-backs: `max_blocks` on `num_blocks`, `max_length` on the real tokens of any row.
    """
    total = None if max_length is None else max(1, -(-max_length // block_size))
    per_block, block_id = block_scores(scores, valid, block_size, total)
    total_blocks = per_block.shape[-1]
    bound = int(num_blocks.max().item()) if max_blocks is None else max_blocks
    k_max = min(bound, total_blocks)
    order = torch.topk(per_block, k_max, dim=-1).indices  # [B, H, k]
    within = torch.arange(k_max, device=scores.device)[None, None, :] < num_blocks[:, None, None]
    chosen_blocks = torch.zeros_like(per_block, dtype=torch.bool)
    chosen_blocks.scatter_(-1, order, within.expand_as(order))
    chosen_blocks &= per_block > float("-inf")
    keep = torch.gather(chosen_blocks, -1, block_id[:, None, :].expand(*per_block.shape[:2], -1))
    return keep & valid[:, None, :]
