"""Kascade (arXiv 2512.16391, github.com/microsoft/kascade): training-free top-k selection and reuse.

Anchor layers (layer 0 always among them) score every cached token per KV head by the post-softmax attention
probability summed over the group's query heads, keep the top k, and attend only to that set themselves (layer 0
attends densely but still selects). A reuse layer attends to the set of the most recent anchor layer through a
head map: its KV head h reads the set of the anchor's KV head `head_map[layer][h]`, the anchor head found most
similar on calibration data. k = max(128, 10% of the sequence's real tokens), capped at those tokens; the
`budget` option sets k in tokens instead. Anchors and head map come from a per-model artifact
(methods/artifacts.py) written by `lychee-bench calibrate --method kascade`. Sets are rebuilt every step.

Against the public code (SPEC §4 followed where they differ): Kascade's PyTorch path computes k from the padded
cache length of the batch; here each sequence gets its own k from its real tokens (left padding excluded).
Kascade also pools top-k over tiles of 32 queries in prefill and runs prefill sparse; here prefill is dense
(the harness's rule) and only decode uses the sets. Two paths: the reference (plain torch, masked attention)
and the efficient one (the shared Triton kernel over the selected positions; the anchors' scoring stays in torch,
so an anchor layer reads K twice, where Kascade's own kernels fuse it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.artifacts import (
    ArtifactError,
    KascadeAnchors,
    TargetModel,
    kascade_to_json,
    resolve_kascade,
)
from lychee_bench.methods.base import Calibration, CalibrationRequest, Method, RunShape
from lychee_bench.methods.efficient import KernelPath, attend, check_path, rows_read, step_geometry, top_index
from lychee_bench.methods.head_shard import HeadShard, gather_heads, local_heads
from lychee_bench.methods.naive import naive_rows, top_positions
from lychee_bench.methods.selection import select_tokens
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import kv_token_bytes

SLOT = "kascade"
PUBLISHED_ANCHORS = {"llama3.1-8b": [0, 2, 8, 13, 14], "qwen3-8b": [0, 2, 7, 14, 23]}  # the paper's choices
# The bench's synthetic shapes: the published anchors of the model each copies (Llama-3-8B and 3.1-8B share one
# shape). The shipped presets are files of scope "shape" (methods/artifacts.py): each fits any model of the
# architecture shape it names, so these pairs are checked like any other use, by shape, and recorded as presets.
KASCADE_PRESET_FOR_SHAPE = {"llama3-8b-synthetic": "llama3.1-8b", "qwen3-8b-synthetic": "qwen3-8b"}
CALIBRATION_SETS = "(per KV head, probabilities summed over the group, min over queries, mean over prompts)"


@dataclass
class KascadeConfig:
    """`anchors`: None (the model's shipped artifact), a shipped name or a file. The shipped presets llama3.1-8b and
    qwen3-8b (the paper's anchors, identity head map) fit any model of their architecture shape (model type,
    layers, heads, KV heads); a calibrated file fits only the model it was made for.
    Top-k per sequence: `budget` tokens when given, else max(min_budget, int(budget_ratio * real tokens)).
    `path`: auto (the shared Triton kernel on CUDA), reference or triton."""

    anchors: str | None = None
    budget: int | None = None
    budget_ratio: float = 0.10
    min_budget: int = 128
    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("kascade", self.path)
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"kascade budget {self.budget} must be >= 1 token; give --budget N")
        if not 0.0 < self.budget_ratio <= 1.0:
            raise ValueError(f"kascade budget_ratio {self.budget_ratio} must lie in (0, 1], e.g. 0.1")
        if self.min_budget < 1:
            raise ValueError(f"kascade min_budget {self.min_budget} must be >= 1 token")

    def budget_rule(self) -> str:
        if self.budget is not None:
            return f"k = {self.budget} tokens (budget option)"
        return f"k = max({self.min_budget}, int({self.budget_ratio} * real tokens)), capped at the real tokens"

    def tokens_for(self, length: int) -> int:
        """k for a sequence of `length` real tokens (at most `length`)."""
        k = self.budget if self.budget is not None else max(self.min_budget, int(self.budget_ratio * length))
        return min(k, length)


def group_probabilities(query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """Post-softmax attention over the valid keys, summed over each KV head's query heads: [B, Hkv, S] float32."""
    batch, num_heads, _, head_dim = query.shape
    num_kv_heads = key.shape[1]
    grouped = query.float().view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    logits = torch.einsum("bhgd,bhsd->bhgs", grouped, key.float()) * scaling
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).sum(dim=2)


