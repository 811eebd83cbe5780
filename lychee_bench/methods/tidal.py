"""TidalDecode (Yang et al., 2024, arXiv 2410.05076): position-persistent sparse attention.

Layers before the selection layer (0 and 1) are dense. The selection layer (2) does full attention and picks
the top-k tokens by raw logit q·k; the layers after it reuse that set. One re-selection layer (13 for
32-layer Llama-3 models, 0-based as in the PyTorch reference code; its CUDA code uses 12 — SPEC §4, *open*)
does full attention and selects again; later layers reuse the new set. Selection is per query head by
default (as in the reference code), or per KV head with the group-mean query (`per_kv_head=True`).
Token granularity; no sink or recent window. Sets are rebuilt at every decode step.

Which re-selection layer: the `reselect_layer` option; else the published one (32-layer Llama-3); else the model's
shipped calibration artifact (lychee_bench/artifacts/tidal/<model>.json, written by `lychee-bench calibrate
--method tidal`, see calibration/tidal.py), checked against the model (the name it was made for, its layer and KV-head
counts, its selection layer); else the run is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.artifacts import ArtifactError, TargetModel, shipped_tidal, tidal_to_json
from lychee_bench.methods.base import Calibration, CalibrationRequest, Method, RunShape
from lychee_bench.methods.common import valid_rank
from lychee_bench.methods.efficient import KernelPath, attend, check_path, distinct_rows, step_geometry, top_index
from lychee_bench.methods.naive import naive_rows, top_positions
from lychee_bench.methods.selection import select_tokens
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import head_tokens_bytes

LLAMA3_RESELECT_LAYER = 13  # the published choice for 32-layer Llama-3 models (PyTorch code, 0-based)
SLOT = "tidal"
CALIBRATION_SETS = "(per query head against the same head, mean over queries, heads and prompts)"


@dataclass
class TidalConfig:
    """`budget` tokens per head in the reuse layers; `reselect_layer` None means the published default.
    `path`: auto (the shared Triton kernel on CUDA), reference or triton."""

    budget: int = 4096
    selection_layer: int = 2  # layers before it are dense
    reselect_layer: int | None = None
    per_kv_head: bool = False
    path: str = "auto"

    def __post_init__(self) -> None:
        check_path("tidal", self.path)
        if self.budget < 1:
            raise ValueError(f"tidal budget {self.budget} must be >= 1 token; give --budget N")
        if self.selection_layer < 0:
            raise ValueError(f"tidal selection_layer {self.selection_layer} must be >= 0")
        if self.reselect_layer is not None and self.reselect_layer <= self.selection_layer:
            raise ValueError(
                f"tidal reselect_layer {self.reselect_layer} must come after selection_layer "
                f"{self.selection_layer}; give --option reselect_layer=L with L > {self.selection_layer}"
            )


def default_reselect_layer(model_type: str, num_layers: int, num_kv_heads: int) -> int | None:
    """The published re-selection layer where one exists (32-layer Llama-3 family: 8 KV heads), else None."""
    if model_type == "llama" and num_layers == 32 and num_kv_heads == 8:
        return LLAMA3_RESELECT_LAYER
    return None


class TidalDecode(KernelPath, Method):
    """Dense, select, reuse, re-select, reuse (reference path: masked attention in plain torch; efficient path:
    the shared kernel, dense in the dense and selection layers, over the selected positions elsewhere)."""

    name: ClassVar[str] = "tidal"
    plot_style: ClassVar[tuple[str, str]] = ("#1f77b4", "^")  # colour, marker in every figure
    description: ClassVar[str] = "TidalDecode: layer 2 and one re-selection layer pick top-k tokens, others reuse"
    Config: ClassVar[type] = TidalConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = (
        "nothing gathered: the selection and re-selection layers choose per query head (or per KV head with the "
        "group's mean query, per_kv_head), never across heads, and a head's later layers read its own set"
    )
    calibration: ClassVar[Calibration] = Calibration(
        chooser="lychee_bench.calibration.tidal:choose_reselect_layer",
        sets=CALIBRATION_SETS,
        shown="reselect_layer",
        use="-o reselect_layer={reselect_layer}",
        options=("selection_layer",),
    )

    def __init__(self, config: TidalConfig | None = None):
        super().__init__(config)
        self.reselect_layer: int | None = self.config.reselect_layer
        self.reselect_source: str | None = "option" if self.config.reselect_layer is not None else None

    @classmethod
    def calibration_refusals(cls, request: CalibrationRequest) -> list[str]:
        if request.selection_layer + 1 >= request.num_layers:
            return [f"TidalDecode's selection layer {request.selection_layer} leaves no later layer to re-select at"]
        return []

    @classmethod
    def calibration_artifact(
        cls, stats: Any, request: CalibrationRequest, model: dict[str, Any], calibration: dict[str, Any]
    ) -> dict[str, Any]:
        """The re-selection layer whose set the later layers' own top-k sets recall best."""
        reselect, info = cls.calibration.load_chooser()(stats.recall_query_heads, request.selection_layer)
        calibration.update(info)
        return tidal_to_json(
            request.selection_layer, reselect, request.num_layers, request.num_kv_heads, model, calibration
        )

    def _resolve_reselect(self, model: TargetModel) -> tuple[int | None, str | None, list[str]]:
        """(re-selection layer, where it came from, reasons to refuse)."""
        cfg = self.config
        model_type, num_layers, num_kv_heads = model.model_type, model.num_layers, model.num_kv_heads
        reasons = []
        if num_layers <= cfg.selection_layer:
            reasons.append(f"tidal selection_layer {cfg.selection_layer} needs a model with more layers ({num_layers})")
        reselect, source = cfg.reselect_layer, "option"
        if reselect is None:
            reselect, source = default_reselect_layer(model_type, num_layers, num_kv_heads), "published (Llama-3)"
        if reselect is None:
            reselect, source, reason = self._calibrated(model)
            if reason:
                reasons.append(
                    f"tidal has no published re-selection layer for this model ({model_type}, {num_layers} layers, "
                    f"{num_kv_heads} KV heads) {reason}; give --option reselect_layer=L, or calibrate it: "
                    f"`lychee-bench calibrate --method tidal --model {model.name or 'M'}`"
                )
        elif reselect >= num_layers:
            reasons.append(f"tidal reselect_layer {reselect} is past the model's last layer ({num_layers - 1})")
        return reselect, source, reasons

    def _calibrated(self, model: TargetModel) -> tuple[int | None, str | None, str]:
        """The shipped calibration artifact's layer for this model (checked against it), or why there is none."""
        try:
            artifact = shipped_tidal(model)
        except ArtifactError as error:
            return None, None, f"and its shipped artifact is unusable ({error})"
        if artifact is None:
            return None, None, "and no calibrated one ships for it"
        if artifact.selection_layer != self.config.selection_layer:
            return (
                None,
                None,
                (
                    f"and the shipped artifact {artifact.source} re-selects after selection layer "
                    f"{artifact.selection_layer}, not {self.config.selection_layer}"
                ),
            )
        return artifact.reselect_layer, f"{artifact.source} (sha256 {artifact.checksum[:12]})", ""

    def check_config(self, shape: RunShape) -> list[str]:
        target = TargetModel(shape.model_name, shape.model_type, shape.num_layers, shape.num_heads, shape.num_kv_heads)
        reselect, source, reasons = self._resolve_reselect(target)
        self.reselect_layer, self.reselect_source = reselect, source
        return reasons + self.resolve_path(shape.device, shape.head_dim)

    def prepare(self, model: torch.nn.Module) -> None:
        config = model.config
        reselect, source, reasons = self._resolve_reselect(
            TargetModel.from_config(config, getattr(config, "_name_or_path", ""))
        )
        if reasons:
            raise ValueError("; ".join(reasons))
        self.reselect_layer, self.reselect_source = reselect, source
        self.resolve_path_for(model)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "reselect_layer_used": self.reselect_layer,
            "reselect_layer_source": self.reselect_source,
        }

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int:
        """Dense and selection layers all tokens; reuse layers each *query head's* list (the per-query-head sets
        of one group may overlap, but each is read for its own head)."""
        cfg = self.config
        full_layers = cfg.selection_layer + 1 + (self.reselect_layer is not None)
        rows = shape.num_kv_heads if cfg.per_kv_head else shape.num_heads
        full = full_layers * shape.num_kv_heads * ctx
        reuse = (shape.num_layers - full_layers) * rows * min(ctx, cfg.budget)
        return head_tokens_bytes(shape, full + reuse, batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]]:
        """Dense up to the selection layer; the selection and re-selection layers attend densely and keep each
        query head's top-`budget` real tokens by raw logit (or its KV head's, by the group-mean query); the
        other layers attend to the kept sets."""
        cfg = self.config
        out = []
        for row in naive_rows(query, key, valid):
            if layer_idx in (cfg.selection_layer, self.reselect_layer):
                heads = range(row.num_heads)
                scores = [row.mean_logits[h // row.group] if cfg.per_kv_head else row.logits[h] for h in heads]
                memory[(SLOT, row.b)] = [top_positions(row.real, s, cfg.budget) for s in scores]
            dense = layer_idx <= cfg.selection_layer or layer_idx == self.reselect_layer
            out.append(row.all_heads(set(row.real)) if dense else memory[(SLOT, row.b)])
        return out

    def layer_role(self, layer_idx: int) -> str:
        """ "dense", "select" (full attention + new set) or "reuse" (attend to the current set)."""
        if layer_idx < self.config.selection_layer:
            return "dense"
        if layer_idx in (self.config.selection_layer, self.reselect_layer):
            return "select"
        return "reuse"

    def scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Raw logits q·k: [B, Hq, S] per query head, or [B, Hkv, S] with the group-mean query (float32)."""
        batch, num_heads, _, head_dim = query.shape
        num_kv_heads = key.shape[1]
        group = num_heads // num_kv_heads
        if self.config.per_kv_head:
            mean_query = query.float().view(batch, num_kv_heads, group, head_dim).mean(dim=2)
            return torch.einsum("bhd,bhsd->bhs", mean_query, key.float())
        grouped = query.float().view(batch, num_kv_heads, group, head_dim)
        return torch.einsum("bhgd,bhsd->bhgs", grouped, key.float()).reshape(batch, num_heads, -1)

    def select(self, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Top-`budget` tokens by raw logit: [B, Hq, S] per query head, or [B, Hkv, S] with the group mean."""
        budget = torch.full_like(valid_rank(valid)[1][:, 0], self.config.budget)
        scores = self.scores(query, key)
        return select_tokens(scores, valid, budget, sink=0, recent=0, max_budget=self.config.budget)

    def reference_keep(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """Dense and selection layers every real token (a selection layer also stores its new set); reuse layers
        the stored set. K/V rows read: the union of the group's sets per KV head."""
        role = self.layer_role(layer_idx)
        if role == "reuse":
            if SLOT not in state.slots:
                raise RuntimeError(f"tidal layer {layer_idx} reuses a set, but selection layer has not run this step")
            return state.slots[SLOT]
        if role == "select":
            state.slots[SLOT] = self.select(query, key, valid)
        return valid[:, None, :].expand(-1, key.shape[1], -1)

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
        """Slots hold position lists [B, Hq or Hkv, budget] (top_index), counted from the first real token."""
        geometry = step_geometry(valid, state)
        role = self.layer_role(layer_idx)
        num_kv_heads = key.shape[1]
        if role != "reuse":
            if role == "select":
                from lychee_bench.kernels.token_logits import token_logits

                # self.scores' logits in one pass over K (no float32 copy), -inf outside the real tokens
                mean = self.config.per_kv_head
                scores = token_logits(query[:, :, 0], key, geometry.lengths, geometry.starts, mean=mean)
                index = top_index(scores, self.config.budget, geometry.starts, ranked=False)  # a set
                state.slots[SLOT] = index
                if state.counting:  # counted once per selection, reused by every layer that reads this set
                    state.layer_data["tidal_rows"] = distinct_rows(index, num_kv_heads, key.shape[2])
            state.count("kv_tokens_read", lambda: geometry.lengths.sum() * num_kv_heads)
            return attend(query, key, value, scaling, geometry, None)
        if SLOT not in state.slots:
            raise RuntimeError(f"tidal layer {layer_idx} reuses a set, but selection layer has not run this step")
        # K/V rows read: the union of the group's sets per KV head, as the reference counts them (the kernel
        # reads each query head's list, so overlapping positions are fetched again, mostly from L2).
        state.count("kv_tokens_read", lambda: state.layer_data["tidal_rows"])
        return attend(query, key, value, scaling, geometry, state.slots[SLOT])
