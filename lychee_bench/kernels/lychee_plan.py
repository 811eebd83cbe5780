"""The work list of one LycheeDecode layer: which program reads which KV blocks (workload pooling).

LycheeDecode (arXiv 2602.04541) runs all heads of a layer in one split-KV ("flash-decoding") launch. A
retrieval head reads the whole cache, a sparse head only its selected blocks, so splitting every head into the
same number of pieces would leave the sparse heads' programs idle while the retrieval heads' ones run. Here
every (sequence, KV head) is cut into chunks of at most ``chunk_blocks`` 64-token blocks, whatever its kind:
a retrieval head of a 128K sequence becomes hundreds of chunks, a sparse head with a 4096-token budget a few,
and every program handles about the same number of blocks.

The plan depends only on the lengths, the head roles and the budget, all known on the host before a decode step
(and the same for every layer with the same roles), so it is built once on the host, copied to the device, and
reused; nothing in the launch needs a device-to-host sync, which keeps the layer capturable in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK_SIZE = 64
# The fused launch merges partials in two levels: the last of each MERGE_GROUP consecutive items of a head merges
# them into a group partial, and the last group of the head merges those (a 128K retrieval head leaves ~200
# partials; one program reading them all would be a long serial tail).
MERGE_GROUP = 16
# Retrieval items first, cut to fill the first wave of programs alone: the sparse items then stream while the
# programs that finish a retrieval head merge it and pick its blocks (that tail is otherwise exposed).
RETRIEVAL_FIRST = True
MAX_CHUNK_BLOCKS = 16  # longest chunk the default plan cuts (see default_target_programs)
SUPPORTED_HEAD_DIMS = (64, 128)  # what the Triton kernels are built and tested for

# Item columns in DecodePlan.items.
ITEM_BATCH, ITEM_HEAD, ITEM_FIRST, ITEM_COUNT, ITEM_RETRIEVAL = range(5)


@dataclass(frozen=True)
class DecodePlan:
    """Flat work list for one layer's attention launch, plus what the merge and top-k steps need.

    ``items`` [n_items, 5] int32 rows (b, kv_head, first, count, is_retrieval): a retrieval item reads blocks
    ``first .. first+count-1`` of the cache; a sparse item reads the blocks listed in slot entries
    ``first .. first+count-1``. Items of one (b, kv_head) are contiguous, starting at ``offsets[b*Hkv + h]``,
    ``counts[b*Hkv + h]`` of them. ``retrieval_row`` [Hkv] int32 maps a retrieval KV head to its row in the
    block-score buffer (-1 for sparse heads); ``retrieval_heads`` [R] int64 is the inverse. The merge groups
    of head ``b*Hkv + h`` are ``group_offsets[b*Hkv + h]`` onwards, ``ceil(counts / MERGE_GROUP)`` of them.
    """

    items: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    retrieval_row: torch.Tensor
    retrieval_heads: torch.Tensor
    group_offsets: torch.Tensor
    num_groups: int
    merge_group: int
    batch: int
    num_kv_heads: int
    num_blocks: int  # blocks in the cache, ceil(S_max / block_size): width of the score buffer
    slot_width: int  # selected blocks per slot, min(budget_blocks, num_blocks)
    chunk_blocks: int
    block_size: int

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def num_retrieval(self) -> int:
        return int(self.retrieval_heads.numel())


def default_target_programs(device: torch.device | str, work_blocks: int = 0) -> int:
    """Two programs per streaming multiprocessor, more when that would make chunks longer than MAX_CHUNK_BLOCKS.

    Measured at 128K on an H200 (results/kernels/): at batch 1 two programs per SM (8-block chunks) beat four
    (more partials to merge at the end); at batch 4, 16-block chunks (about four per SM) beat 32-block ones
    (more bytes in flight)."""
    device = torch.device(device)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(2 * sms, -(-work_blocks // MAX_CHUNK_BLOCKS))
    return 16  # interpreter runs: a few chunks per head exercise the merge without being slow


def _to_device(arrays: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Host int64 arrays on `device` with one copy: packed into one (pinned) buffer, copied without blocking the
    host, and split there. Separate copies from pageable memory would each wait for the device's queued work."""
    device = torch.device(device)
    packed = torch.cat([array.flatten().to(torch.int64) for array in arrays])
    if device.type == "cuda":
        moved = packed.pin_memory().to(device, non_blocking=True)
    else:
        moved = packed.to(device)
    return list(torch.split(moved, [array.numel() for array in arrays])) if arrays else []