def group_probabilities_kernel(query: torch.Tensor, key: torch.Tensor, geometry: Any, scaling: float) -> torch.Tensor:
    """`group_probabilities` with the logits from one pass over K in its own dtype (kernels/token_logits.py;
    they are -inf outside the real tokens already)."""
    from lychee_bench.kernels.token_logits import token_logits

    batch, num_heads = query.shape[:2]
    logits = token_logits(query[:, :, 0], key, geometry.lengths, geometry.starts)
    logits = logits.view(batch, key.shape[1], num_heads // key.shape[1], -1) * scaling
    return torch.softmax(logits, dim=-1).sum(dim=2)


class Kascade(KernelPath, Method):
    """Anchor layers select top-k by pooled post-softmax probability; reuse layers borrow it via a head map."""

    name: ClassVar[str] = "kascade"
    plot_style: ClassVar[tuple[str, str]] = ("#2ca02c", "v")  # colour, marker in every figure
    description: ClassVar[str] = "Kascade: anchor layers pick top-k by post-softmax mass, others reuse via a head map"
    Config: ClassVar[type] = KascadeConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = (
        "anchor layers select per KV head (probabilities summed over the head's own group: nothing gathered); "
        "when the head map sends a reuse head to an anchor head another process holds, every anchor layer's sets "
        "are all-gathered over the processes (identity maps, e.g. the published presets, gather nothing); the "
        "head map is sliced to the process's KV heads"
    )
    calibration: ClassVar[Calibration] = Calibration(
        chooser="lychee_bench.calibration.kascade:calibrate_kascade",
        sets=CALIBRATION_SETS,
        shown="anchors",
        use="-o anchors={path}",
        options=("importance",),
    )

    def __init__(self, config: KascadeConfig | None = None):
        super().__init__(config)
        self.anchors: KascadeAnchors | None = None
        self._head_map: dict[torch.device, torch.Tensor] = {}

    def _load(self, model: TargetModel) -> None:
        self.anchors = resolve_kascade(self.config.anchors, model)
        self._head_map = {}

    def set_head_shard(self, shard: HeadShard | None) -> None:
        super().set_head_shard(shard)
        self._head_map = {}

    def gathers(self) -> bool:
        """Under tensor parallelism: whether some reuse head reads an anchor head another process holds, so the
        anchors' sets are all-gathered. Decided from the whole head map, so every process decides the same."""
        shard = self.head_shard
        if shard is None or shard.world == 1 or self.anchors is None:
            return False
        return any(
            anchor // shard.count != head // shard.count
            for row in self.anchors.head_map
            for head, anchor in enumerate(row)
        )

    def _store_sets(self, state: DecodeState, sets: torch.Tensor) -> None:
        """An anchor's sets [B, Hkv here, ...] into the slot, gathered over the processes when `gathers()`."""
        state.slots[SLOT] = gather_heads(sets, self.head_shard) if self.gathers() else sets

    def check_config(self, shape: RunShape) -> list[str]:
        target = TargetModel(shape.model_name, shape.model_type, shape.num_layers, shape.num_heads, shape.num_kv_heads)
        try:
            self._load(target)
        except ArtifactError as error:
            return [str(error)]
        return self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        if self.anchors is None:
            self._load(TargetModel.from_config(model.config, getattr(model.config, "_name_or_path", "")))
        self.resolve_path_for(model)

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "budget_rule": self.config.budget_rule()}
        if self.anchors is not None:
            described["anchors_used"] = self.anchors.describe()
        return described

    def resolved_artifacts(self) -> dict[str, str]:
        return {} if self.anchors is None else {"anchors": self.anchors.checksum}

    @classmethod
    def synthetic_options(cls, config: Any, model_name: str) -> dict[str, Any]:
        """The published anchors of the model a synthetic shape copies (none for other shapes)."""
        preset = KASCADE_PRESET_FOR_SHAPE.get(model_name)
        return {} if preset is None else {"anchors": preset}

    @classmethod
    def calibration_artifact(
        cls, stats: Any, request: CalibrationRequest, model: dict[str, Any], calibration: dict[str, Any]
    ) -> dict[str, Any]:
        """Anchor layers (dynamic programming over the layers' set recall) and the head map."""
        anchors, head_map, info = cls.calibration.load_chooser()(stats, request.num_anchors, request.importance)
        calibration.update(info)
        return kascade_to_json(anchors, head_map, model, calibration)

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int | None:
        """Layer 0 all tokens; other anchors score every key (all K) and attend to their top-k (V of those); reuse
        layers each KV head's top-k. None before the anchors are loaded."""
        if self.anchors is None:
            return None
        anchors = self.anchors.anchors
        k = self.config.tokens_for(ctx)
        half = kv_token_bytes(shape) // 2  # K or V of one token
        layer0 = shape.num_kv_heads * ctx * 2 * half
        other_anchors = (len(anchors) - (0 in anchors)) * shape.num_kv_heads * (ctx + k) * half
        reuse = (shape.num_layers - len(anchors)) * shape.num_kv_heads * k * 2 * half
        return (layer0 + other_anchors + reuse) * batch

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """An anchor keeps each KV head's top-k real tokens by post-softmax probability over the real keys, summed
        over the group's query heads, and attends to them (layer 0: to everything); a reuse layer's KV head h
        attends to the set of the anchor's KV head head_map[layer][h]."""
        assert self.anchors is not None, "check() or prepare() loads the anchors first"
        cfg = self.config
        out = []
        for row in naive_rows(query, key, valid):
            real, group = row.real, row.group
            k = cfg.budget if cfg.budget is not None else max(cfg.min_budget, int(cfg.budget_ratio * len(real)))
            if layer_idx in self.anchors.anchors:
                probs = torch.softmax(row.logits[:, real] * scaling, dim=-1)  # post-softmax over the real keys
                pooled = torch.full((row.num_kv_heads, valid.shape[1]), float("-inf"), dtype=torch.float64)
                pooled[:, real] = probs.view(-1, group, len(real)).sum(1)  # summed over the group
                sets = memory[(SLOT, row.b)] = [top_positions(real, pooled[kv], k) for kv in range(row.num_kv_heads)]
                out.append([set(real) if layer_idx == 0 else sets[h // group] for h in range(row.num_heads)])
            else:
                sets = memory[(SLOT, row.b)]
                head_map = self.anchors.head_map[layer_idx]
                out.append([sets[head_map[h // group]] for h in range(row.num_heads)])
        return out

    def head_map(self, device: torch.device) -> torch.Tensor:
        """[num_layers, num_kv_heads] long on `device` (built once per device: no per-step copy). Under tensor
        parallelism the rows of this process's KV heads, pointing into the stored sets: every process's heads when
        they are gathered, else this process's own."""
        assert self.anchors is not None, "prepare() loads the anchors before decoding"
        if device not in self._head_map:
            table = local_heads(torch.tensor(self.anchors.head_map, dtype=torch.long), self.head_shard)
            if self.head_shard is not None and not self.gathers():
                table = table - self.head_shard.first
            self._head_map[device] = table.to(device)
        return self._head_map[device]

    def token_budget(self, valid: torch.Tensor) -> torch.Tensor:
        """k per sequence [B] on the device (tokens_for's rule): no per-layer copy from the host."""
        cfg = self.config
        count = valid.sum(-1)
        if cfg.budget is not None:
            return count.clamp(max=cfg.budget)
        return torch.minimum((count.double() * cfg.budget_ratio).floor().long().clamp(min=cfg.min_budget), count)

    def select(
        self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float, lengths: list[int]
    ) -> torch.Tensor:
        """keep [B, Hkv, S]: each KV head's top-k tokens by group-summed post-softmax probability."""
        scores = group_probabilities(query, key, valid, scaling)
        bound = max(self.config.tokens_for(n) for n in lengths)
        return select_tokens(scores, valid, self.token_budget(valid), sink=0, recent=0, max_budget=bound)

    def select_index(
        self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor, scaling: float, geometry: Any
    ) -> torch.Tensor:
        """The same sets as `select`, as position lists [B, Hkv, k_max] (-1 past each sequence's own k); the
        efficient path's scoring (the logits kernel)."""
        scores = group_probabilities_kernel(query, key, geometry, scaling)
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        bound = max(self.config.tokens_for(n) for n in geometry.lengths_max)
        # A fixed k that every sequence holds at every step the geometry serves cuts no list: no rank order needed.
        cut = self.config.budget is None or geometry.shortest < self.config.budget
        index = top_index(scores, bound, geometry.starts, ranked=cut)
        if not cut:
            return index
        rank = torch.arange(index.shape[-1], device=index.device)
        beyond = rank[None, None, :] >= self.token_budget(valid)[:, None, None]
        return index.masked_fill(beyond, -1)

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """An anchor stores its top-k sets and attends to them (layer 0: to everything); a reuse layer attends to
        the stored sets through the head map. keep [B, Hkv, S]."""
        assert self.anchors is not None, "prepare() loads the anchors before decoding"
        if layer_idx in self.anchors.anchors:
            keep = self.select(query, key, valid, scaling, state.host_lengths(valid))
            self._store_sets(state, keep)
            return valid[:, None, :].expand(-1, key.shape[1], -1) if layer_idx == 0 else keep
        if SLOT not in state.slots:
            raise RuntimeError(f"kascade layer {layer_idx} reuses a set, but no anchor layer has run this step")
        return state.slots[SLOT].index_select(1, self.head_map(key.device)[layer_idx])

    def reference_rows(
        self, layer_idx: int, keep: torch.Tensor, key: torch.Tensor, valid: torch.Tensor
    ) -> Callable[[], torch.Tensor] | None:
        """An anchor scores every cached key, so it reads the whole cache; a reuse layer reads its sets."""
        assert self.anchors is not None
        if layer_idx in self.anchors.anchors:
            return lambda: valid.sum() * key.shape[1]
        return None

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
        """Slots hold each KV head's positions [B, Hkv, k_max], counted from the first real token."""
        assert self.anchors is not None
        geometry = step_geometry(valid, state)
        if layer_idx in self.anchors.anchors:
            index = self.select_index(query, key, valid, scaling, geometry)
            self._store_sets(state, index)
            state.count("kv_tokens_read", lambda: geometry.lengths.sum() * key.shape[1])  # the anchor scores every key
            return attend(query, key, value, scaling, geometry, None if layer_idx == 0 else index)
        if SLOT not in state.slots:
            raise RuntimeError(f"kascade layer {layer_idx} reuses a set, but no anchor layer has run this step")
        index = state.slots[SLOT].index_select(1, self.head_map(key.device)[layer_idx])
        state.count("kv_tokens_read", lambda: rows_read(index, 1, geometry.lengths).sum())
        return attend(query, key, value, scaling, geometry, index)
