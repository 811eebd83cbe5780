"""The end-to-end latency bench (issue #5) on a tiny synthetic model, CPU only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lychee_bench.harness.attention import DecodeState
from lychee_bench.harness.engine import Engine
from lychee_bench.harness.records import read_records
from lychee_bench.harness.static_engine import FixedSlotCache, StaticDecoder
from lychee_bench.harness.synthetic_models import build_synthetic, synthetic_config
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.lychee import LycheeConfig, LycheeDecode
from lychee_bench.tasks.latency.bench import SMOKE_LABEL, BenchError, run_bench
from lychee_bench.tasks.latency.graph_safe import make_graph_safe
from lychee_bench.tasks.latency.plot import latency_table, plot_latency
from lychee_bench.tasks.latency.traffic import kv_bytes_read, weight_bytes_read

TINY = "tiny-llama-synthetic"
SMOKE_OPTIONS = {"roles": "uniform:3", "path": "reference", "budget": "128"}


@pytest.fixture(scope="module")
def tiny():
    return build_synthetic(TINY, "cpu", torch.float32, seed=0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    records = run_bench(
        ["full", "lychee"], [192, 320], [1, 2], model=TINY, out=out, reps=2, smoke=True, options=SMOKE_OPTIONS
    )
    return out, records


def _cache(model, batch, ctx):
    cfg = model.config
    return FixedSlotCache(
        cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, ctx, torch.float32, "cpu"
    )


def test_smoke_bench_writes_complete_records(smoke_run):
    out, returned = smoke_run
    records = [r for r in read_records(out) if r["kind"] == "latency"]
    assert len(records) == len(returned) == 2 * 2 * 2
    assert (out / "manifest.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["kind"] == "latency" and manifest["runs"][-1]["provenance"]["packages"]
    for r in records:
        assert not r.get("error"), r.get("error")
        assert r["label"] == SMOKE_LABEL and r["timing_mode"].startswith(SMOKE_LABEL)
        assert r["weights"] == "synthetic"
        for key in ("decode_ms", "decode_p10_ms", "decode_p90_ms", "attention_ms_per_layer", "bytes_per_step"):
            assert r[key] > 0, key
        for key in ("floor_ms", "time_over_floor", "copy_bw_bytes_per_s", "weight_bytes_read", "kv_bytes_read"):
            assert r[key] > 0, key
        assert r["speedup_vs_full"] > 0
        assert r["context_checked"] == r["ctx"] and r["context_drift"] is False
        assert r["logits_finite"]
        assert "provenance" in r and r["method_config"]["name"] == r["method"]
    lychee = [r for r in records if r["method"] == "lychee"]
    assert all(r["path"] == "reference" and r["method_config"]["roles_used"]["retrieval_heads"] == 3 for r in lychee)
    assert any(r["kind"] == "latency-copy" for r in read_records(out))


def test_plot_and_table(smoke_run, tmp_path):
    out, _ = smoke_run
    paths = plot_latency(out, tmp_path / "plots")
    assert len(paths) == 3
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = latency_table(read_records(out))
    assert "lychee" in table and "time/floor" in table and SMOKE_LABEL in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_without_cuda(tmp_path):
    with pytest.raises(BenchError) as error:
        run_bench(["full"], [4096], [1], model="llama3-8b-synthetic", out=tmp_path, device="cuda")
    assert "--smoke" in str(error.value) and "smoke=True" in str(error.value)
    with pytest.raises(BenchError, match="tiny models only"):
        run_bench(["full"], [4096], [1], model="llama3-8b-synthetic", out=tmp_path, smoke=True)


def test_static_step_matches_dynamic_engine(tiny):
    ctx, batch = 48, 2
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, tiny.config.vocab_size, (batch, ctx), generator=generator)
    method = FullAttention()
    decoder = StaticDecoder(tiny, _cache(tiny, batch, ctx), batch, make_graph_safe(method)[0])
    decoder.prefill(tokens[:, :-1], chunk=16)
    decoder.input_ids.copy_(tokens[:, -1:])
    static_logits = decoder.step().clone()

    engine = Engine(tiny, SimpleNamespace(pad_token_id=0, eos_token_id=None))
    from transformers import DynamicCache

    from lychee_bench.harness.attention import method_attention

    cache = DynamicCache(config=tiny.config)
    mask = torch.ones(batch, ctx - 1, dtype=torch.long)
    positions = torch.arange(ctx - 1)[None].expand(batch, -1)
    with torch.inference_mode(), method_attention(tiny):
        state = DecodeState(method=method)
        state.begin_step("prefill")
        engine._forward(tokens[:, :-1], mask, positions, cache, state)
        state.begin_step("decode")
        full_mask = torch.ones(batch, ctx, dtype=torch.long)
        dynamic_logits = engine._forward(tokens[:, -1:], full_mask, positions[:, -1:] + 1, cache, state).logits[:, -1]
    torch.testing.assert_close(static_logits, dynamic_logits, rtol=1e-4, atol=1e-4)


def test_context_does_not_drift(tiny):
    ctx, batch = 40, 1
    cache = _cache(tiny, batch, ctx)
    cache.fill_random(ctx - 1, seed=3)
    decoder = StaticDecoder(tiny, cache, batch, make_graph_safe(FullAttention())[0])
    before = [layer.keys[:, :, : ctx - 1].clone() for layer in cache.layers]
    first = decoder.step().clone()
    for _ in range(4):
        logits = decoder.replay()
    assert decoder.context_length() == ctx and cache.length == ctx - 1
    assert int(decoder.position_ids.max()) == ctx - 1
    for layer, old in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.keys[:, :, : ctx - 1], old)  # earlier slots are never touched
    torch.testing.assert_close(logits, first)  # same slot, same input: the same step every time


_HOST_READS = (
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,  # seen instead of _local_scalar_dense under inference_mode
    torch.ops.aten.is_nonzero.default,  # bool(tensor)
    torch.ops.aten.nonzero.default,
)


class _NoHostReads(TorchDispatchMode):
    """Fails on any op that reads a tensor value back to the host (.item(), bool(t), nonzero)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            raise AssertionError(f"host read inside the decode step: {func}")
        return func(*args, **(kwargs or {}))


