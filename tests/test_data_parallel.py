"""Data parallel `run` under torchrun (CPU, gloo): how samples are dealt, how a folder of rank shards reads as one
run, and whole launches of 2-3 processes (one of them as two torchrun "nodes") that must give one process's
records, resume across world sizes and refuse a second writer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lychee_bench.harness import distributed, records
from lychee_bench.harness.distributed import DistributedError, Group, Ranks, deal, rank_device, ranks_from_env
from tests.conftest import cli, sample_record, tiny_model

ROOT = Path(__file__).resolve().parents[1]

# ---- dealing samples to ranks ----


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_deal_gives_every_item_once_balanced_and_always_the_same(world):
    costs = [800, 790, 60, 810, 805, 400, 400, 30, 795, 812, 1, 640]
    shares = deal(costs, world)
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in shares)  # each rank runs its items in the plan's order
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs)  # greedy to the least loaded: within one item's cost
    assert deal(list(costs), world) == shares


def test_deal_balances_by_cost_not_by_count():
    shares = deal([100, 10, 10, 10, 10, 10, 10, 10, 10, 10], 2)
    assert shares == [[0], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert deal([], 3) == [[], [], []]
    with pytest.raises(ValueError, match="at least 1"):
        deal([1.0], 0)


def _pending(count: int, labels: tuple[str, ...] = ("full",)) -> list:
    from lychee_bench.harness.runner import PendingSample

    rows = []
    for index in range(count):
        sample = SimpleNamespace(subtask="vt", index=index, prompt=f"p{index}", answer_prefix="a", max_new_tokens=30)
        sample.input_tokens = 700 + 50 * (index % 3)
        rows.append(PendingSample(task=None, sample=sample, run_keys={}, labels=set(labels)))
    return rows


@pytest.mark.parametrize(("world", "batch"), [(2, 1), (3, 4), (4, 3)])
def test_ranks_run_the_batches_one_process_forms(world, batch):
    from lychee_bench.harness.runner import batch_cost, rank_batches

    checked = SimpleNamespace(batch_size=batch, plan=SimpleNamespace(ctx=768))
    pending = _pending(11)
    alone = rank_batches(checked, pending, Ranks())
    shares = [rank_batches(checked, pending, Ranks(r, world, r, world)) for r in range(world)]
    # Every batch of the single process runs on exactly one rank, its rows unchanged, in the single process's order.
    position = {tuple(row.sample.index for row in chunk): n for n, chunk in enumerate(alone)}
    dealt = [[position[tuple(row.sample.index for row in chunk)] for chunk in share] for share in shares]
    assert sorted(n for share in dealt for n in share) == list(range(len(alone)))
    assert all(share == sorted(share) for share in dealt)
    # Balanced by cost: the ranks' loads differ by at most one batch.
    cost = [batch_cost(chunk, 768) for chunk in alone]
    loads = [sum(cost[n] for n in share) for share in dealt]
    assert max(loads) - min(loads) <= max(cost)


def test_a_batch_costs_one_prefill_and_each_of_its_methods_decode():
    from lychee_bench.harness.runner import DECODE_STEP_TOKENS, batch_cost

    rows = _pending(3) + _pending(1, ("full", "lychee"))
    rows[1].sample.max_new_tokens = 128
    prefill = sum(row.sample.input_tokens for row in rows)
    assert batch_cost(rows, 768) == prefill + DECODE_STEP_TOKENS * 2 * 128
    assert batch_cost([], 768) == 0


def test_ranks_that_built_other_samples_are_refused_on_every_rank():
    from lychee_bench.harness.runner import PlanError, _check_same_work

    two = Ranks(0, 2, 0, 2)
    agreeing = SimpleNamespace(ranks=two, gather=lambda value: [value, value])
    _check_same_work(agreeing, _pending(3))
    differing = SimpleNamespace(ranks=two, gather=lambda value: [value, "another"])
    with pytest.raises(PlanError, match=r"rank\(s\) 1 built other samples than rank 0") as raised:
        _check_same_work(differing, _pending(3))
    assert raised.value.on_every_rank


# ---- the torchrun environment ----


def test_ranks_come_from_torchrun_variables():
    assert ranks_from_env({}) == Ranks()
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    ranks = ranks_from_env(env)
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.local_world_size) == (2, 4, 0, 2)
    assert ranks.parallel and not ranks.main
    with pytest.raises(DistributedError, match="must be integers"):
        ranks_from_env({**env, "RANK": "x"})
    with pytest.raises(DistributedError, match="do not describe a process"):
        ranks_from_env({**env, "RANK": "4"})


def test_each_rank_takes_its_own_gpu_and_a_fixed_one_is_refused():
    two = Ranks(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert rank_device("cpu", two) == "cpu"
    assert rank_device("cuda:3", Ranks()) == "cuda:3"  # one process: whatever was asked
    with pytest.raises(DistributedError, match="pass --device cuda"):
        rank_device("cuda:0", two)


def test_a_world_of_one_is_a_plain_process():
    group = Group(Ranks(), "cpu")
    assert group.gather("x") == ["x"] and group.from_main(7) == 7
    with group.node_main_first():
        group.barrier()
    with pytest.raises(KeyError):  # one process: the step's own error, unchanged
        group.agree(lambda: {}["missing"], RuntimeError)
    assert group.agree(lambda: 5, RuntimeError) == 5
    group.close()


def test_errors_of_several_ranks_are_named_once_each():
    assert distributed._reasons(["bad --ctx", "bad --ctx"]) == ["bad --ctx"]
    assert distributed._reasons([None, "out of memory\nsecond line", None]) == [
        "rank 1: out of memory",
        "rank 1: second line",
    ]
    assert distributed._reasons(["a", None, "a"]) == ["ranks 0, 2: a"]


# ---- a folder of shards is one run ----


def _write(path: Path, *found: dict) -> None:
    writer = records.RecordWriter(path.parent, path.name)
    for record in found:
        writer.append(record)


def test_a_folder_reads_records_and_every_shard_as_one_run_in_a_fixed_order(tmp_path):
    # Written in an order unlike the reading order: the reading order must not depend on it.
    _write(tmp_path / records.shard_file(1, 2), sample_record(1, 0.0), sample_record(3, 1.0))
    _write(tmp_path / records.shard_file(0, 3), sample_record(4, 1.0), sample_record(1, 1.0))  # sample 1 twice
    _write(tmp_path / records.shard_file(0, 2), sample_record(0, 1.0), sample_record(2, 0.0))
    _write(tmp_path / records.RECORDS_FILE, {"kind": "summary", "value": 1})
    (tmp_path / "train_log.jsonl").write_text('{"kind": "sample", "index": 99}\n')  # not a records file
    names = [p.name for p in records.run_files(tmp_path)]
    assert names == [
        "records.jsonl",
        "records.rank-0-of-2.jsonl",
        "records.rank-1-of-2.jsonl",
        "records.rank-0-of-3.jsonl",
    ]
    found = records.read_run(tmp_path)
    assert [r.get("index") for r in found] == [None, 0, 2, 1, 3, 4, 1]
    assert records.done_keys(found) == {("k1", "vt", i) for i in range(5)}
    (row,) = records.summarize(found)
    # Sample 1 counts once; the later file in reading order (the 3-rank launch's) gives its value.
    assert row["samples"] == 5 and row["value"] == pytest.approx(4 / 5)


def test_compare_and_report_read_a_folder_of_shards_only(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    found = [sample_record(i, float(i % 2)) for i in range(6)]
    _write(single / records.RECORDS_FILE, *found)
    _write(sharded / records.shard_file(0, 2), *found[:3])
    _write(sharded / records.shard_file(1, 2), *found[3:])
    compared = cli("compare", str(single), str(sharded), "--format", "json", "--z", "0")
    assert compared.exit_code == 0, compared.output
    rows = json.loads(compared.output[compared.output.index("{") :])["rows"]
    assert [(r["status"], r["pairs"]) for r in rows] == [("ok", 6)]
    report = cli("report", str(sharded), "--format", "json")
    assert report.exit_code == 0, report.output
    assert [r["samples"] for r in json.loads(report.output) if r["subtask"] == "vt"] == [6]


def test_a_torn_shard_is_mended_and_progress_counts_whole_new_lines(tmp_path):
    shard = tmp_path / records.shard_file(1, 2)
    _write(shard, sample_record(0, 1.0))
    counter = records.NewSamples(tmp_path)
    with open(shard, "a") as handle:  # a rank killed mid-write
        handle.write('{"schema": 1, "kind": "sample", "ind')
    assert counter.count() == 0
    records.repair_tails(tmp_path)
    _write(tmp_path / records.shard_file(0, 2), sample_record(1, 1.0), {"kind": "summary"})
    _write(shard, sample_record(2, 1.0))
    assert counter.count() == 2 and counter.count() == 0
    with pytest.warns(UserWarning, match="unreadable record skipped"):
        indices = sorted(r["index"] for r in records.read_run(tmp_path) if r["kind"] == "sample")
    assert indices == [0, 1, 2]


# ---- whole launches (torchrun, gloo on the CPU) ----

TASK = "ruler[sizing=tight]/vt"  # NVIDIA's sizing needs more than 768 tokens for vt's smallest haystack
RUN = ["run", "--method", "full", "--task", TASK, "--ctx", "768", "--device", "cpu", "--no-decode-exercise"]
SAME = ("run_key", "label", "subtask", "index", "prediction", "value", "new_tokens", "stop_reason", "input_tokens")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smol_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    """In-process runs on one thread, as torchrun's workers (OMP_NUM_THREADS=1): the same float sums, bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _torchrun(launcher: list[str], args: list[str]) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LYCHEE_BENCH_DIST_TIMEOUT_MIN": "5"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "lychee_bench.cli", *args]
    return [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=300)
        results.append((process.returncode, output))
    return results


