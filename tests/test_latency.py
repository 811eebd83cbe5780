"""The end-to-end latency bench (issue #5) on a tiny synthetic model, CPU only."""

from __future__ import annotations

import json

import pytest
import torch

from lychee_bench.harness.attention import cache_keyword
from lychee_bench.harness.engine import Engine
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.records import read_records
from lychee_bench.harness.synthetic_models import build_synthetic, synthetic_config
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.lychee import LycheeConfig, LycheeDecode
from lychee_bench.report.figures import write_figures
from lychee_bench.tasks.latency.bench import SMOKE_LABEL, BenchError, run_bench
from lychee_bench.tasks.latency.fixed_step import FixedContextStep
from lychee_bench.tasks.latency.plot import latency_table
from lychee_bench.tasks.latency.traffic import kv_bytes_read, weight_bytes_read
from tests.conftest import NoHostReads

TINY = "tiny-llama-synthetic"
SMOKE_OPTIONS = {"roles": "uniform:3", "path": "reference", "budget": "128"}
BLOCK = "lychee[granularity=block]"  # what `bench` times by default: lychee's block path (plain lychee is token)


@pytest.fixture(scope="module")
def tiny():
    return build_synthetic(TINY, "cpu", torch.float32, seed=0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    records = run_bench(
        ["full", BLOCK], [192, 320], [1, 2], model=TINY, out=out, reps=2, smoke=True, options=SMOKE_OPTIONS
    )
    return out, records


def _cache(model, batch, ctx):
    return StaticKVCache.for_config(model.config, batch, ctx, torch.float32, "cpu")


def _step(model, cache, method):
    return FixedContextStep(Engine(model, None), cache, method)


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
        assert "provenance" in r and r["method_config"]["name"] == r["method"].partition("[")[0]  # method: label
    lychee = [r for r in records if r["method"] == BLOCK]
    assert lychee and all(r["method_config"]["granularity"] == "block" for r in lychee)
    assert all(r["path"] == "reference" and r["method_config"]["roles_used"]["retrieval_heads"] == 3 for r in lychee)
    assert any(r["kind"] == "latency-copy" for r in read_records(out))


def test_plot_and_table(smoke_run, tmp_path):
    out, _ = smoke_run
    paths, _ = write_figures([out], tmp_path / "plots")
    names = {path.stem for path in paths}  # one result set: no set label in the names
    assert {"latency_vs_context", "speedup_vs_context", "floor_vs_context"} <= names, names
    assert any(name.startswith("step_breakdown_") for name in names)  # the smoke bench times attention
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = json.loads((tmp_path / "plots" / "figures.json").read_text())
    assert sorted(entry["file"] for entry in index) == sorted(path.name for path in paths)
    assert all(entry["sources"] == {"S1": str(out)} for entry in index)
    table = latency_table(read_records(out))
    assert "lychee" in table and "time/floor" in table and SMOKE_LABEL in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_without_cuda(tmp_path):
    with pytest.raises(BenchError) as error:
        run_bench(["full"], [4096], [1], model="llama3-8b-synthetic", out=tmp_path, device="cuda")
    assert "--smoke" in str(error.value) and "smoke=True" in str(error.value)
    with pytest.raises(BenchError, match="tiny models only"):
        run_bench(["full"], [4096], [1], model="llama3-8b-synthetic", out=tmp_path, smoke=True)


def test_fixed_context_step_matches_transformers(tiny):
    """The bench's step (the engine's prefill, then one step writing slot C-1) gives transformers' own logits
    for the same tokens (its forward with a DynamicCache)."""
    from transformers import DynamicCache

    ctx, batch = 48, 2
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, tiny.config.vocab_size, (batch, ctx), generator=generator)
    method = FullAttention()
    cache = _cache(tiny, batch, ctx)
    engine = Engine(tiny, None, prefill_chunk=16)
    engine.prefill(cache, tokens[:, :-1].tolist(), ctx - 1)
    step = FixedContextStep(engine, cache, method)
    step.tokens.copy_(tokens[:, -1:])
    static_logits = step.step().clone()
    with torch.inference_mode():
        dynamic = DynamicCache(config=tiny.config)
        tiny(input_ids=tokens[:, :-1], use_cache=True, **{cache_keyword(tiny): dynamic})
        positions = torch.full((batch, 1), ctx - 1)
        out = tiny(input_ids=tokens[:, -1:], position_ids=positions, use_cache=True, **{cache_keyword(tiny): dynamic})
    torch.testing.assert_close(static_logits, out.logits[:, -1].float(), rtol=1e-4, atol=1e-4)


def test_context_does_not_drift(tiny):
    ctx, batch = 40, 1
    cache = _cache(tiny, batch, ctx)
    cache.fill_random(ctx - 1, seed=3)
    decoder = _step(tiny, cache, FullAttention())
    before = [keys[:, :, : ctx - 1].clone() for keys in cache.keys]
    first = decoder.step().clone()
    for _ in range(4):
        logits = decoder.replay()
    assert decoder.context_length() == ctx
    assert int(decoder.positions.max()) == ctx - 1
    for keys, old in zip(cache.keys, before, strict=True):
        assert torch.equal(keys[:, :, : ctx - 1], old)  # earlier slots are never touched
    torch.testing.assert_close(logits, first)  # same slot, same input: the same step every time