def test_graph_safe_full_step_has_no_host_reads(tiny):
    """The CPU stand-in for CUDA-graph capture: the whole decode step (HF model, cache, method) never reads a
    value back. The plain FullAttention needs none either, since the step carries the host lengths (the static
    decoder and the engine give them)."""
    ctx = 32
    cache = _cache(tiny, 1, ctx)
    cache.fill_random(ctx - 1)
    decoder = StaticDecoder(tiny, cache, 1, make_graph_safe(FullAttention())[0])
    with _NoHostReads():
        decoder.step()
    plain = StaticDecoder(tiny, cache, 1, FullAttention())
    with _NoHostReads():
        plain.step()


def test_bytes_per_step_formulas():
    config = synthetic_config("llama3-8b-synthetic")
    shape = RunShape.from_config(config, "bfloat16", "cuda", 4, 131072, "llama3-8b-synthetic")
    full = kv_bytes_read(FullAttention(), shape, 131072, 4)
    assert full == 32 * 8 * 131072 * 128 * 2 * 2 * 4  # layers x KV heads x tokens x D x (K, V) x 2 B x batch
    assert abs(full / 4 / 2**30 - 16.0) < 1e-9  # SPEC §1: 16 GiB per sequence at 128K

    lychee = LycheeDecode(LycheeConfig(roles="uniform:32", budget=4096))
    assert not lychee.check(shape)
    expected = (32 * 131072 + (256 - 32) * 4096) * 128 * 2 * 2 * 4
    assert kv_bytes_read(lychee, shape, 131072, 4) == expected
    # Below the budget a sparse head reads the whole (short) context.
    assert kv_bytes_read(lychee, shape, 2048, 1) == 256 * 2048 * 128 * 2 * 2