def _launch(nproc: int, args: list[str]) -> tuple[int, str]:
    """One node of `nproc` processes."""
    launcher = ["--standalone", "--nproc-per-node", str(nproc)]
    return _finish(_torchrun(launcher, args))[0]


def _two_nodes(args: list[str]) -> list[tuple[int, str]]:
    """Two torchrun "nodes" of one process each on this machine, meeting through the c10d rendezvous."""
    port = _free_port()
    started = []
    for node in (0, 1):
        launcher = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        launcher += ["--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"lychee-test-{port}"]
        started += _torchrun(launcher, args)
    return _finish(started)


def _samples(folder: Path) -> list[dict]:
    return [r for r in records.read_run(folder) if r["kind"] == "sample"]


def _samples_of(path: Path) -> list[dict]:
    return [r for r in records.read_records(path) if r["kind"] == "sample"]


def _same(found: list[dict]) -> list[tuple]:
    return sorted(tuple(r[key] for key in SAME) for r in found)


@pytest.mark.slow
def test_a_launch_equals_one_process_and_resumes_across_world_sizes_and_nodes(tiny_folder, tmp_path, one_thread):
    model = ["--model", str(tiny_folder)]
    single = tmp_path / "single"
    result = cli(*RUN, *model, "--samples", "4", "--out", str(single))
    assert result.exit_code == 0, result.output
    assert [p.name for p in records.run_files(single)] == ["records.jsonl"]  # one process: the folder as before

    # A run stopped early (one sample of three), finished by two torchrun "nodes" of one process each: only the
    # two missing samples run, one per rank, each into its rank's shard.
    out = tmp_path / "resumed"
    assert cli(*RUN, *model, "--samples", "1", "--out", str(out)).exit_code == 0
    nodes = _two_nodes([*RUN, *model, "--samples", "3", "--out", str(out)])
    assert all(code == 0 for code, _ in nodes), nodes
    main = [output for _, output in nodes if "results: " in output]
    assert len(main) == 1 and "samples:" in main[0]  # one progress bar and one summary, rank 0's
    assert all("samples:" not in output for _, output in nodes if output is not main[0])
    shards = {p.name: len(_samples_of(p)) for p in records.run_files(out)}
    assert shards == {"records.jsonl": 1, "records.rank-0-of-2.jsonl": 1, "records.rank-1-of-2.jsonl": 1}
    manifest = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert manifest["parallel"]["layout"] == "data parallel" and manifest["parallel"]["nodes"] == 2
    launch = [r for r in records.read_run(out) if r["kind"] == "launch"][-1]
    assert launch["parallel"]["world_size"] == 2 and launch["records_written"] == 2

    # One process again, one more sample: it reads the shards of the 2-rank launch and runs only sample 3.
    assert cli(*RUN, *model, "--samples", "4", "--out", str(out)).exit_code == 0
    assert _same(_samples(out)) == _same(_samples(single))  # every sample once, each as one process made it
    assert sorted(r["index"] for r in _samples(out) if "parallel" in r) == [1, 2]

    compared = cli("compare", str(single), str(out), "--z", "0", "--fail-on-missing")
    assert compared.exit_code == 0, compared.output
    report = cli("report", str(out), "--format", "json")
    assert [r["samples"] for r in json.loads(report.output) if r["subtask"] == "vt"] == [4]


@pytest.mark.slow
def test_a_second_launch_into_a_busy_folder_is_refused_by_every_rank(tiny_folder, tmp_path):
    out = tmp_path / "busy"
    with records.FolderLock(out):  # another run is writing this folder
        code, output = _launch(2, [*RUN, "--model", str(tiny_folder), "--samples", "2", "--out", str(out)])
    assert code != 0
    assert output.count("is being written by pid") == 1, output  # rank 0 says it for both ranks
    assert records.run_files(out) == [] and not (out / "manifest.json").exists()
