"""The shared sparse decode kernel (kernels/sparse_decode.py) against masked attention in plain torch.

Fresh random inputs on every run; each test prints its seed (rerun with LYCHEE_TEST_SEED=<seed>). The kernel
runs under TRITON_INTERPRET=1 on CPU. The reference is built here from the same position lists, independently
of the kernel: a boolean mask over the cache, then SDPA.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lychee_bench.methods.common import masked_decode_attention  # noqa: E402
from lychee_bench.methods.efficient import top_index, window_index  # noqa: E402
from tests.conftest import fresh_seed  # noqa: E402

try:
    from lychee_bench.kernels import sparse_decode
except ImportError as error:  # a missing Triton must fail loudly, never skip
    sparse_decode = None
    IMPORT_ERROR = f"the sparse kernel cannot be imported ({error}); install Triton: pip install triton"

TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 2e-2}


@pytest.fixture
def kernel():
    if sparse_decode is None:
        pytest.fail(IMPORT_ERROR)
    fresh_seed()
    return sparse_decode


def left_padded(batch: int, hkv: int, group: int, dim: int, max_len: int, dtype: torch.dtype):
    """Queries, a left-padded cache (padding filled with huge values: reading it would show) and lengths."""
    q = torch.randn(batch, hkv * group, dim).to(dtype)
    k = torch.randn(batch, hkv, max_len, dim).to(dtype)
    v = torch.randn(batch, hkv, max_len, dim).to(dtype)
    lengths = torch.randint(1, max_len + 1, (batch,))
    lengths[0] = max_len
    starts = max_len - lengths
    for b in range(batch):
        k[b, :, : starts[b]] = 1e4
        v[b, :, : starts[b]] = 1e4
    return q, k, v, lengths.to(torch.int32), starts.to(torch.int32)


def random_index(lengths: torch.Tensor, rows: int, width: int, unit: int) -> torch.Tensor:
    """[B, rows, width] int32 distinct entries below each sequence's entry count, in random order, -1 mixed in."""
    index = torch.full((lengths.numel(), rows, width), -1, dtype=torch.int32)
    for b, n in enumerate(lengths.tolist()):
        entries = -(-n // unit)
        for r in range(rows):
            take = torch.randint(0, min(width, entries) + 1, ()).item()
            chosen = torch.randperm(entries)[:take]
            slots = torch.randperm(width)[:take]
            index[b, r, slots] = chosen.to(torch.int32)
    return index


def reference(q, k, v, lengths, starts, index, dense, unit, scale):
    """Masked attention with the positions the index (or a dense row) names."""
    batch, _, max_len, _ = k.shape
    rows = index.shape[1]
    keep = torch.zeros(batch, rows, max_len, dtype=torch.bool)
    for b in range(batch):
        start, n = int(starts[b]), int(lengths[b])
        for r in range(rows):
            if dense[r]:
                keep[b, r, start : start + n] = True
                continue
            for entry in index[b, r].tolist():
                if entry >= 0:
                    first = start + entry * unit
                    keep[b, r, first : min(first + unit, start + n)] = True
    empty = ~keep.any(-1)
    keep[..., -1] |= empty  # SDPA needs one position per row; such rows are zeroed below
    out = masked_decode_attention(q[:, :, None].float(), k.float(), v.float(), keep, scale)[:, :, 0]
    group = q.shape[1] // rows
    return out.masked_fill(empty.repeat_interleave(group, dim=1)[..., None], 0.0)


@pytest.mark.parametrize(
    "batch, hkv, group, dim, per_query_head, unit, dtype",
    [
        (3, 2, 4, 64, False, 1, torch.float32),  # Kascade / StreamingLLM: one row per KV head, tokens
        (2, 2, 3, 128, True, 1, torch.float32),  # TidalDecode: one row per query head
        (3, 1, 4, 64, True, 16, torch.float32),  # Quest: pages of 16 per query head
        (2, 3, 1, 64, False, 1, torch.bfloat16),  # no GQA, bf16
    ],
)
def test_listed_rows_match_masked_attention(kernel, batch, hkv, group, dim, per_query_head, unit, dtype):
    max_len = 203  # not a multiple of the 64-token tile
    q, k, v, lengths, starts = left_padded(batch, hkv, group, dim, max_len, dtype)
    rows = hkv * group if per_query_head else hkv
    width = 37 if unit == 1 else 5
    index = random_index(lengths, rows, width, unit)
    dense = [False] * rows
    out = kernel.sparse_decode_attention(q, k, v, lengths, starts, index, 0.125, unit=unit, chunk_tiles=1)
    expected = reference(q, k, v, lengths, starts, index, dense, unit, 0.125)
    torch.testing.assert_close(out.float(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_dense_and_listed_rows_in_one_launch(kernel):
    """DuoAttention's layer: retrieval KV heads read everything, streaming heads their sink + recent window."""
    q, k, v, lengths, starts = left_padded(3, 3, 2, 64, 300, torch.float32)
    lengths[1] = 7  # shorter than the window: every token once
    starts = (300 - lengths).to(torch.int32)
    window = window_index(lengths, sink=4, recent=20)
    index = window[:, None, :].expand(-1, 3, -1)  # one window for every head, not copied
    dense = [True, False, True]
    out = kernel.sparse_decode_attention(
        q, k, v, lengths, starts, index, 0.2, dense_rows=dense, max_length=int(lengths.max()), chunk_tiles=2
    )
    expected = reference(q, k, v, lengths, starts, index, dense, 1, 0.2)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=2e-4)


def test_dense_rows_write_their_token_scores(kernel):
    """LycheeDecode's token path: a dense row leaves the mean over its query heads of q . k at each token's
    cache slot; listed rows and slots outside the sequence keep what was there."""
    q, k, v, lengths, starts = left_padded(2, 3, 2, 64, 200, torch.float32)
    k[k == 1e4] = 0.5  # padding keys: finite, so a wrongly written score would show
    index = random_index(lengths, 3, 40, 1)
    dense = [True, False, True]
    scores = torch.full((2, 3, 200), 7.0)
    kernel.sparse_decode_attention(
        q, k, v, lengths, starts, index, 0.2, dense_rows=dense, max_length=200, chunk_tiles=1, scores=scores
    )
    expected = torch.full((2, 3, 200), 7.0)
    group_mean = q.view(2, 3, 2, 64).mean(dim=2)  # [B, Hkv, D]
    for b in range(2):
        s = int(starts[b])
        for r in (0, 2):
            expected[b, r, s:] = k[b, r, s:] @ group_mean[b, r]
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="scores must be float32"):
        kernel.sparse_decode_attention(q, k, v, lengths, starts, index, 0.2, dense_rows=dense, scores=scores[:, :2])


def test_window_index_lists_sink_and_recent_once():
    lengths = torch.tensor([10, 30, 24], dtype=torch.int32)
    index = window_index(lengths, sink=4, recent=20)
    assert index[0].tolist() == list(range(10)) + [-1] * 14
    assert index[1].tolist() == [0, 1, 2, 3] + list(range(10, 30))
    assert index[2].tolist() == list(range(24))


def test_top_index_counts_from_the_first_real_token_and_marks_missing():
    scores = torch.tensor([[[float("-inf"), float("-inf"), 3.0, 1.0, 2.0]]])
    index = top_index(scores, 4, torch.tensor([2]))
    assert index.tolist() == [[[0, 2, 1, -1]]]


def test_default_chunking_and_bad_input(kernel):
    q, k, v, lengths, starts = left_padded(2, 2, 2, 64, 150, torch.float32)
    index = random_index(lengths, 2, 70, 1)
    out = kernel.sparse_decode_attention(q, k, v, lengths, starts, index, 0.3)
    expected = reference(q, k, v, lengths, starts, index, [False, False], 1, 0.3)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=2e-4)
    with pytest.raises(ValueError, match="selection rows"):
        kernel.sparse_decode_attention(q, k, v, lengths, starts, index[:, :1].expand(-1, 3, -1), 0.3)
    with pytest.raises(ValueError, match="int32"):
        kernel.sparse_decode_attention(q, k, v, lengths, starts, index.long(), 0.3)