def test_full_step_has_no_host_reads(tiny):
    """The CPU stand-in for CUDA-graph capture: the whole decode step (layer stack, cache, method) never reads a
    value back."""
    ctx = 32
    cache = _cache(tiny, 1, ctx)
    cache.fill_random(ctx - 1)
    with NoHostReads():
        _step(tiny, cache, FullAttention()).step()


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


def test_compiled_layer_pieces_keep_the_logits(tiny, tmp_path):
    """torch.compile of each layer's dense pieces (the engine's and the bench's default on CUDA) changes no logit
    beyond rounding; the bench records what it compiled."""
    ctx = 24
    cache = _cache(tiny, 2, ctx)
    cache.fill_random(ctx - 1, seed=2)
    eager = _step(tiny, cache, FullAttention()).step().clone()
    pairs = list(zip(cache.keys, cache.values, strict=True))
    written = [(keys[:, :, ctx - 1].clone(), values[:, :, ctx - 1].clone()) for keys, values in pairs]
    for keys, values in pairs:  # the compiled piece must write them again
        keys[:, :, ctx - 1] = 0
        values[:, :, ctx - 1] = 0
    compiled = FixedContextStep(Engine(tiny, None, compiled=True), cache, FullAttention()).step()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    for (key, value), (keys, values) in zip(written, pairs, strict=True):
        torch.testing.assert_close(keys[:, :, ctx - 1], key, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values[:, :, ctx - 1], value, rtol=1e-5, atol=1e-5)
    records = run_bench(["full"], [192], [1], model=TINY, out=tmp_path, reps=1, smoke=True, compile=True)
    assert records and all(r["compiled"] == ["norm", "project_qkv", "finish_and_norm", "logits"] for r in records)


def _no_read_methods(tmp_path) -> dict[str, Method]:
    """Every built-in method, configured for the tiny synthetic model (4 layers, 2 KV heads)."""
    from lychee_bench.harness.catalog import METHODS
    from lychee_bench.methods.artifacts import kascade_to_json, write_json

    anchors = tmp_path / "anchors.json"
    model = {"name": TINY, "fingerprint": "-"}
    write_json(anchors, kascade_to_json([0, 2], [[0, 1], [1, 0], [0, 1], [1, 1]], model, {}))
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


def no_read_model(head_dim: int | None = None) -> torch.nn.Module:
    """The tiny synthetic model, or (head_dim=64, the kernels' smallest; its own is 32) one for the Triton paths."""
    if head_dim is None:
        return build_synthetic(TINY, "cpu", torch.float32, seed=0)
    from transformers import AutoModelForCausalLM

    config = synthetic_config(TINY)
    config.head_dim = head_dim
    config._name_or_path = TINY
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def check_decode_step_has_no_host_reads(
    method: Method,
    model: torch.nn.Module | None = None,
    head_dim: int | None = None,
    seed: int = 5,
    warm: bool = False,
) -> None:
    """A method's whole decode step (2 sequences, 160 tokens) reads no device value back, given the step's host
    lengths: what a CUDA graph capture needs. `warm`: a first step runs unchecked (it builds what later steps keep,
    e.g. Quest's page bounds). `.tolist()` on a CPU tensor escapes this check; item/bool/nonzero do not."""
    model = model if model is not None else no_read_model(head_dim)
    ctx = 160
    cache = _cache(model, 2, ctx)
    cache.fill_random(ctx - 1, seed=seed)
    method.prepare(model)
    decoder = _step(model, cache, method)
    if warm:
        decoder.step()
    with NoHostReads():
        logits = decoder.step()
    assert bool(torch.isfinite(logits).all()), method.label


def test_every_method_decode_step_has_no_host_reads(tiny, tmp_path):
    """With the step's host lengths, no registered method reads a device value back inside a decode step."""
    methods = _no_read_methods(tmp_path)
    assert {"full", "lychee", "tidal", "quest", "duo", "streaming", "kascade"} <= set(methods)
    assert all(method.graph_safe for method in methods.values())  # each declares itself capturable
    for method in methods.values():
        check_decode_step_has_no_host_reads(method, tiny)


def test_efficient_paths_decode_step_has_no_host_reads(tmp_path):
    """The same check for the methods' Triton paths (run by the interpreter here): selection, page bounds and
    the kernel calls read nothing back either, so the bench can capture them."""
    model = no_read_model(head_dim=64)
    for name, method in _no_read_methods(tmp_path).items():
        method.config.path = "triton"
        check_decode_step_has_no_host_reads(method, model, seed=6, warm=True)
        assert method.path == "triton", name


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


def test_versus_transformers_times_both_on_the_same_inputs(tmp_path):
    """The comparison script (CPU plumbing check on the default model): equal-length inputs, stock generate's
    per-step time and the engine's, per method, written to versus.json."""
    from lychee_bench.tasks.latency.versus_transformers import main

    code = main(
        ["--ctx", "512", "--batch", "2", "--methods", "full,streaming", "--new-tokens", "3", "--device", "cpu"]
        + ["--out", str(tmp_path)]
    )
    assert code == 0
    (result,) = json.loads((tmp_path / "versus.json").read_text())
    assert result["batch"] == 2 and 0 < result["prompt_tokens"] <= 512 - 3
    assert result["transformers"]["generate_1_s"] > 0 and result["transformers"]["generate_3_s"] > 0
    assert set(result["lychee_bench"]) == {"full", "streaming"}
    for entry in result["lychee_bench"].values():
        assert entry["ms_per_step"] > 0 and entry["decode_mode"] == "eager"  # CPU timings: plumbing, not speed