def plan_decode_work(
    lengths: Sequence[int] | torch.Tensor,
    is_retrieval: Sequence[bool] | torch.Tensor,
    max_len: int,
    budget_blocks: int,
    device: torch.device | str = "cpu",
    *,
    block_size: int = BLOCK_SIZE,
    chunk_blocks: int | None = None,
    target_programs: int | None = None,
) -> DecodePlan:
    """Cut every (sequence, KV head) into chunks of at most ``chunk_blocks`` blocks.

    ``lengths`` are the valid tokens per sequence (host values; a device tensor is copied, which syncs),
    ``is_retrieval`` the layer's head roles, ``max_len`` the cache's S_max. A retrieval head covers
    ``ceil(length / block_size)`` blocks, a sparse head ``min(slot_width, ceil(length / block_size))`` slot
    entries (selection puts the valid entries first). Without ``chunk_blocks`` the chunk is chosen so that about
    ``target_programs`` programs run (default: :func:`default_target_programs`); with ``RETRIEVAL_FIRST`` and
    retrieval work at least half of the total, the retrieval items alone fill those programs and come first.
    """
    lengths_t = torch.as_tensor(lengths).to("cpu", torch.int64).flatten()
    roles = torch.as_tensor(is_retrieval).to("cpu", torch.bool).flatten()
    if budget_blocks < 1:
        raise ValueError(f"budget_blocks must be >= 1, got {budget_blocks}")
    if lengths_t.numel() == 0 or int(lengths_t.min()) < 1 or int(lengths_t.max()) > max_len:
        raise ValueError(f"lengths must lie in [1, {max_len}] (the cache size), got {lengths_t.tolist()}")
    batch, hkv = lengths_t.numel(), roles.numel()
    num_blocks = -(-max_len // block_size)
    slot_width = min(budget_blocks, num_blocks)

    valid_blocks = (lengths_t + block_size - 1) // block_size  # [B]
    per_head = torch.where(
        roles[None, :], valid_blocks[:, None], valid_blocks[:, None].clamp(max=slot_width)
    )  # [B, Hkv] blocks (or slot entries) each (b, h) must read
    retrieval_work = int(per_head[:, roles].sum())
    retrieval_first = RETRIEVAL_FIRST and 2 * retrieval_work >= int(per_head.sum())
    if chunk_blocks is None:
        work = retrieval_work if retrieval_first else int(per_head.sum())
        target = target_programs or default_target_programs(device, work)
        chunk_blocks = max(1, -(-work // target))
    if chunk_blocks < 1:
        raise ValueError(f"chunk_blocks must be >= 1, got {chunk_blocks}")

    counts = (per_head + chunk_blocks - 1) // chunk_blocks  # chunks per (b, h), all >= 1
    flat_counts = counts.flatten()
    head_order = torch.arange(batch * hkv)  # the order of the heads' item runs in the work list
    if retrieval_first:
        head_order = torch.argsort((~roles).repeat(batch).to(torch.int8), stable=True)
    offsets = torch.empty_like(flat_counts)
    offsets[head_order] = torch.cumsum(flat_counts[head_order], 0) - flat_counts[head_order]
    owner = torch.repeat_interleave(head_order, flat_counts[head_order])  # (b, h) of each item
    chunk = torch.arange(owner.numel()) - offsets[owner]
    first = chunk * chunk_blocks
    count = torch.minimum(per_head.flatten()[owner] - first, torch.tensor(chunk_blocks))
    items = torch.stack([owner // hkv, owner % hkv, first, count, roles[owner % hkv].long()], dim=1)

    retrieval_heads = torch.nonzero(roles).flatten()
    retrieval_row = torch.full((hkv,), -1, dtype=torch.int64)
    retrieval_row[retrieval_heads] = torch.arange(retrieval_heads.numel())
    merge_group = MERGE_GROUP
    head_groups = (flat_counts + merge_group - 1) // merge_group
    items, offsets, counts, retrieval_row, retrieval_heads, group_offsets = _to_device(
        [items, offsets, flat_counts, retrieval_row, retrieval_heads, torch.cumsum(head_groups, 0) - head_groups],
        device,
    )
    return DecodePlan(
        items=items.view(-1, 5).to(torch.int32).contiguous(),
        offsets=offsets.to(torch.int32),
        counts=counts.to(torch.int32),
        retrieval_row=retrieval_row.to(torch.int32),
        retrieval_heads=retrieval_heads,
        group_offsets=group_offsets.to(torch.int32),
        num_groups=int(head_groups.sum()),
        merge_group=merge_group,
        batch=batch,
        num_kv_heads=hkv,
        num_blocks=num_blocks,
        slot_width=slot_width,
        chunk_blocks=chunk_blocks,
        block_size=block_size,
    )