def test_sparse_kernel_compiles_for_hopper_without_a_gpu(kernel):
    """The GPU build (sm_90, bf16; rows per KV head or per query head, tokens or pages) compiles here, without
    spills (the compiler needs the real JIT, so it runs in a process without TRITON_INTERPRET)."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "lychee_bench.tools.resource_usage", "--kernel", "sparse", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    usages = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(usages) == 4 and all(0 < u["registers"] <= 255 and u["stack_bytes"] == 0 for u in usages), usages


# The all-dense kernel (index None): full attention's fast path.


def dense_case(lengths: list[int], starts: list[int], max_len: int, hkv: int, group: int, dim: int, dtype):
    """Queries and a cache where every slot outside [start, start + length) holds garbage that would show if
    it were read: huge keys (they would take all the attention) and NaN values (NaN even at weight 0)."""
    batch = len(lengths)
    q = torch.randn(batch, hkv * group, dim).to(dtype)
    k = torch.randn(batch, hkv, max_len, dim).to(dtype)
    v = torch.randn(batch, hkv, max_len, dim).to(dtype)
    real = torch.zeros(batch, max_len, dtype=torch.bool)
    for b, (n, s) in enumerate(zip(lengths, starts, strict=True)):
        real[b, s : s + n] = True
    outside = ~real[:, None, :].expand(-1, hkv, -1)
    k[outside] = 3e4
    v[outside] = float("nan")
    as_int = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return q, k, v, as_int(lengths), as_int(starts), real


def dense_reference(q, k, v, real, scale):
    """Float64 SDPA with a boolean mask over the real tokens (garbage zeroed first: masked NaN would spread)."""
    keep = real[:, None, None, :]
    k64 = k.double().masked_fill(~real[:, None, :, None], 0.0)
    v64 = v.double().masked_fill(~real[:, None, :, None], 0.0)
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None].double(), k64, v64, attn_mask=keep, scale=scale, enable_gqa=True
    )
    return out[:, :, 0]


DENSE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize(
    "hkv, group, dim, dtype, tile",
    [
        (2, 4, 64, torch.float32, 64),  # Llama-like GQA 4
        (1, 3, 128, torch.bfloat16, 64),  # SmolLM2-like GQA 3, head dim 128
        (3, 1, 64, torch.bfloat16, 32),  # no GQA
        (2, 4, 128, torch.float32, 16),  # many short tiles: the unmasked loop and the masked last tile
        (2, 3, 64, torch.float32, 64),
    ],
)
def test_all_dense_matches_masked_attention(kernel, hkv, group, dim, dtype, tile):
    """Batch 3 with left padding and different lengths (a whole number of tiles, a partial last tile, fewer
    tokens than one tile), each ending before the cache does; default chunking and one tile per chunk."""
    max_len = 203
    lengths, starts = [150, 64, 7], [20, 100, 190]
    q, k, v, lengths_t, starts_t, real = dense_case(lengths, starts, max_len, hkv, group, dim, dtype)
    expected = dense_reference(q, k, v, real, 0.15)
    launch = kernel.DenseLaunch(tile=tile)
    for chunk_tiles in (None, 1):
        out = kernel.dense_decode_attention(
            q, k, v, lengths_t, starts_t, 0.15, max_length=max(lengths), chunk_tiles=chunk_tiles, launch=launch
        )
        assert out.dtype == dtype and out.shape == q.shape
        assert torch.isfinite(out).all()
        tol = DENSE_TOLERANCE[dtype]
        torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_all_dense_grid_sized_for_a_longer_generation(kernel, monkeypatch):
    """The engine sizes the grid once for the longest length a generation reaches: a launch for max_length
    (or the whole cache) far beyond today's lengths gives the output of one sized exactly. The last launch
    merges its many chunks a few at a time (a loop the GPU's default sizes take only past 256 chunks)."""
    lengths, starts = [40, 17, 100], [3, 60, 1]
    q, k, v, lengths_t, starts_t, real = dense_case(lengths, starts, 400, 2, 4, 64, torch.float32)
    expected = dense_reference(q, k, v, real, 0.2)
    launch = kernel.DenseLaunch(tile=16)
    exact = kernel.dense_decode_attention(q, k, v, lengths_t, starts_t, 0.2, max_length=100, launch=launch)
    torch.testing.assert_close(exact.double(), expected, atol=1e-5, rtol=1e-5)
    for max_length, chunk_tiles in ((400, None), (400, 1), (None, 2), (250, 3)):
        out = kernel.dense_decode_attention(
            q, k, v, lengths_t, starts_t, 0.2, max_length=max_length, chunk_tiles=chunk_tiles, launch=launch
        )
        torch.testing.assert_close(out, exact, atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(kernel, "DENSE_MERGE_ELEMENTS", 64)  # 4 chunks x 4 heads x 4 dims per load
    out = kernel.dense_decode_attention(q, k, v, lengths_t, starts_t, 0.2, max_length=400, chunk_tiles=1, launch=launch)
    torch.testing.assert_close(out, exact, atol=1e-6, rtol=1e-6)


def test_index_none_takes_the_dense_kernel_unless_told_not_to(kernel, monkeypatch):
    """``sparse_decode_attention`` with no index runs the all-dense kernel; ``specialise_dense=False`` keeps
    the general position-list kernel (the benchmark's "before"); both give the same attention."""
    lengths, starts = [90, 33], [10, 0]
    q, k, v, lengths_t, starts_t, real = dense_case(lengths, starts, 130, 2, 3, 64, torch.float32)
    expected = dense_reference(q, k, v, real, 0.3)
    calls = []
    dense = kernel.dense_decode_attention
    monkeypatch.setattr(kernel, "dense_decode_attention", lambda *a, **kw: calls.append(1) or dense(*a, **kw))
    fast = kernel.sparse_decode_attention(q, k, v, lengths_t, starts_t, None, 0.3, max_length=90)
    assert calls == [1]
    general = kernel.sparse_decode_attention(
        q, k, v, lengths_t, starts_t, None, 0.3, max_length=90, specialise_dense=False
    )
    assert calls == [1]
    torch.testing.assert_close(fast.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(general.double(), expected, atol=2e-4, rtol=2e-4)


def test_dense_launch_rejects_bad_knobs(kernel):
    q, k, v, lengths, starts, _ = dense_case([5], [0], 64, 1, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="tile 48"):
        kernel.DenseLaunch(tile=48)
    with pytest.raises(ValueError, match="stages 0"):
        kernel.DenseLaunch(stages=0)
    with pytest.raises(ValueError, match="max_length 65"):
        kernel.dense_decode_attention(q, k, v, lengths, starts, 0.1, max_length=65)
    with pytest.raises(ValueError, match="chunk_tiles"):
        kernel.dense_decode_attention(q, k, v, lengths, starts, 0.1, chunk_tiles=0)


def test_dense_launch_lowers_stages_where_shared_memory_is_short(kernel, monkeypatch):
    """A device with less shared memory per block than the default pipeline needs (an A100 has 164 KB) gets
    fewer stages, remembered for the next call, instead of an error."""
    from triton.runtime.errors import OutOfResources

    tried = []
    launch_partials = kernel._launch_dense_partials

    def small_device(*args):
        tried.append(args[-2])
        if args[-2] > 2:
            raise OutOfResources(args[-2] * 65536, 3 * 65536, "shared memory")
        return launch_partials(*args)

    monkeypatch.setattr(kernel, "_launch_dense_partials", small_device)
    monkeypatch.setattr(kernel, "_FITTED_STAGES", {})
    q, k, v, lengths, starts, real = dense_case([70, 9], [2, 30], 80, 2, 2, 64, torch.float32)
    launch = kernel.DenseLaunch(tile=32, stages=4)
    for _ in range(2):
        out = kernel.dense_decode_attention(q, k, v, lengths, starts, 0.25, launch=launch)
        torch.testing.assert_close(out.double(), dense_reference(q, k, v, real, 0.25), atol=1e-5, rtol=1e-5)
    assert tried == [4, 3, 2, 2]


DENSE_PTX_SCRIPT = """
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lychee_bench.kernels import sparse_decode as sd

group, dim = int(sys.argv[1]), int(sys.argv[2])
launch = sd.DENSE_LAUNCH
kernel = sd._dense_partials_kernel
names = list(inspect.signature(kernel.fn).parameters)
constants = dict(HKV=8, GS=group, G_PAD=max(16, triton.next_power_of_2(group)), D=dim, TILE=launch.tile,
                 DOT_IN_FP32=False, INPUT_PRECISION="tf32")
types = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "scale_log2e": "fp32"}
signature = {n: "constexpr" if n in constants else types.get(n, "*fp32" if "part" in n else
             ("*i32" if n.endswith("_ptr") else "i32")) for n in names}
# What a launch specialises on: pointers and strides divisible by 16 (torch allocations, head dims 64/128).
attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n.startswith("stride")}
compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=launch.warps,
                          num_stages=launch.stages))
print(json.dumps(dict(ptx=compiled.asm["ptx"], shared=compiled.metadata.shared)))
"""


@pytest.mark.parametrize("group, dim", [(4, 128), (3, 64)])
def test_dense_kernel_compiles_for_hopper_with_wide_pipelined_loads(kernel, group, dim):
    """The GPU build (sm_90, bf16, default knobs) compiles here, and K/V arrive as 16-byte asynchronous copies
    into shared memory (vectorised and software-pipelined), never as 2-byte scalar loads."""
    import json
    import re
    import subprocess
    import sys

    command = [sys.executable, "-c", DENSE_PTX_SCRIPT, str(group), str(dim)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ptx = result["ptx"]
    assert len(re.findall(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx)) >= 8, "no 16-byte cp.async"
    assert not re.search(r"ld\.global(\.[a-z]+)*\.b16", ptx), "scalar 2-byte global loads"
    assert 0 < result["shared"] <= 228 * 1024
