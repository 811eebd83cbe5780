"""DuoAttention (Xiao et al., 2024, arXiv 2410.10819): retrieval heads keep full attention; streaming heads
see only the attention sinks and a recent window (128 + 256 by default). The roles are a per-model table of
KV heads in the same file format as LycheeDecode's (methods/roles.py); DuoAttention learns them with
continuous gates (`lychee-bench train-heads --gate continuous`); a model's shipped `<model>-continuous` roles
are the default. The shared format requires every head of
layer 0 to be a retrieval head, which DuoAttention itself does not. SPEC §4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import sink_and_recent, streaming_window
from lychee_bench.methods.efficient import KernelPath, attend, check_path, step_geometry, step_window
from lychee_bench.methods.head_shard import HeadShard, local_heads
from lychee_bench.methods.naive import naive_rows, sink_recent_positions
from lychee_bench.methods.roles import (
    HeadRoles,
    RolesError,
    resolve_roles,
    shipped_roles_path,
    synthetic_roles_spec,
)
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import head_tokens_bytes

CONTINUOUS_SUFFIX = "-continuous"  # shipped roles trained with `train-heads --gate continuous`


def duo_roles_spec(spec: str | None, model_name: str) -> str:
    """The roles DuoAttention uses: `spec` when given, else the model's shipped continuous-gate roles."""
    if spec is not None:
        return spec
    shipped = f"{Path(model_name).name}{CONTINUOUS_SUFFIX}"
    if shipped_roles_path(shipped) is None:
        raise RolesError(
            f"no DuoAttention (continuous-gate) roles ship for model {model_name!r}. Train them with "
            f"`lychee-bench train-heads --gate continuous` and give --option roles=<file>, or give "
            f"--option roles=uniform:N for N retrieval heads spread evenly."
        )
    return shipped


@dataclass
class DuoConfig:
    """`roles`: see methods/roles.py; by default the model's shipped `<model>-continuous` roles.
    `budget`, when given, sets the streaming window: recent = budget - sink. `path`: auto (the shared Triton
    kernel on CUDA), reference or triton."""

    roles: str | None = None
    sink: int = 128
    recent: int = 256
    budget: int | None = None
    path: str = "auto"

    def __post_init__(self) -> None:
        self.recent = streaming_window("duo", self.sink, self.recent, self.budget)
        check_path("duo", self.path)


class DuoAttention(KernelPath, Method):
    """Retrieval heads: full cache. Streaming heads: sink + recent (reference path: masked attention; efficient
    path: one launch of the shared kernel, retrieval heads as dense rows, streaming heads over the window)."""

    name: ClassVar[str] = "duo"
    plot_style: ClassVar[tuple[str, str]] = ("#ff7f0e", "P")  # colour, marker in every figure
    description: ClassVar[str] = "DuoAttention: retrieval heads full, streaming heads 128 sink + 256 recent"
    Config: ClassVar[type] = DuoConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = (
        "nothing gathered: each KV head's role (the roles table sliced to the process's KV heads) decides alone"
    )

    def __init__(self, config: DuoConfig | None = None):
        super().__init__(config)
        self.roles: HeadRoles | None = None
        self._device_roles: dict[str, torch.Tensor] = {}  # the roles table on each device, copied once
        self._patterns: dict[int, tuple[bool, ...]] = {}  # each layer's roles as host flags (efficient path)

    def set_head_shard(self, shard: HeadShard | None) -> None:
        super().set_head_shard(shard)
        self._device_roles.clear()
        self._patterns.clear()

    def check_config(self, shape: RunShape) -> list[str]:
        self._device_roles.clear()
        try:
            spec = duo_roles_spec(self.config.roles, shape.model_name)
            self.roles = resolve_roles(spec, shape.num_layers, shape.num_kv_heads, shape.model_name)
        except RolesError as error:
            return [str(error)]
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        if self.roles is None:
            config = model.config
            name = getattr(config, "_name_or_path", "")
            spec = duo_roles_spec(self.config.roles, name)
            self.roles = resolve_roles(spec, config.num_hidden_layers, config.num_key_value_heads, name)
        self._device_roles.clear()
        self.resolve_path_for(model)

    def resolved_artifacts(self) -> dict[str, str]:
        return {} if self.roles is None else {"roles": self.roles.checksum}

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.roles is not None:
            described["roles_used"] = self.roles.describe()
        return described

    @classmethod
    def synthetic_options(cls, config: Any, model_name: str) -> dict[str, Any]:
        """Uniform roles with 12.5% retrieval heads (no continuous-gate roles ship for a synthetic model)."""
        return {"roles": synthetic_roles_spec(config)}

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int | None:
        """Retrieval heads all tokens, streaming heads sink + recent (None before the roles are loaded)."""
        if self.roles is None:
            return None
        retrieval = int(local_heads(self.roles.retrieval, self.head_shard).sum())  # this process's heads
        streaming = shape.num_layers * shape.num_kv_heads - retrieval
        window = min(ctx, self.config.sink + self.config.recent)
        return head_tokens_bytes(shape, retrieval * ctx + streaming * window, batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """A retrieval head's query heads: every real token; a streaming head's: the sink and recent window."""
        assert self.roles is not None, "check() or prepare() loads the roles first"
        cfg = self.config
        retrieval = self.roles.retrieval[layer_idx]
        return [
            [
                set(row.real) if retrieval[h // row.group] else sink_recent_positions(row.real, cfg.sink, cfg.recent)
                for h in range(row.num_heads)
            ]
            for row in naive_rows(query, key, valid)
        ]

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """Retrieval heads every real token, streaming heads the window: keep [B, Hkv, S]."""
        assert self.roles is not None, "prepare() loads the roles before decoding"
        device = str(key.device)
        if device not in self._device_roles:  # a copy per layer would wait for the device's queued work
            self._device_roles[device] = local_heads(self.roles.retrieval, self.head_shard).to(key.device)
        retrieval = self._device_roles[device][layer_idx]  # [Hkv]
        window = sink_and_recent(valid, self.config.sink, self.config.recent)
        return torch.where(retrieval[None, :, None], valid[:, None, :], window[:, None, :])

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
        assert self.roles is not None, "prepare() loads the roles before decoding"
        geometry = step_geometry(valid, state)
        window = step_window(state, geometry, self.config.sink, self.config.recent)  # every streaming head's
        pattern = self._patterns.get(layer_idx)
        if pattern is None:  # host flags per layer, read once
            roles = local_heads(self.roles.retrieval[layer_idx], self.head_shard)  # this process's heads
            pattern = self._patterns[layer_idx] = tuple(roles.tolist())
        retrieval = sum(pattern)
        state.count(
            "kv_tokens_read",
            lambda: geometry.lengths.sum() * retrieval + (window >= 0).sum() * (len(pattern) - retrieval),
        )
        index = window[:, None, :].expand(-1, key.shape[1], -1)
        return attend(query, key, value, scaling, geometry, index, dense_rows=pattern)
