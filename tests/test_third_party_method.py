"""A method is one file: a third-party method, defined only here and registered only through the
`lychee_bench.methods` entry-point group, gets the shared checks with no test code of its own.

`StridedAttention` below is a complete method (config, refusals, a reference path, an efficient path on the shared
Triton kernel, its naive selection model, its byte count, its bench default). The fixture makes the registry see it
as an installed plugin ("module:Class" entry point); then `lychee-bench list` lists it, the method matrix's checks
(tests/test_method_matrix.py) pass on it, the latency bench's floor uses its `bytes_read_per_step`, and its decode
step passes the graph-safety check (tests/test_latency.py). Two deliberately wrong variants show the checks bite.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest
import torch
from typer.testing import CliRunner

from lychee_bench.harness import registry as registry_module
from lychee_bench.harness.catalog import METHODS
from lychee_bench.methods.base import Method, RunShape, head_dim_of
from lychee_bench.methods.common import valid_rank
from lychee_bench.methods.efficient import KernelPath, attend, check_path, rows_read, step_geometry
from lychee_bench.methods.naive import naive_rows
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import head_tokens_bytes

# --- the third-party method: everything it declares is on its class ---


@dataclass
class StridedConfig:
    """`stride`: a row longer than `budget` real tokens attends to every stride-th one and its newest; a row that
    fits the budget attends to all of them. `path`: auto (the shared Triton kernel on CUDA), reference or triton."""

    stride: int = 4
    budget: int = 64
    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("strided", self.path)
        if self.stride < 1 or self.budget < 1:
            raise ValueError(f"strided needs stride >= 1 and budget >= 1 (got {self.stride}, {self.budget})")


def strided_tokens(length: int, stride: int, budget: int) -> int:
    """Real tokens a head reads in a row of `length`: every stride-th and the newest, or all within the budget."""
    if length <= budget:
        return length
    return math.ceil(length / stride) + ((length - 1) % stride != 0)


class StridedAttention(KernelPath, Method):
    """Every head attends to every stride-th real token and the newest one (all of them within the budget)."""

    name: ClassVar[str] = "strided"
    description: ClassVar[str] = "Strided (test plugin): every stride-th real token and the newest, in every head"
    Config: ClassVar[type] = StridedConfig
    graph_safe: ClassVar[bool] = True

    @classmethod
    def synthetic_options(cls, config: Any, model_name: str) -> dict[str, Any]:
        return {"stride": "3"}

    def check_config(self, shape: RunShape) -> list[str]:
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        self.resolve_path_for(model)

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int:
        tokens = strided_tokens(ctx, self.config.stride, self.config.budget)
        return head_tokens_bytes(shape, shape.num_layers * shape.num_kv_heads * tokens, batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]] | None:
        cfg = self.config
        out = []
        for row in naive_rows(query, key, valid):
            real = row.real
            chosen = set(real) if len(real) <= cfg.budget else set(real[:: cfg.stride]) | {real[-1]}
            out.append(row.all_heads(chosen))
        return out

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        rank, count = valid_rank(valid)
        strided = (rank % self.config.stride == 0) | (rank == count - 1) | (count <= self.config.budget)
        return (valid & strided)[:, None, :].expand(-1, key.shape[1], -1)

    def decode_efficient(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        cfg = self.config
        geometry = step_geometry(valid, state)
        n = geometry.lengths.long()[:, None]  # [B, 1]
        width = max(math.ceil(geometry.longest / cfg.stride) + 1, min(cfg.budget, geometry.longest))
        i = torch.arange(width, device=key.device)[None, :]
        every = torch.where(i < n, i, -1)
        listed = torch.where((i < width - 1) & (i * cfg.stride < n), i * cfg.stride, -1)
        newest = torch.where((n - 1) % cfg.stride != 0, n - 1, -1)
        listed = torch.where(i == width - 1, newest, listed)
        index = torch.where(n <= cfg.budget, every, listed).to(torch.int32)[:, None, :].expand(-1, key.shape[1], -1)
        state.count("kv_tokens_read", lambda: rows_read(index, 1, geometry.lengths).sum())
        return attend(query, key, value, scaling, geometry, index)


class MisdeclaredStrided(StridedAttention):
    """Its naive model forgets the newest token, which its decode step reads: the matrix must catch that."""

    name: ClassVar[str] = "strided_misdeclared"

    def naive_selection(self, layer_idx, query, key, valid, scaling, memory):
        sets = super().naive_selection(layer_idx, query, key, valid, scaling, memory)
        newest = [max(row.real) for row in naive_rows(query, key, valid)]
        return [[heads - {newest[b]} if len(heads) > 1 else heads for heads in row] for b, row in enumerate(sets)]


class UnmodelledStrided(StridedAttention):
    """Declares no naive model: the matrix must refuse it with a clear message."""

    name: ClassVar[str] = "strided_unmodelled"

    def naive_selection(self, layer_idx, query, key, valid, scaling, memory):
        return None


PLUGINS = {cls.name: cls for cls in (StridedAttention, MisdeclaredStrided, UnmodelledStrided)}


@pytest.fixture
def plugin(monkeypatch):
    """The registry sees this module's classes as installed `lychee_bench.methods` entry points, as pip would."""

    def entry_points(group: str) -> list[EntryPoint]:
        if group != METHODS.entry_point_group:
            return []
        return [EntryPoint(name, f"{__name__}:{cls.__name__}", group) for name, cls in PLUGINS.items()]

    monkeypatch.setattr(registry_module, "entry_points", entry_points)
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # restored after the test
    monkeypatch.setattr(METHODS, "_plugins_loaded", False)
    assert "strided" in METHODS.names()
    assert METHODS.get("strided") is StridedAttention
    return StridedAttention


