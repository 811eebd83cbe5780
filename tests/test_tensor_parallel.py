"""Tensor parallel (harness/tensor_parallel.py): each process holds its shard of the heads and the MLP, the engine
all-reduces after o_proj and down_proj, and every method works on its own KV heads.

The launch test runs 2 processes under torchrun (gloo, CPU, float32, the reference paths) and checks that the
greedy tokens of every method, a `run` and a `bench` equal one process's. The fast tests cover the pieces: the
plan's shards, synthetic shards built per rank, per-method declarations and per-GPU byte counts, refusals and the
memory arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lychee_bench.harness import records, tensor_parallel
from lychee_bench.harness.catalog import METHODS
from lychee_bench.harness.memory import GB, device_fit_refusal, weight_bytes
from lychee_bench.harness.synthetic_models import build_synthetic, build_synthetic_shard, synthetic_config
from lychee_bench.harness.tensor_parallel import (
    TensorParallel,
    engine_shard_dim,
    localize,
    shard_bounds,
    tensor_parallel_refusals,
)
from lychee_bench.methods.base import RunShape
from lychee_bench.methods.head_shard import HeadShard, gather_heads, local_heads, local_shape
from lychee_bench.methods.streaming import StreamingAttention
from tests.conftest import cli, read_jsonl, tiny_model

ROOT = Path(__file__).resolve().parents[1]

# ---- the plan's shards ----


def test_shard_bounds_follow_dtensor_chunks():
    assert [shard_bounds(10, 2, r) for r in range(2)] == [(0, 5), (5, 10)]
    assert [shard_bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert [shard_bounds(5, 4, r) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]


def test_the_engines_layout_names_each_parameters_sharded_dimension():
    assert engine_shard_dim("model.layers.12.self_attn.q_proj.weight", 2) == 0
    assert engine_shard_dim("model.layers.3.self_attn.q_proj.bias", 1) == 0
    assert engine_shard_dim("model.layers.3.mlp.up_proj.weight", 2) == 0
    assert engine_shard_dim("model.layers.3.mlp.down_proj.weight", 2) == 1
    assert engine_shard_dim("model.layers.3.mlp.down_proj.bias", 1) is None  # added once, after the sum
    assert engine_shard_dim("model.layers.3.self_attn.q_norm.weight", 1) is None
    assert engine_shard_dim("model.norm.weight", 1) is None
    # The vocabulary rows, whatever transformers' plan says (5.17 leaves an untied embedding whole, 5.24 shards it).
    assert engine_shard_dim("model.embed_tokens.weight", 2) == 0
    assert engine_shard_dim("lm_head.weight", 2) == 0


def test_localize_takes_each_ranks_part_of_parameters_left_whole():
    # A whole model, as transformers 5.17's plan leaves an untied embedding: localize slices every rank's part.
    whole = build_synthetic("tiny-llama-synthetic", "cpu", torch.float32, seed=0)
    named = {name: param.clone() for name, param in whole.named_parameters()}
    rows = {}
    for rank in (0, 1):
        shard = localize(
            build_synthetic("tiny-llama-synthetic", "cpu", torch.float32), TensorParallel(rank, 2, 0, "gloo")
        )
        params = dict(shard.named_parameters())
        assert tuple(params["model.embed_tokens.weight"].shape) == (256, 128)
        assert tuple(params["lm_head.weight"].shape) == (256, 128)
        assert tuple(params["model.layers.0.self_attn.k_proj.weight"].shape) == (32, 128)
        assert tuple(params["model.layers.0.self_attn.o_proj.weight"].shape) == (128, 64)
        assert tuple(params["model.layers.0.mlp.down_proj.weight"].shape) == (128, 128)
        assert torch.equal(params["model.norm.weight"], named["model.norm.weight"])
        rows[rank] = params
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(torch.cat([rows[0][name], rows[1][name]]), named[name])
    down = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(torch.cat([rows[0][down], rows[1][down]], dim=1), named[down])
    assert not any(p.requires_grad for p in rows[0].values())


def test_localize_refuses_a_part_of_the_wrong_shape_and_says_which():
    model = build_synthetic("tiny-llama-synthetic", "cpu", torch.float32)
    model.model.embed_tokens.weight = torch.nn.Parameter(torch.zeros(300, 128))  # neither whole (512) nor half
    with pytest.raises(
        tensor_parallel.TensorParallelError,
        match=r"model.embed_tokens.weight: rank 1 of 2 holds "
        r"\(300, 128\), but the engine's layout gives it \(256, 128\) of \(512, 128\)",
    ):
        localize(model, TensorParallel(1, 2, 0, "gloo"))
    shard = build_synthetic_shard("tiny-llama-synthetic", "cpu", torch.float32, 0, 0, 2)
    with pytest.raises(tensor_parallel.TensorParallelError, match="built as shard"):
        localize(shard, TensorParallel(1, 2, 0, "gloo"))


def test_localize_slices_a_replicated_dtensor_and_refuses_a_shard_along_the_wrong_dimension():
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = DeviceMesh("cpu", [0])
        model = build_synthetic("tiny-llama-synthetic", "cpu", torch.float32)
        embedding = model.model.embed_tokens.weight.detach().clone()
        model.model.embed_tokens.weight = torch.nn.Parameter(DTensor.from_local(embedding, mesh, [Replicate()]))
        localize(model, TensorParallel(1, 2, 0, "gloo"))
        assert torch.equal(model.model.embed_tokens.weight, embedding[256:])
        assert not isinstance(model.model.embed_tokens.weight, DTensor)

        model = build_synthetic("tiny-llama-synthetic", "cpu", torch.float32)
        wrong = DTensor.from_local(model.lm_head.weight.detach()[:, :64].clone(), mesh, [Shard(1)])
        model.lm_head.weight = torch.nn.Parameter(wrong)
        with pytest.raises(tensor_parallel.TensorParallelError, match="sharded lm_head.weight along dimension 1"):
            localize(model, TensorParallel(0, 2, 0, "gloo"))
    finally:
        dist.destroy_process_group()


def test_synthetic_shards_are_built_per_rank_and_never_whole():
    config = synthetic_config("tiny-llama-synthetic")  # 4 query / 2 KV heads of 32, hidden 128, MLP 256, vocab 512
    shards = [build_synthetic_shard("tiny-llama-synthetic", "cpu", torch.float32, 0, rank, 2) for rank in (0, 1)]
    for rank, shard in enumerate(shards):
        attention, mlp = shard.model.layers[0].self_attn, shard.model.layers[0].mlp
        assert tuple(attention.q_proj.weight.shape) == (64, 128)  # 2 query heads
        assert tuple(attention.k_proj.weight.shape) == (32, 128)  # 1 KV head
        assert tuple(attention.o_proj.weight.shape) == (128, 64)
        assert tuple(mlp.gate_proj.weight.shape) == (128, 128) and tuple(mlp.down_proj.weight.shape) == (128, 128)
        assert tuple(shard.model.embed_tokens.weight.shape) == (256, 128)  # half of the vocabulary's rows
        assert tuple(shard.lm_head.weight.shape) == (256, 128)
        assert bool((shard.model.norm.weight == 1).all())
        assert shard.__dict__[tensor_parallel.BUILT_SHARD][1] == 2
        assert localize(shard, TensorParallel(rank, 2, 0, "gloo")) is shard  # checks every shape
    # Each rank's weights are its own draw; the same rank and seed build the same shard again.
    first, second = (s.model.layers[0].self_attn.q_proj.weight for s in shards)
    assert not torch.equal(first, second)
    again = build_synthetic_shard("tiny-llama-synthetic", "cpu", torch.float32, 0, 0, 2)
    assert torch.equal(again.model.layers[0].self_attn.q_proj.weight, first)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        whole = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert sum(p.numel() for p in shards[0].parameters()) == pytest.approx(whole / 2, rel=0.01)  # norms replicated


def test_llama3_70b_synthetic_shape_and_its_weights():
    config = synthetic_config("llama3-70b-synthetic")
    shape = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads)
    assert shape == (80, 8192, 64, 8) and config.head_dim == 128
    assert (config.intermediate_size, config.vocab_size) == (28672, 128256)
    assert weight_bytes(config, torch.bfloat16) / GB == pytest.approx(141.1, abs=0.05)
    assert weight_bytes(config, torch.bfloat16, 2) / GB == pytest.approx(70.56, abs=0.05)


# ---- refusals and memory arithmetic ----


def test_kv_heads_that_do_not_split_are_refused_with_the_counts_that_would():
    config = synthetic_config("llama3-70b-synthetic")
    assert tensor_parallel_refusals(config, 2) == [] and tensor_parallel_refusals(config, 8) == []
    (reason,) = tensor_parallel_refusals(config, 3)
    assert "8 KV heads do not split over 3 processes" in reason and "1, 2, 4, 8" in reason


def test_bench_refuses_kv_heads_that_do_not_split_before_starting_any_process_group(monkeypatch, tmp_path):
    from lychee_bench.tasks.latency.bench import BenchError, run_bench

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(BenchError, match="2 KV heads do not split over 3 processes"):
        run_bench(["full"], [64], [1], model="tiny-llama-synthetic", out=tmp_path, smoke=True, tensor_parallel=True)
    assert not torch.distributed.is_initialized() and not any(tmp_path.iterdir())


def test_tensor_parallel_without_torchrun_is_refused_with_the_launch_command(monkeypatch, tmp_path):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    result = cli("bench", "--smoke", "--tensor-parallel", "--model", "tiny-llama-synthetic", "--out", str(tmp_path))
    assert result.exit_code == 2 and "torchrun --nproc-per-node 2" in result.output
    result = cli("run", "--tensor-parallel", "--model", "tiny-llama-synthetic", "--tokenizer", "smollm2-135m")
    assert result.exit_code == 2 and "torchrun --nproc-per-node 2" in result.output


def test_batch_4_at_131072_does_not_fit_two_gpus_and_the_refusal_shows_the_arithmetic():
    config = synthetic_config("llama3-70b-synthetic")
    free = 148 * GB  # an H200's 150 GB less the CUDA context and the planner's headroom
    for batch, ctx in ((1, 32768), (4, 32768), (1, 131072)):
        assert device_fit_refusal(config, torch.bfloat16, batch, ctx, free, 2) is None
    reason = device_fit_refusal(config, torch.bfloat16, 4, 131072, free, 2)
    assert "80 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes x 131072 tokens x 4 = 171.8 GB" in reason
    assert "the weights 141.1 GB" in reason and "70.6 GB of weights + 85.9 GB of cache" in reason
    assert "4 GPUs" in reason  # the fix: 35.3 + 42.9 GB per GPU
    assert "does not fit one GPU" in device_fit_refusal(config, torch.bfloat16, 1, 131072, free, 1)


# ---- methods on their own heads ----


def test_every_registered_method_declares_how_it_runs_tensor_parallel():
    for name in METHODS.names():
        declared = METHODS.get(name).tensor_parallel
        assert isinstance(declared, str) and declared.strip(), f"{name} must declare `tensor_parallel`"


def test_a_method_that_declares_nothing_is_refused_under_tensor_parallel():
    class Undeclared(StreamingAttention):
        name = "undeclared"
        tensor_parallel = None

    shape = RunShape("llama", 4, 4, 2, 32, "float32", "cpu", 1, 64)
    assert Undeclared().check(shape) == []
    (reason,) = Undeclared().check(dataclasses.replace(shape, tensor_parallel=2))
    assert "does not declare how it runs with its KV heads split" in reason


def test_head_shard_slices_tables_and_gathers_in_head_order():
    shard = HeadShard.for_rank(8, 1, 2)
    assert (shard.first, shard.count, shard.heads) == (4, 4, slice(4, 8))
    table = torch.arange(16).view(2, 8)
    assert local_heads(table, shard).tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert local_heads(table, None) is table and gather_heads(table, None) is table
    with pytest.raises(ValueError, match="do not split evenly"):
        HeadShard.for_rank(8, 0, 3)
    with pytest.raises(RuntimeError, match="no gather"):
        gather_heads(table, shard)


@pytest.mark.parametrize(
    "entry",
    ["full", "lychee[roles=uniform:9]", "duo[roles=uniform:9]", "tidal[reselect_layer=3]", "quest", "streaming"],
)
def test_per_gpu_kv_bytes_of_every_rank_add_up_to_the_whole(entry):
    from lychee_bench.harness.runner import build_methods

    (method,) = build_methods([entry], {})
    shape = RunShape("llama", 6, 8, 4, 64, "bfloat16", "cpu", 2, 8192, "m", tensor_parallel=2)
    assert method.check(shape) == []
    whole = method.bytes_read_per_step(shape, 8192, 2)
    per_rank = []
    for rank in (0, 1):
        method.set_head_shard(HeadShard.for_rank(4, rank, 2))
        per_rank.append(method.bytes_read_per_step(local_shape(shape, 2), 8192, 2))
    assert sum(per_rank) == whole
    if entry.startswith(("lychee", "duo")):  # roles sliced per rank: uniform:9 puts its 5 beyond layer 0 on rank 1
        assert per_rank[0] < per_rank[1]


# ---- a whole launch: 2 processes, gloo ----

RUN = ["run", "--task", "ruler[sizing=tight]/vt", "--ctx", "768", "--device", "cpu", "--samples", "1"]
RUN += ["--method", "full,lychee[roles=uniform:3;sink=4;recent=8;budget=64]", "--no-decode-exercise"]
BENCH = ["bench", "--smoke", "--model", "tiny-llama-synthetic", "--ctx", "256", "--batch", "2", "--reps", "2"]
BENCH += ["--methods", "full,lychee[granularity=block;budget=128]", "--tensor-parallel"]
SAME = ("run_key", "label", "index", "prediction", "new_tokens", "stop_reason", "input_tokens")


@pytest.mark.slow
def test_two_processes_give_one_process_tokens_for_every_method_run_and_bench(tmp_path, smol_tokenizer):
    from tests import tensor_parallel_worker as worker

    # llama with every method; qwen2 (biases on q/k/v, sharded with their rows) with a dense, a per-head and a
    # gathering method.
    folders = {str(tmp_path / "llama"): None, str(tmp_path / "qwen2"): ["full", worker.ENTRIES[1], "kascade-crossed"]}
    for folder in folders:
        tiny_model(Path(folder).name, layers=4).save_pretrained(folder)
    with_tokenizer = tmp_path / "tokenized"
    tiny_model("llama", vocab_size=len(smol_tokenizer), layers=4).save_pretrained(with_tokenizer)
    smol_tokenizer.save_pretrained(with_tokenizer)
    model = ["--model", str(with_tokenizer)]
    arguments = {
        "out": str(tmp_path),
        "folders": folders,
        "run": [*RUN, *model, "--tensor-parallel", "--out", str(tmp_path / "run-tp")],
        "bench": [*BENCH, "--out", str(tmp_path / "bench-tp")],
    }
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keeps a chosen transformers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "LYCHEE_BENCH_DIST_TIMEOUT_MIN": "5"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(ROOT / "tests" / "tensor_parallel_worker.py"), json.dumps(arguments)]
    launch = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # One process, meanwhile: the same decodes and the same run.
    from lychee_bench.harness import models

    single = {}
    for folder, only in folders.items():
        source = models.resolve_model(folder)
        single[folder] = worker.decode(models.load_model(source, models.load_config(source), "cpu", "float32"), only)
    assert cli(*RUN, *model, "--out", str(tmp_path / "run-single")).exit_code == 0

    output, _ = launch.communicate(timeout=600)
    assert launch.returncode == 0, output[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["heads"] for r in ranks] == [16, 16]  # each process holds one of the 2 KV heads (head dim 16)
    for folder in folders:
        distinct = {json.dumps(tokens) for tokens in single[folder].values()}
        assert len(distinct) > len(single[folder]) // 2  # the methods' tokens differ from each other
        for rank in ranks:  # every process holds the same (gathered) logits, so the same tokens
            assert rank["tokens"][folder] == single[folder], folder

    assert all(r["run"]["exit_code"] == 0 for r in ranks), ranks[0]["run"]["output"]
    samples = [read_jsonl(tmp_path / name / "records.jsonl", "sample") for name in ("run-single", "run-tp")]
    assert [sorted(tuple(r[key] for key in SAME) for r in found) for found in samples[1:]] == [
        sorted(tuple(r[key] for key in SAME) for r in samples[0])
    ]
    assert all(r["parallel"]["layout"] == "tensor parallel" for r in samples[1])
    assert [p.name for p in records.run_files(tmp_path / "run-tp")] == ["records.jsonl"]  # rank 0's, no shards

    assert all(r["bench"]["exit_code"] == 0 for r in ranks), ranks[0]["bench"]["output"]
    rows = read_jsonl(tmp_path / "bench-tp" / "records.jsonl", "latency")
    assert {r["method"] for r in rows} == {"full", "lychee[granularity=block;budget=128]"}
    for row in rows:
        assert row["parallel"]["world_size"] == 2 and row["parallel"]["kv_heads_per_rank"] == 1
        assert row["floor_per"] == "gpu" and len(row["floor_ms_per_rank"]) == 2
        assert row["floor_ms"] == max(row["floor_ms_per_rank"]) and row["logits_finite"]
        assert row["kv_bytes_read"] <= row["kv_bytes_read_all_gpus"]
    full = next(r for r in rows if r["method"] == "full")
    assert full["kv_bytes_read"] * 2 == full["kv_bytes_read_all_gpus"]  # each GPU reads its own KV head
