"""LycheeDecode kernels: the plain-torch reference against brute force, and the Triton path against the reference.

Inputs are fresh random tensors on every run; each test prints its seed, which pytest shows on failure (rerun
with LYCHEE_TEST_SEED=<seed> to reproduce). The Triton kernels run under TRITON_INTERPRET=1 on CPU.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lychee_bench.kernels import reference as ref  # noqa: E402
from lychee_bench.kernels.lychee_plan import plan_decode_work  # noqa: E402
from tests.conftest import fresh_seed  # noqa: E402

try:
    from lychee_bench.kernels import lychee_triton
except ImportError as error:  # a missing Triton must fail loudly, never skip
    lychee_triton = None
    TRITON_IMPORT_ERROR = f"the Triton kernels cannot be imported ({error}); install Triton: pip install triton"
else:
    TRITON_IMPORT_ERROR = ""

BLOCK = 64
TOLERANCE = {torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture
def seed() -> int:
    return fresh_seed()


@pytest.fixture
def kernels():
    if lychee_triton is None:
        pytest.fail(TRITON_IMPORT_ERROR)
    return lychee_triton


def random_case(batch: int, hkv: int, group: int, dim: int, max_len: int, dtype: torch.dtype, min_len: int = 1):
    """Cache, queries and lengths that differ per sequence and are (almost surely) not multiples of 64."""
    q = torch.randn(batch, hkv * group, dim).to(dtype)
    k = torch.randn(batch, hkv, max_len, dim).to(dtype)
    v = torch.randn(batch, hkv, max_len, dim).to(dtype)
    lengths = torch.randint(min_len, max_len + 1, (batch,))
    lengths[0] = max_len - 1 if max_len % BLOCK == 1 else max_len  # one sequence fills the cache
    return q, k, v, lengths


def random_slots(lengths: torch.Tensor, hkv: int, max_len: int, budget_blocks: int) -> torch.Tensor:
    """Slots as an earlier layer would leave them: top blocks of random scores, valid blocks only."""
    num_blocks = -(-max_len // BLOCK)
    valid = torch.arange(num_blocks)[None, :] < ((lengths + BLOCK - 1) // BLOCK)[:, None]
    scores = torch.randn(len(lengths), hkv, num_blocks).masked_fill(~valid[:, None, :], float("-inf"))
    return ref.select_top_blocks(scores, budget_blocks)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, seed: int, what: str) -> None:
    assert not torch.isnan(actual).any(), f"{what}: NaN (unwritten or poisoned output), seed={seed}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= TOLERANCE[dtype], f"{what}: max abs error {err:.3g} > {TOLERANCE[dtype]} ({dtype}), seed={seed}"


def assert_same_blocks(actual: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, seed: int) -> None:
    """Selected block sets must be equal, except for swaps between (near-)tied scores at the cut-off."""
    problems = ref.block_set_mismatches(actual, expected, scores)
    assert not problems, f"selected blocks differ, seed={seed}: " + "; ".join(problems)


def poisoned_buffers(kernels, plan, q):
    """Scratch and output filled with NaN, so any element the kernels fail to write shows up."""
    buffers = kernels.DecodeBuffers.allocate(plan, q)
    poisoned = (buffers.part_acc, buffers.part_m, buffers.part_l, buffers.group_acc, buffers.group_m, buffers.group_l)
    for tensor in (*poisoned, buffers.scores, buffers.out):
        tensor.fill_(float("nan"))
    return buffers


def triton_layer(kernels, q, k, v, lengths, roles, slots, budget, scale, chunk=None):
    """The Triton layer on NaN-poisoned buffers; ``chunk`` forces the blocks per program (None: the plan picks)."""
    plan = plan_decode_work(lengths, roles, k.shape[2], budget, chunk_blocks=chunk, target_programs=12)
    buffers = poisoned_buffers(kernels, plan, q)
    return kernels.lychee_decode_layer(q, k, v, lengths, roles, slots, budget, scale, plan=plan, buffers=buffers)


# --- the reference against brute force -------------------------------------------------------------------


def test_reference_dense_matches_sdpa(seed):
    q, k, v, lengths = random_case(3, 2, 4, 64, 150, torch.float32)
    out = ref.dense_decode_attention(q, k, v, lengths, 0.125)
    for b, n in enumerate(lengths.tolist()):
        kk = k[b, :, :n].repeat_interleave(4, dim=0)
        vv = v[b, :, :n].repeat_interleave(4, dim=0)
        expected = torch.nn.functional.scaled_dot_product_attention(q[b, :, None], kk, vv, scale=0.125)[:, 0]
        assert_close(out[b], expected, torch.float32, seed, "dense reference")


def test_reference_block_scores_match_loop(seed):
    q, k, _, lengths = random_case(3, 2, 3, 64, 200, torch.float32)
    scores = ref.block_max_scores(q, k, lengths)
    assert scores.shape == (3, 2, 4)
    for b, h in itertools.product(range(3), range(2)):
        q_mean = q[b, h * 3 : h * 3 + 3].mean(0)
        n = int(lengths[b])
        for block in range(4):
            tokens = k[b, h, block * BLOCK : min((block + 1) * BLOCK, n)]
            expected = (tokens @ q_mean).max().item() if len(tokens) else float("-inf")
            assert scores[b, h, block].item() == pytest.approx(expected, rel=1e-5, abs=1e-5), f"seed={seed}"


def test_reference_token_selection_keeps_sink_recent_and_budget(seed):
    _, hkv, max_len, budget = 3, 2, 300, 100
    lengths = torch.tensor([300, 90, 241])
    scores = torch.randn(3, hkv, max_len)
    keep = ref.select_top_tokens(scores, lengths, budget, sink=16, recent=32)
    for b, h in itertools.product(range(3), range(hkv)):
        n = int(lengths[b])
        row = keep[b, h]
        assert not row[n:].any()
        assert int(row.sum()) == min(n, budget), f"seed={seed}"
        if n > budget:
            assert row[:16].all() and row[n - 32 : n].all()
            free = scores[b, h, 16 : n - 32]
            threshold = free.topk(budget - 48).values.min()
            assert torch.equal(row[16 : n - 32], free >= threshold), f"seed={seed}"


def test_reference_sparse_paths_with_everything_selected_equal_dense(seed):
    q, k, v, lengths = random_case(3, 2, 4, 64, 200, torch.float32)
    dense = ref.dense_decode_attention(q, k, v, lengths, 0.1)
    all_blocks = ref.select_top_blocks(ref.block_max_scores(q, k, lengths), 100)
    assert_close(ref.sparse_block_decode_attention(q, k, v, lengths, all_blocks, 0.1), dense, torch.float32, seed, "")
    keep = ref.select_top_tokens(ref.token_scores(q, k, lengths), lengths, 400, sink=16, recent=32)
    assert_close(ref.sparse_token_decode_attention(q, k, v, lengths, keep, 0.1), dense, torch.float32, seed, "")
    positions = torch.where(keep, torch.arange(200), -1)
    assert_close(ref.sparse_token_decode_attention(q, k, v, lengths, positions, 0.1), dense, torch.float32, seed, "")


def test_reference_sparse_block_attends_only_selected_blocks(seed):
    q, k, v, lengths = random_case(2, 1, 2, 64, 256, torch.float32, min_len=200)
    block_idx = torch.tensor([[[2, 0, -1]], [[1, -1, -1]]], dtype=torch.int32)
    out = ref.sparse_block_decode_attention(q, k, v, lengths, block_idx, 0.1)
    for b, blocks in enumerate(([2, 0], [1])):
        tokens = torch.cat([torch.arange(x * BLOCK, min((x + 1) * BLOCK, int(lengths[b]))) for x in blocks])
        logits = q[b] @ k[b, 0, tokens].T * 0.1
        expected = torch.softmax(logits, -1) @ v[b, 0, tokens]
        assert_close(out[b], expected, torch.float32, seed, "sparse block reference")


def test_block_set_comparison_allows_ties_only():
    scores = torch.tensor([[[5.0, 3.0, 3.0, 1.0]]])
    assert ref.block_set_mismatches(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 1]]]), scores) == []
    assert ref.block_set_mismatches(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]), scores) != []
    assert ref.block_set_mismatches(torch.tensor([[[0, -1]]]), torch.tensor([[[0, 1]]]), scores) != []


# --- the work plan ---------------------------------------------------------------------------------------


def test_plan_covers_every_block_once_in_balanced_chunks():
    lengths, roles, max_len, budget = [1000, 65, 700], [True, False, False, True], 1000, 4
    plan = plan_decode_work(lengths, roles, max_len, budget, target_programs=12)
    items = plan.items.tolist()
    assert max(count for *_, count, _ in items) <= plan.chunk_blocks
    for b, n in enumerate(lengths):
        for h, retrieval in enumerate(roles):
            covered = [
                x for bb, hh, first, count, _ in items if (bb, hh) == (b, h) for x in range(first, first + count)
            ]
            blocks = -(-n // BLOCK)
            assert covered == list(range(blocks if retrieval else min(budget, blocks)))
            first_item = plan.offsets[b * 4 + h].item()
            assert items[first_item][:2] == [b, h] and plan.counts[b * 4 + h].item() >= 1


# --- Triton against the reference ------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every group size and head dim in every dtype; the chunk size (None: chosen by the plan) rotates so that one-,
# two- and three-block chunks, and so multi-chunk merges, all occur.
LAYER_CASES = [
    (group, dim, dtype, (1, 2, 3, None)[i % 4])
    for i, (group, dim, dtype) in enumerate(itertools.product((1, 2, 3, 4, 8), (64, 128), DTYPES))
]


@pytest.mark.parametrize(("group", "dim", "dtype", "chunk"), LAYER_CASES)
def test_triton_layer_matches_reference(kernels, seed, group, dim, dtype, chunk):
    batch, hkv, max_len, budget = 3, 3, 330, 3
    q, k, v, lengths = random_case(batch, hkv, group, dim, max_len, dtype)
    roles = torch.rand(hkv) < 0.5
    roles[torch.randint(hkv, (2,))] = torch.tensor([True, False])  # at least one head of each kind
    slots = random_slots(lengths, hkv, max_len, budget)
    scale = dim**-0.5

    out, new_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, budget, scale, chunk)
    expected_out, expected_slots = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, budget, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, expected_out, dtype, seed, f"layer output (roles {roles.tolist()})")
    scores = ref.block_max_scores(q, k, lengths)
    assert_same_blocks(new_slots, expected_slots, scores, seed)
    assert torch.equal(new_slots[:, ~roles], slots[:, ~roles]), "sparse heads must pass their slot on unchanged"


@pytest.mark.parametrize("group", [1, 4])
def test_triton_block_scores_match_reference(kernels, seed, group):
    q, k, v, lengths = random_case(3, 2, group, 64, 260, torch.float32)
    roles = torch.tensor([True, True])
    plan = plan_decode_work(lengths, roles, 260, 2, chunk_blocks=2)
    buffers = poisoned_buffers(kernels, plan, q)
    kernels.attention_partials(q, k, v, lengths.int(), None, plan, buffers, 0.125)
    expected = ref.block_max_scores(q, k, lengths)
    finite = torch.isfinite(expected)  # the valid blocks; the rest of the buffer is never written nor read
    assert torch.allclose(buffers.scores[finite], expected[finite], atol=1e-4), f"seed={seed}"


def test_triton_merge_over_more_partials_than_one_tile(kernels, seed):
    """A long retrieval head cut into one-block chunks leaves more partials than the merge reads per load (32)."""
    q, k, v, lengths = random_case(2, 2, 2, 64, 2400, torch.bfloat16, min_len=2100)
    roles = torch.tensor([True, False])
    slots = random_slots(lengths, 2, 2400, 4)
    out, new_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, 4, 0.125, chunk=1)
    expected_out, expected_slots = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, 4, 0.125)
    assert_close(out, expected_out, torch.bfloat16, seed, "many-partials layer")
    assert_same_blocks(new_slots, expected_slots, ref.block_max_scores(q, k, lengths), seed)


def test_triton_layer_zero_all_retrieval_without_slots(kernels, seed):
    q, k, v, lengths = random_case(3, 2, 4, 64, 200, torch.float32)
    roles = torch.tensor([True, True])
    out, slots = triton_layer(kernels, q, k, v, lengths, roles, None, 2, 0.125)
    expected_out, expected_slots = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, None, 2, 0.125)
    assert_close(out, expected_out, torch.float32, seed, "all-retrieval layer")
    assert_same_blocks(slots, expected_slots, ref.block_max_scores(q, k, lengths), seed)


def test_triton_all_sparse_layer(kernels, seed):
    q, k, v, lengths = random_case(3, 2, 4, 128, 300, torch.float16)
    roles = torch.tensor([False, False])
    slots = random_slots(lengths, 2, 300, 2)
    out, new_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, 2, 0.09)
    expected, _ = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, 2, 0.09)
    assert_close(out, expected, torch.float16, seed, "all-sparse layer")
    assert torch.equal(new_slots, slots)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_budget_equals_dense_attention(kernels, seed, dtype):
    """With a budget covering the whole context, sparse heads see every token: the layer is dense attention."""
    batch, hkv, group, max_len = 3, 2, 3, 250
    q, k, v, lengths = random_case(batch, hkv, group, 64, max_len, dtype)
    budget = -(-max_len // BLOCK)
    _, slots = triton_layer(kernels, q, k, v, lengths, torch.tensor([True, True]), None, budget, 0.125)
    out, _ = triton_layer(kernels, q, k, v, lengths, torch.tensor([False, True]), slots, budget, 0.125, chunk=2)
    dense = ref.dense_decode_attention(q, k, v, lengths, 0.125)
    assert_close(out, dense, dtype, seed, "full-budget layer vs dense")


@pytest.mark.parametrize("where", ["first", "middle", "last_partial_block_current_token", "last_partial_block"])
def test_retrieval_head_reads_the_whole_cache(kernels, seed, where):
    """A key planted in a block the previous slot did not select must be found and attended by the retrieval head.

    The public block-level code lets later retrieval heads iterate only over previously selected blocks; that
    would miss this key.
    """
    batch, hkv, group, dim, max_len, budget = 3, 2, 4, 64, 300, 2
    q, k, v, lengths = random_case(batch, hkv, group, dim, max_len, torch.float32, min_len=200)
    lengths[:] = torch.tensor([300, 231, 257])
    roles = torch.tensor([True, False])
    # The previous layer chose blocks 1 and 2 everywhere; the planted key lives elsewhere.
    slots = torch.tensor([1, 2], dtype=torch.int32).expand(batch, hkv, budget).contiguous()
    for b, n in enumerate(lengths.tolist()):
        last_block = (n - 1) // BLOCK
        position = {
            "first": 5,
            "middle": 3 * BLOCK + 17,
            "last_partial_block_current_token": n - 1,
            "last_partial_block": last_block * BLOCK + (n - 1 - last_block * BLOCK) // 2,
        }[where]
        assert position // BLOCK not in (1, 2)
        q_mean = q[b, :group].mean(0)
        k[b, 0, position] = 50.0 * q_mean / q_mean.norm()  # dominates both q̄·k and every query's softmax
        v[b, 0, position] = 7.0

    out, new_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, budget, 1.0, chunk=1)
    expected, _ = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, budget, 1.0)
    assert_close(out, expected, torch.float32, seed, "planted-key layer")
    for b in range(batch):
        planted_block = torch.nonzero(v[b, 0, :, 0] == 7.0).item() // BLOCK
        assert planted_block in new_slots[b, 0].tolist(), f"planted block not selected (b={b}), seed={seed}"
        assert out[b, :group].mean().item() == pytest.approx(7.0, abs=0.5), f"planted value not attended, seed={seed}"
        assert new_slots[b, 1].tolist() == [1, 2], "the sparse head's slot must pass on unchanged"


def test_invalid_inputs_are_refused_with_reasons(kernels):
    q, k, v, lengths = random_case(2, 2, 2, 96, 100, torch.float32)
    with pytest.raises(ValueError, match="head dim 96"):
        kernels.lychee_decode_layer(q, k, v, lengths, torch.tensor([True, True]), None, 1, 0.1)
    q, k, v, lengths = random_case(2, 2, 2, 64, 100, torch.float32)
    with pytest.raises(ValueError, match="slot_block_idx is required"):
        kernels.lychee_decode_layer(q, k, v, lengths, torch.tensor([True, False]), None, 1, 0.1)
    with pytest.raises(ValueError, match="lengths must lie"):
        plan_decode_work([0, 5], [True, True], 100, 1)


@pytest.mark.parametrize("group", [1, 3])
def test_left_padded_cache_equals_unpadded(kernels, seed, group):
    """`starts` shifts each sequence in a left-padded cache; the result must equal the unpadded layout."""
    q, k, v, lengths = random_case(3, 2, group, 64, 150, torch.float32)
    roles = torch.tensor([True, False])
    slots = random_slots(lengths, 2, 150, 2)
    pad = 70
    k_padded = torch.full((3, 2, 150 + pad, 64), float("nan"))
    v_padded = torch.full((3, 2, 150 + pad, 64), float("nan"))
    starts = torch.zeros(3, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        starts[b] = 150 + pad - n  # real tokens at the end, NaN padding before them
        k_padded[b, :, starts[b] :] = k[b, :, :n]
        v_padded[b, :, starts[b] :] = v[b, :, :n]
    expected, expected_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, 2, 0.125)
    plan = plan_decode_work(lengths, roles, 150 + pad, 2, target_programs=12)
    slots_padded = torch.full((3, 2, plan.slot_width), -1, dtype=torch.int32)
    slots_padded[:, :, : slots.shape[2]] = slots
    out, new_slots = kernels.lychee_decode_layer(
        q, k_padded, v_padded, lengths, roles, slots_padded, 2, 0.125, plan=plan, starts=starts
    )
    assert_close(out, expected, torch.float32, seed, "left-padded layer")
    assert torch.equal(new_slots[:, :, : expected_slots.shape[2]], expected_slots)


def test_triton_top_blocks_match_torch_topk_with_ties_and_short_rows(kernels, seed):
    from lychee_bench.kernels.lychee_plan import plan_decode_work

    lengths = torch.tensor([64 * 37 + 5, 64 * 3, 64 * 20])  # row 1 has fewer valid blocks than the budget
    roles = torch.tensor([True, False, True])
    plan = plan_decode_work(lengths, roles, 64 * 40, 8, target_programs=12)
    scores = torch.randn(3, 2, plan.num_blocks)
    scores[0, 0, :10] = 5.0  # a tie across the cut-off
    scores[0, 1, 7] = -0.0
    valid_blocks = (lengths + 63) // 64
    scores = scores.masked_fill(torch.arange(plan.num_blocks)[None, None, :] >= valid_blocks[:, None, None], -torch.inf)
    slots = torch.full((3, 3, plan.slot_width), 99, dtype=torch.int32)
    kernels.select_into_slots(scores, slots, plan)
    expected = ref.select_top_blocks(scores, plan.slot_width)
    assert_same_blocks(slots[:, [0, 2]], expected, scores, seed)
    assert bool((slots[:, 1] == 99).all()), "a sparse head's row must be left alone"
    assert slots[1, 0].tolist()[3:] == [-1] * (plan.slot_width - 3)


@pytest.mark.parametrize(
    ("fused", "step", "retrieval_first", "merge_group"),
    [
        (True, 1, True, 16),
        (True, 4, False, 2),
        (False, 2, True, 3),
        (True, 2, True, 2),
        (True, 1, False, 5),
    ],
)
def test_layer_knobs_give_the_same_layer(kernels, seed, monkeypatch, fused, step, retrieval_first, merge_group):
    """One fused launch or three, 1/2/4 blocks per loop step, either work order, any merge group: the same
    layer."""
    from lychee_bench.kernels import lychee_plan

    monkeypatch.setattr(kernels, "FUSED", fused)
    monkeypatch.setattr(kernels, "STEP_BLOCKS", step)
    monkeypatch.setattr(lychee_plan, "RETRIEVAL_FIRST", retrieval_first)
    monkeypatch.setattr(lychee_plan, "MERGE_GROUP", merge_group)
    q, k, v, lengths = random_case(3, 3, 4, 64, 1500, torch.bfloat16, min_len=700)
    roles = torch.tensor([True, False, True])
    slots = random_slots(lengths, 3, 1500, 5)
    out, new_slots = triton_layer(kernels, q, k, v, lengths, roles, slots, 5, 0.125, chunk=3)
    expected_out, expected_slots = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, 5, 0.125)
    assert_close(out, expected_out, torch.bfloat16, seed, f"layer (fused={fused}, step={step})")
    assert_same_blocks(new_slots, expected_slots, ref.block_max_scores(q, k, lengths), seed)


def test_buffers_are_reusable_and_tickets_return_to_zero(kernels, seed):
    """A captured graph replays the launch on the same buffers: the tickets must be back at zero after each call,
    and a second call on other inputs must give that call's answer."""
    roles = torch.tensor([True, False])
    plan = plan_decode_work([1300, 640], roles, 1300, 3, chunk_blocks=1)
    assert plan.num_groups > plan.batch * plan.num_kv_heads, "the case must use two merge levels"
    q, k, v, lengths = random_case(2, 2, 3, 64, 1300, torch.float32)
    buffers = poisoned_buffers(kernels, plan, q)
    for _ in range(2):
        q, k, v, _ = random_case(2, 2, 3, 64, 1300, torch.float32)
        lengths = torch.tensor([1300, 640])
        slots = random_slots(lengths, 2, 1300, 3)
        out, new_slots = kernels.lychee_decode_layer(
            q, k, v, lengths, roles, slots.clone(), 3, 0.125, plan=plan, buffers=buffers
        )
        expected_out, expected_slots = ref.lychee_decode_layer_reference(q, k, v, lengths, roles, slots, 3, 0.125)
        assert_close(out, expected_out, torch.float32, seed, "reused buffers")
        assert_same_blocks(new_slots, expected_slots, ref.block_max_scores(q, k, lengths), seed)
        assert int(buffers.tickets.abs().sum()) == 0, "tickets must be reset by their last user"