# --- what it gets without test code of its own ---


def test_list_shows_the_plugin_with_its_own_description(plugin):
    from lychee_bench.cli import app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip().startswith("strided ")]
    assert StridedAttention.description in line and f"plugin from {__name__}:StridedAttention" in line
    assert "full" in result.output and "lychee" in result.output  # the built-ins are still listed


def test_the_shared_matrix_passes_on_the_plugin(plugin, smol_tokenizer):
    import tests.test_method_matrix as matrix

    matrix.check_decode_equals_naive_masked_attention("strided")
    matrix.check_describe_names_method_and_path("strided")
    matrix.check_unsupported_architecture_gives_reasons("strided")
    matrix.check_efficient_path_matches_the_reference("strided")
    matrix.check_unlimited_budget_gives_full_tokens("strided", "llama", smol_tokenizer)


def test_the_matrix_catches_a_wrong_or_missing_naive_model(plugin):
    import tests.test_method_matrix as matrix

    with pytest.raises(AssertionError):
        matrix.check_decode_equals_naive_masked_attention("strided_misdeclared")
    with pytest.raises(pytest.fail.Exception, match="UnmodelledStrided.*naive_selection"):
        matrix.check_decode_equals_naive_masked_attention("strided_unmodelled")


def test_the_bench_floor_uses_the_plugins_byte_count_and_defaults(plugin, tmp_path):
    from lychee_bench.harness.synthetic_models import synthetic_config
    from lychee_bench.tasks.latency.bench import run_bench

    model = "tiny-llama-synthetic"
    records = run_bench(["full", "strided"], [96, 160], [2], model=model, out=tmp_path, reps=1, smoke=True)
    rows = [r for r in records if r["method"] == "strided"]
    assert len(rows) == 2 and not any(r.get("error") for r in rows)
    config = synthetic_config(model)
    for row in rows:
        assert row["method_config"]["stride"] == 3  # its class's synthetic-model default
        method = StridedAttention(StridedConfig(stride=3))
        shape = RunShape.from_config(config, "float32", "cpu", 2, row["ctx"], model)
        expected = method.bytes_read_per_step(shape, row["ctx"], 2)
        tokens = strided_tokens(row["ctx"], 3, 64)
        kv_row = 2 * head_dim_of(config) * 4  # K and V of one token, float32
        assert expected == config.num_hidden_layers * config.num_key_value_heads * tokens * kv_row * 2
        assert row["kv_bytes_read"] == expected
        assert row["bytes_per_step"] == expected + row["weight_bytes_read"] and row["floor_ms"] > 0
        full = next(r for r in records if r["method"] == "full" and r["ctx"] == row["ctx"])
        assert row["kv_bytes_read"] < full["kv_bytes_read"] and row["speedup_vs_full"] is not None


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_the_plugins_decode_step_passes_the_graph_safety_check(plugin, path):
    from tests.test_latency import check_decode_step_has_no_host_reads

    method = StridedAttention.from_options({"stride": 3, "budget": 32, "path": path})
    assert dataclasses.asdict(method.config)["path"] == path
    triton = path == "triton"
    check_decode_step_has_no_host_reads(method, head_dim=64 if triton else None, warm=triton)