def test_weight_bytes_skip_the_embedding_table(tiny):
    counted = weight_bytes_read(tiny, batch=2)
    table = tiny.model.embed_tokens.weight
    expected = counted["param_bytes"] - table.numel() * 4 + 2 * table.shape[1] * 4
    assert counted["weight_bytes_read"] == expected


def test_synthetic_qwen3_builds_finite():
    model = build_synthetic("tiny-qwen3-synthetic", "cpu", torch.float32, seed=0)
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    assert torch.allclose(model.model.layers[0].self_attn.q_norm.weight, torch.ones(1))


def test_compiled_dense_blocks_keep_the_logits_and_restore_the_model(tiny, tmp_path):
    """torch.compile of norms, MLPs and rotary (the bench's default on CUDA) changes no logit beyond rounding,
    and the model is plain eager again afterwards; the bench records what it compiled."""
    import sys

    from lychee_bench.harness.fused_blocks import ROTARY_FUNCTION, compiled_dense_blocks

    ids = torch.randint(0, tiny.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    modeling = sys.modules[type(tiny).__module__]
    rotary = getattr(modeling, ROTARY_FUNCTION)
    with torch.no_grad():
        eager = tiny(ids).logits
        with compiled_dense_blocks(tiny) as compiled:
            fused = tiny(ids).logits
        assert {"apply_rotary_pos_emb"} < set(compiled) and any(name.endswith("MLP") for name in compiled)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
    assert getattr(modeling, ROTARY_FUNCTION) is rotary
    assert all("forward" not in vars(module) for module in tiny.modules())
    records = run_bench(["full"], [192], [1], model=TINY, out=tmp_path, reps=1, smoke=True, compile=True)
    assert records and all("RMSNorm" in " ".join(r["compiled"]) for r in records)


def _no_read_methods(tmp_path) -> dict[str, Method]:
    """Every built-in method, configured for the tiny synthetic model (4 layers, 2 KV heads)."""
    from lychee_bench.calibration.artifacts import kascade_to_json, write_json
    from lychee_bench.harness.catalog import METHODS

    anchors = tmp_path / "anchors.json"
    write_json(anchors, kascade_to_json([0, 2], [[0, 1], [1, 0], [0, 1], [1, 1]], {"name": "tiny"}, {}))
    options = {
        "lychee": {
            "roles": "uniform:3",
            "path": "reference",
            "budget": 64,
            "granularity": "token",
            "sink": 4,
            "recent": 8,
        },
        "duo": {"roles": "uniform:3", "sink": 4, "budget": 32},
        "streaming": {"sink": 4, "budget": 32},
        "tidal": {"budget": 64, "reselect_layer": 3},
        "quest": {"budget": 64, "page_size": 8},
        "kascade": {"budget": 64, "anchors": str(anchors)},
    }
    return {name: METHODS.get(name).from_options(options.get(name, {})) for name in METHODS.names()}


def test_every_method_decode_step_has_no_host_reads(tiny, tmp_path):
    """With the step's host lengths, no method reads a device value back inside a decode step (what a CUDA graph
    capture needs; `.tolist()` on a CPU tensor escapes this check, item/bool/nonzero do not)."""
    ctx = 160
    cache = _cache(tiny, 2, ctx)
    cache.fill_random(ctx - 1, seed=5)
    methods = _no_read_methods(tmp_path)
    assert {"full", "lychee", "tidal", "quest", "duo", "streaming", "kascade"} <= set(methods)
    # Each declares itself capturable, except lychee, whose Triton path the bench wraps (graph_safe.py).
    assert {name for name, method in methods.items() if not method.graph_safe} == {"lychee"}
    for name, method in methods.items():
        method.prepare(tiny)
        decoder = StaticDecoder(tiny, cache, 2, method)
        with _NoHostReads():
            logits = decoder.step()
        assert bool(torch.isfinite(logits).all()), name


def test_efficient_paths_decode_step_has_no_host_reads(tmp_path):
    """The same check for the methods' Triton paths (run by the interpreter here): selection, page bounds and
    the kernel calls read nothing back either, so the bench can capture them."""
    from transformers import AutoModelForCausalLM

    from lychee_bench.harness.synthetic_models import synthetic_config

    config = synthetic_config(TINY)
    config.head_dim = 64  # the kernels' smallest head dim; the tiny model's own is 32
    config._name_or_path = TINY
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_config(config).eval()
    ctx = 160
    cache = _cache(tiny, 2, ctx)
    cache.fill_random(ctx - 1, seed=6)
    methods = {name: m for name, m in _no_read_methods(tmp_path).items() if name not in ("full", "lychee")}
    for name, method in methods.items():
        method.config.path = "triton"
        method.prepare(tiny)
        assert method.path == "triton", name
        decoder = StaticDecoder(tiny, cache, 2, method)
        decoder.step()  # the first step builds what later steps keep (Quest's page bounds)
        with _NoHostReads():
            logits = decoder.step()
        assert bool(torch.isfinite(logits).all()), name


def test_every_method_has_a_floor():
    """The bench reports time / floor for every registered method: each has a K/V byte count, at most full's."""
    from lychee_bench.harness.catalog import METHODS
    from lychee_bench.tasks.latency.bench import KASCADE_PRESET_FOR_SHAPE

    config = synthetic_config("llama3-8b-synthetic")
    shape = RunShape.from_config(config, "bfloat16", "cuda", 1, 131072, "llama3-8b-synthetic")
    options = {
        "lychee": {"roles": "uniform:32"},
        "duo": {"roles": "uniform:32", "budget": 4096},
        "kascade": {"anchors": KASCADE_PRESET_FOR_SHAPE["llama3-8b-synthetic"], "budget": 4096},
        "streaming": {"budget": 4096},
    }
    full = kv_bytes_read(FullAttention(), shape, 131072, 1)
    for name in METHODS.names():
        method = METHODS.get(name).from_options(options.get(name, {}))
        assert method.check(shape) == [], name
        read = kv_bytes_read(method, shape, 131072, 1)
        assert read is not None and 0 < read <= full, name
    tidal = METHODS.get("tidal").from_options({"budget": 4096})
    tidal.check(shape)
    # 2 dense + 2 selection layers read all, 28 reuse layers read 32 query heads x 4096 tokens.
    assert kv_bytes_read(tidal, shape, 131072, 1) == (4 * 8 * 131072 + 28 * 32 * 4096) * 128 * 2 * 2


def test_profile_records_kernels_busy_time_and_gap(tmp_path):
    """`bench --profile N` (CPU smoke: leaf ops stand in for kernels): per point, kernels per step, busy time,
    the gap to the timed step, and a table of the top kernels in profiles/."""
    records = run_bench(["full"], [160], [1], model=TINY, out=tmp_path, reps=1, smoke=True, profile=2)
    profile = records[0]["profile"]
    assert profile["profiled_steps"] == 2 and profile["kernels_per_step"] > 10 and profile["busy_ms_per_step"] > 0
    assert profile["gap_ms_per_step"] == pytest.approx(records[0]["decode_ms"] - profile["busy_ms_per_step"])
    (table,) = (tmp_path / "profiles").glob("full_ctx160_b1.txt")
    assert "ms/step" in table.read_text() and "kernels_per_step" in table.read_text()


def test_full_budget_adds_each_sparse_method_at_the_whole_context(tmp_path):
    """`bench --full-budget`: beside full, each sparse method once more with a budget holding the longest
    context (SPEC §4), which then reads every cached token."""
    records = run_bench(
        ["full", "streaming[sink=4]"], [96, 160], [1], model=TINY, out=tmp_path, reps=1, smoke=True, full_budget=True
    )
    labels = {r["method"] for r in records}
    assert labels == {"full", "streaming[sink=4]", "streaming[sink=4;budget=160]"}
    wide = [r for r in records if r["method"] == "streaming[sink=4;budget=160]"]
    full = {r["ctx"]: r["kv_bytes_read"] for r in records if r["method"] == "full"}
    assert all(r["kv_bytes_read"] == full[r["ctx"]] for r in wide)