@pytest.mark.parametrize("ways", [2, 8, 16])
@pytest.mark.parametrize("kind", ["normal", "all_equal", "few_distinct", "wide_range", "signed_zeros"])
def test_top_blocks_exact_on_long_rows(kernels, seed, monkeypatch, kind, ways):
    """2048 blocks (a 128K context), k = 64: the narrowed, early-stopping search must still pick the exact top-k."""
    monkeypatch.setattr(kernels, "TOPK_WAYS", ways)
    lengths = torch.tensor([64 * 2048, 64 * 1500 + 3])
    plan = plan_decode_work(lengths, torch.tensor([True]), 64 * 2048, 64, target_programs=12)
    scores = {
        "normal": torch.randn(2, 1, 2048),
        "all_equal": torch.full((2, 1, 2048), 0.75),
        "few_distinct": torch.randint(0, 4, (2, 1, 2048)).float(),
        "wide_range": torch.randn(2, 1, 2048) * torch.logspace(-30, 30, 2048)[torch.randperm(2048)],
        "signed_zeros": torch.where(torch.rand(2, 1, 2048) < 0.5, -0.0, 0.0) + (torch.rand(2, 1, 2048) < 0.01) * 1.0,
    }[kind]
    scores[1, :, 1501:] = float("nan")  # past the length: must never be read
    slots = torch.full((2, 1, plan.slot_width), 99, dtype=torch.int32)
    kernels.select_into_slots(scores, slots, plan, lengths)
    expected = ref.select_top_blocks(scores.nan_to_num(nan=float("-inf")), plan.slot_width)
    assert_same_blocks(slots, expected, scores.nan_to_num(nan=float("-inf")), seed)
    assert int((slots >= 0).sum()) == 2 * 64


def test_fused_kernel_compiles_for_hopper_without_a_gpu(kernels):
    """The GPU build of the fused kernel (sm_90, bf16) compiles here and stays within a CTA's limits (the
    compiler needs the real JIT, so it runs in a process without TRITON_INTERPRET)."""
    command = [sys.executable, "-m", "lychee_bench.tools.resource_usage", "--finish", "2", "--step", "1"]
    command += ["--warps", "4", "--stages", "2", "--json"]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    usage = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < usage["registers"] <= 255 and 0 < usage["shared_bytes"] <= 227 * 1024, usage
