"""The GPU path check (`python -m lychee_bench.tools.path_check`), run here in the interpreter at a tiny shape:
it passes when the paths agree and fails when the efficient path is off."""

from __future__ import annotations

import torch

from lychee_bench.harness.synthetic_models import synthetic_config
from lychee_bench.tasks.latency.bench import synthetic_defaults
from lychee_bench.tools.path_check import _ConfigHolder, check_method, check_paths, method_pairs

ENTRIES = ["lychee[granularity=token;sink=8;recent=16]", "quest"]


def _pairs():
    config = synthetic_config("tiny-llama-synthetic")
    config.head_dim = 64  # the kernels' smallest head size
    options = synthetic_defaults("tiny-llama-synthetic", config, ENTRIES, {"budget": 96})
    return config, method_pairs(ENTRIES, options, _ConfigHolder(config, torch.device("cpu")))


def test_paths_agree_and_count_alike():
    config, pairs = _pairs()
    for seed, pair in enumerate(pairs):
        row = check_method(pair, config, 211, 3, torch.float32, torch.device("cpu"), seed)
        assert row["ok"], row
        assert row["kv_read_triton"] == row["kv_read_reference"] > 0


def test_an_efficient_path_that_is_off_fails():
    config, pairs = _pairs()
    pair = pairs[1]
    decode = pair["triton"].decode_attention

    def off_by_a_little(*args, **kwargs):
        return decode(*args, **kwargs) * 1.05

    pair["triton"].decode_attention = off_by_a_little
    row = check_method(pair, config, 211, 3, torch.float32, torch.device("cpu"), 0)
    assert not row["ok"] and row["relative"] > 0.01


def test_dense_entries_alone_are_checked_without_a_budget_error():
    """The tool's --budget default goes only to entries whose method takes a budget: `--methods full` runs."""
    table = check_paths("llama3-8b-synthetic", ["full"], 150, 2, 96, "float32", device="cpu")
    assert list(table["method"]) == ["full"] and bool(table["ok"].all())
