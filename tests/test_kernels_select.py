"""The token top-k kernel (kernels/token_select.py) against torch.topk and the plain-torch reference.

Fresh random inputs on every run; each test prints its seed (rerun with LYCHEE_TEST_SEED=<seed>). The kernel
runs under TRITON_INTERPRET=1 on CPU, so shapes stay small (a few thousand slots); the knobs the kernel file
exposes for tests (block, part length, list capacity, the cut table) make the small shapes walk every path the
large ones take: several parts per row, a sampled row, a bracket longer than one block, a bracket read back
from the scores, cut-offs anywhere.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from tests.conftest import fresh_seed  # noqa: E402

try:
    from lychee_bench.kernels import token_select
except ImportError as error:  # a missing Triton must fail loudly, never skip
    token_select = None
    IMPORT_ERROR = f"the token top-k kernel cannot be imported ({error}); install Triton: pip install triton"

POISON = -7  # written into output buffers first: any entry the kernel forgets shows


@pytest.fixture
def ts():
    if token_select is None:
        pytest.fail(IMPORT_ERROR)
    fresh_seed()
    return token_select


def padded_scores(batch: int, heads: int, slots: int, lengths: list[int], sink: int, recent: int, fill: float):
    """[B, H, S] scores with distinct values on every candidate slot (no ties: torch.topk's choice is the set)
    and ``fill`` everywhere else: left padding, the sink and recent tokens, past the sequence's end. A kernel
    that read any of those slots would select them (fill is huge) or return NaN-driven garbage."""
    starts = []
    scores = torch.full((batch, heads, slots), fill)
    for b, n in enumerate(lengths):
        start = int(torch.randint(0, slots - n + 1, ()))
        starts.append(start)
        candidates = max(0, n - sink - recent)
        for h in range(heads):
            distinct = torch.randperm(4 * candidates)[:candidates].float() / 8 - candidates / 4
            scores[b, h, start + sink : start + sink + candidates] = distinct
    return scores, torch.tensor(lengths, dtype=torch.int32), torch.tensor(starts, dtype=torch.int32)


def topk_expected(scores, lengths, starts, k, sink, recent, k_per_row=None):
    """[B, H, k] sorted relative positions from torch.topk over each row's candidates, -1 after them."""
    batch, heads, _ = scores.shape
    expected = torch.full((batch, heads, k), -1, dtype=torch.int32)
    for b in range(batch):
        first, n = int(starts[b]) + sink, max(0, int(lengths[b]) - sink - recent)
        budget = min(k, n) if k_per_row is None else min(k, n, max(0, int(k_per_row[b])))
        for h in range(heads):
            row = scores[b, h, first : first + n]
            top = torch.topk(row, budget).indices.sort().values + sink
            expected[b, h, :budget] = top.to(torch.int32)
    return expected


def run(ts, scores, lengths, starts, k, **kwargs):
    """The kernel into a poisoned buffer (its internal knobs allowed); returns the buffer."""
    out = torch.full((scores.shape[0], scores.shape[1], k), POISON, dtype=torch.int32)
    ts._select(scores, lengths, starts, k, out=out, **kwargs)
    return out


def as_sets(out: torch.Tensor) -> torch.Tensor:
    """Rows sorted ascending with the -1 tail kept at the end (the kernel's order inside a row is free)."""
    ascending = torch.where(out < 0, torch.iinfo(torch.int32).max, out).sort(-1).values
    filled = (out >= 0).sum(-1, keepdim=True)
    return torch.where(torch.arange(out.shape[-1]) < filled, ascending, -1)


def assert_layout(out: torch.Tensor) -> None:
    """The documented layout: distinct positions first, then only -1."""
    for row in out.reshape(-1, out.shape[-1]).tolist():
        filled = [p for p in row if p >= 0]
        assert row == filled + [-1] * (len(row) - len(filled)), row
        assert len(set(filled)) == len(filled), row


@pytest.mark.parametrize(
    "batch, heads, slots, k, sink, recent, block, part_len",
    [
        (2, 2, 1000, 37, 4, 8, 256, 256),  # several parts per row; every row fits the sample
        (1, 3, 2500, 150, 3, 17, 256, 512),  # sampled rows (more candidates than SAMPLE)
        (2, 1, 3001, 400, 0, 0, 1024, 1024),  # no sink or recent; S a multiple of nothing
        (3, 1, 777, 1, 1, 1, 64, 128),  # k = 1
    ],
)
def test_matches_topk_on_distinct_scores(ts, batch, heads, slots, k, sink, recent, block, part_len):
    lengths = [slots] + [int(x) for x in torch.randint(sink + recent, slots + 1, (batch - 1,))]
    scores, lengths, starts = padded_scores(batch, heads, slots, lengths, sink, recent, fill=1e30)
    out = run(ts, scores, lengths, starts, k, sink=sink, recent=recent, block=block, part_len=part_len)
    assert torch.equal(as_sets(out), topk_expected(scores, lengths, starts, k, sink, recent))
    assert_layout(out)


def test_public_entry_point_and_default_knobs(ts):
    scores, lengths, starts = padded_scores(2, 2, 1500, [1500, 1100], 6, 10, fill=float("inf"))
    out = ts.select_top_tokens(scores, lengths, starts, 90, sink=6, recent=10)
    assert out.dtype == torch.int32 and out.shape == (2, 2, 90)
    assert torch.equal(as_sets(out), topk_expected(scores, lengths, starts, 90, 6, 10))
    assert torch.equal(ts.select_top_tokens(scores, lengths, starts, 90, sink=6, recent=10), out)  # same order too


def test_k_beyond_the_candidates_pads_with_minus_one(ts):
    scores, lengths, starts = padded_scores(2, 2, 600, [600, 45], 5, 9, fill=1e30)
    lengths[1] = 12  # fewer real tokens than sink + recent: no candidates at all
    out = run(ts, scores, lengths, starts, 700, sink=5, recent=9, block=128, part_len=256)
    assert torch.equal(as_sets(out), topk_expected(scores, lengths, starts, 700, 5, 9))
    assert (out[1] == -1).all() and (out[0, :, 586:] == -1).all()


def test_k_per_row_keeps_each_rows_own_budget(ts):
    scores, lengths, starts = padded_scores(3, 2, 1400, [1400, 1300, 900], 2, 3, fill=1e30)
    k_per_row = torch.tensor([250, 0, 1000], dtype=torch.int32)  # the last exceeds k: k caps it
    out = run(ts, scores, lengths, starts, 300, sink=2, recent=3, k_per_row=k_per_row, block=256, part_len=512)
    assert torch.equal(as_sets(out), topk_expected(scores, lengths, starts, 300, 2, 3, k_per_row))
    assert (out[1] == -1).all()


def test_minus_inf_and_nan_are_never_selected(ts):
    scores, lengths, starts = padded_scores(2, 2, 1200, [1200, 1000], 0, 0, fill=1e30)
    real = torch.zeros_like(scores, dtype=torch.bool)
    for b in range(2):
        real[b, :, int(starts[b]) : int(starts[b]) + int(lengths[b])] = True
    holes = real & (torch.rand(scores.shape) < 0.6)
    scores[holes] = float("-inf")
    scores[real & (torch.rand(scores.shape) < 0.05)] = float("nan")
    out = run(ts, scores, lengths, starts, 500, block=256, part_len=256)
    expected = ts.select_top_tokens_reference(scores, lengths, starts, 500)
    assert torch.equal(as_sets(out), expected)
    picked = [(b, h, p) for b in range(2) for h in range(2) for p in out[b, h].tolist() if p >= 0]
    assert all(scores[b, h, int(starts[b]) + p] > float("-inf") for b, h, p in picked)


def test_ties_go_to_the_lowest_positions(ts):
    """Few distinct values: the k-th score is shared by many candidates; the rule takes the lowest positions."""
    batch, heads, slots, k, sink, recent = 2, 2, 2400, 300, 4, 12
    scores = torch.randint(0, 6, (batch, heads, slots)).float()
    scores[0, 0, ::2] = 5.0  # half the row tied at the top value
    scores[1, 1] = 0.0
    scores[1, 1, 450:460] = -0.0  # -0.0 ties with 0.0 (candidates 46..55 of this row)
    lengths = torch.tensor([2400, 2000], dtype=torch.int32)
    starts = torch.tensor([0, 400], dtype=torch.int32)
    for cap in (None, 7):  # the bracket as a list, and read back from the scores
        out = run(ts, scores, lengths, starts, k, sink=sink, recent=recent, block=256, part_len=512, cap=cap)
        assert torch.equal(
            as_sets(out), ts.select_top_tokens_reference(scores, lengths, starts, k, sink=sink, recent=recent)
        )
    # The rule itself, spelled out for one row: order by (score descending, position ascending), keep k.
    b, h = 1, 0
    start, n = int(starts[b]), int(lengths[b])
    ranked = sorted(range(sink, n - recent), key=lambda r: (-float(scores[b, h, start + r]), r))
    assert sorted(ranked[:k]) == as_sets(out)[b, h].tolist()
    assert as_sets(out)[1, 1].tolist() == list(range(sink, sink + k))  # all equal: the first k candidates


def test_skewed_scores(ts):
    """Real attention: a narrow bulk, rare large outliers, a clustered passage; exact whatever the shape."""
    batch, heads, slots, k = 1, 3, 3000, 200
    scores = torch.randn(batch, heads, slots) * 0.01
    scores[0, 0, torch.randint(0, slots, (12,))] = torch.rand(12) * 1e4  # outliers
    scores[0, 1, 1200:1500] += 3.0  # a relevant passage
    scores[0, 2, torch.randperm(slots)[: slots // 2]] = 0.5  # half the row exactly equal
    lengths, starts = torch.tensor([slots], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    out = run(ts, scores, lengths, starts, k, sink=8, recent=16, block=256, part_len=1024)
    assert torch.equal(as_sets(out), ts.select_top_tokens_reference(scores, lengths, starts, k, sink=8, recent=16))


def test_listed_rows_only_and_every_entry_written(ts):
    scores, lengths, starts = padded_scores(2, 4, 900, [900, 700], 3, 5, fill=1e30)
    out = run(ts, scores, lengths, starts, 64, sink=3, recent=5, rows=[3, 1], block=128, part_len=256)
    expected = topk_expected(scores, lengths, starts, 64, 3, 5)
    assert torch.equal(as_sets(out[:, [1, 3]]), expected[:, [1, 3]])
    assert (out[:, [0, 2]] == POISON).all()  # unlisted heads untouched
    assert not (out[:, [1, 3]] == POISON).any()  # listed heads fully overwritten (positions or -1)
    fresh = ts.select_top_tokens(scores, lengths, starts, 64, sink=3, recent=5, rows=[2])
    assert (fresh[:, [0, 1, 3]] == -1).all() and torch.equal(as_sets(fresh[:, [2]]), expected[:, [2]])


def test_exact_whatever_the_cut_offs(ts):
    """The cut-offs only steer speed: sorted random keys, all at the top, all at the bottom, repeated keys, with
    the bracket as a list, longer than one block, or read back from the scores."""
    scores, lengths, starts = padded_scores(2, 1, 1300, [1300, 1100], 5, 7, fill=1e30)
    scores[1, 0, 500:700] = 0.25  # ties inside some brackets too
    expected = ts.select_top_tokens_reference(scores, lengths, starts, 333, sink=5, recent=7)
    key_min, key_top = -(2**31), 2**31 - 1

    def sorted_random(cuts):
        cuts[:, 1:9] = torch.randint(key_min + 1, key_top, (cuts.shape[0], 8)).sort(-1, descending=True).values

    def near_float_keys(cuts):  # keys of real score values around the data, repeated
        values = torch.tensor([3.0, 1.0, 1.0, 0.25, 0.25, 0.0, -5.0, -5.0])
        bits = values.view(torch.int32)
        cuts[:, 1:9] = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    cases = [  # (name, hook, list capacity): None lists every bracket, 50 reads the long ones back
        ("random", sorted_random, None),
        ("random", sorted_random, 50),
        ("top", lambda c: c[:, 1:9].fill_(key_top - 1), None),
        ("bottom", lambda c: c[:, 1:9].fill_(key_min + 1), None),
        ("bottom", lambda c: c[:, 1:9].fill_(key_min + 1), 50),
        ("floats", near_float_keys, None),
    ]
    for name, hook, cap in cases:
        out = run(ts, scores, lengths, starts, 333, sink=5, recent=7, block=256, part_len=512, cap=cap, cut_hook=hook)
        assert torch.equal(as_sets(out), expected), (name, cap)
        assert_layout(out)


class NoHostReads(TorchDispatchMode):
    """Fails on any op that reads a device value back to the host (.item(), bool(t), nonzero): what a CUDA graph
    capture refuses."""

    READS = (
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.item.default,
        torch.ops.aten.is_nonzero.default,
        torch.ops.aten.nonzero.default,
    )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"host read inside select_top_tokens: {func}")
        return func(*args, **(kwargs or {}))


def test_no_host_reads(ts):
    scores, lengths, starts = padded_scores(2, 2, 800, [800, 600], 2, 2, fill=1e30)
    k_per_row = torch.tensor([50, 20], dtype=torch.int32)
    with NoHostReads():
        out = ts.select_top_tokens(scores, lengths, starts, 60, sink=2, recent=2, k_per_row=k_per_row, rows=[1])
    assert torch.equal(as_sets(out[:, [1]]), topk_expected(scores, lengths, starts, 60, 2, 2, k_per_row)[:, [1]])
    with pytest.raises(AssertionError, match="host read"), NoHostReads():  # the mode does catch a read
        lengths.max().item()


def test_reference_rule_by_hand(ts):
    scores = torch.tensor([[[9.0, 1.0, 5.0, 5.0, float("-inf"), 5.0, 2.0, 7.0, 9.0]]])
    lengths, starts = torch.tensor([8], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    # candidates r = 1..6 (sink 1, recent 1) -> slots 2..7: scores 5, 5, -inf, 5, 2, 7
    got = ts.select_top_tokens_reference(scores, lengths, starts, 5, sink=1, recent=1)
    assert got.tolist() == [[[1, 2, 4, 5, 6]]]
    got = ts.select_top_tokens_reference(scores, lengths, starts, 3, sink=1, recent=1)
    assert got.tolist() == [[[1, 2, 6]]]  # 7, then the two lowest of the three tied 5s
    assert run(ts, scores, lengths, starts, 3, sink=1, recent=1, block=16, part_len=16).sort(-1).values.tolist() == [
        [[1, 2, 6]]
    ]


def test_bad_inputs_are_refused_with_the_fix(ts):
    scores = torch.randn(2, 3, 100)
    lengths = torch.tensor([100, 50], dtype=torch.int32)
    starts = torch.zeros(2, dtype=torch.int32)
    cases = [
        (dict(scores=scores.double()), "float32"),
        (dict(scores=scores.transpose(1, 2)), "float32 tensor \\[B, H, S\\]|unit stride"),
        (dict(lengths=lengths.long()), "int32"),
        (dict(starts=starts[:1]), "int32 tensor \\[B=2\\]"),
        (dict(k=0), "k must be"),
        (dict(rows=[0, 3]), "distinct head indices"),
        (dict(rows=[1, 1]), "distinct head indices"),
        (dict(out=torch.empty(2, 3, 5, dtype=torch.int64)), "out must be int32"),
        (dict(k_per_row=torch.ones(3, dtype=torch.int32)), "k_per_row"),
        (dict(sink=-1), "sink"),
    ]
    for change, message in cases:
        args = dict(scores=scores, lengths=lengths, starts=starts, k=10) | change
        with pytest.raises(ValueError, match=message):
            ts.select_top_tokens(args.pop("scores"), args.pop("lengths"), args.pop("starts"), args.pop("k"), **args)
    with pytest.raises(ValueError, match="unit stride"):
        ts.select_top_tokens(torch.randn(2, 100, 3).transpose(1, 2), lengths, starts, 10)


def test_kernels_compile_for_hopper_without_a_gpu(ts):
    """The GPU build (sm_90) of the three launches compiles here, without spills; the compiler needs the real
    JIT, so it runs in a process without TRITON_INTERPRET."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "lychee_bench.tools.bench_select", "--compile-only", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    usages = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert {u["kernel"] for u in usages} == {"_cuts_kernel", "_count_kernel", "_select_kernel"}, usages
    assert all(0 < u["registers"] <= 255 and u["local_bytes"] == 0 for u in usages), usages
