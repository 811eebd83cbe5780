"""LycheeDecode (arXiv 2602.04541): hybrid-head sparse decoding.

A few retrieval heads attend to the whole cache and pick the important tokens (top-k of the raw logit of the
group-mean query); the many sparse heads reuse the set picked by the nearest earlier retrieval head with the
same KV-head index ("slot h"). Sets are rebuilt at every decode step; layer 0 is all retrieval heads, so every
slot is filled before it is read. Retrieval heads always read the whole cache (the public code's block model
lets later retrieval heads see only earlier-selected blocks; here they never do). SPEC §2.

Granularity: `token` by default (128 sink + 256 recent tokens, the rest of the budget the top-scoring tokens),
the rule of the official token-level model that every quality number of the paper comes from. `block`
(64-token blocks by their max score, the paper's "hardware-efficient top-k") is the speed path of the official
code and of ours: ask for it with `lychee[granularity=block]`. Records carry `method_config.granularity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.common import masked_decode_attention, valid_rank
from lychee_bench.methods.efficient import (
    KernelPath,
    attend,
    check_path,
    rows_read,
    step_geometry,
    step_window,
)
from lychee_bench.methods.head_shard import HeadShard, local_heads
from lychee_bench.methods.naive import naive_rows, sink_recent_positions, top_positions
from lychee_bench.methods.roles import HeadRoles, RolesError, resolve_roles, synthetic_roles_spec
from lychee_bench.methods.selection import select_blocks, select_tokens
from lychee_bench.methods.state import DecodeState
from lychee_bench.methods.traffic import head_tokens_bytes

GRANULARITIES = ("token", "block")


def ratio_keep_factor(budget_ratio: float) -> float:
    """The factor the official code multiplies the context by: it takes the sparsity r (the fraction dropped) and
    keeps int((1 - r) * L) tokens. Our `budget_ratio` is the fraction kept, 1 - r; going through r = 1 -
    budget_ratio gives its float arithmetic exactly (budget_ratio 0.1: r = 0.9, 1 - r = 0.09999999999999998, so
    L = 20 keeps 1 token, as the official code does, not 2)."""
    sparsity = 1.0 - budget_ratio
    return 1.0 - sparsity


def ratio_budget(budget_ratio: float, length: int) -> int:
    """Tokens kept out of `length` at `budget_ratio`: int((1 - r) * L) with r = 1 - budget_ratio, truncated as in
    the official code (float64). The token rule then keeps at least the sink and recent window."""
    return int(ratio_keep_factor(budget_ratio) * length)


@dataclass
class LycheeConfig:
    """`budget` tokens per sparse head, or `budget_ratio`: the fraction of the context kept, 1 - r for the official
    code's sparsity ratio r (its `radio` mode), truncated like it: int((1 - r) * L) tokens at L real tokens, the
    current one included; `roles`: see methods/roles.py; `granularity`: token (default) or block."""

    roles: str | None = None
    budget: int | None = 4096
    budget_ratio: float | None = None
    granularity: str = "token"
    block_size: int = 64
    sink: int = 128
    recent: int = 256
    correction_period: int = 0  # 0: off; T: every T decoded tokens, recompute their K/V densely
    path: str = "auto"  # auto: on CUDA the fused block kernel (block) or the shared position-list kernel (token)

    def __post_init__(self) -> None:
        check_path("lychee", self.path)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"lychee granularity {self.granularity!r}: use one of {', '.join(GRANULARITIES)}")
        if self.budget_ratio is not None:
            if not 0.0 < self.budget_ratio <= 1.0:
                raise ValueError(f"lychee budget_ratio {self.budget_ratio} must be in (0, 1]")
            self.budget = None
        elif self.budget is None:
            raise ValueError("lychee needs --budget N (tokens) or --option budget_ratio=R")
        elif self.budget < 1:
            raise ValueError(f"lychee budget {self.budget} must be a positive number of tokens, e.g. --budget 4096")
        if self.granularity == "token" and self.budget is not None and self.budget < self.sink + self.recent:
            raise ValueError(
                f"lychee token budget {self.budget} must hold the {self.sink} sink + {self.recent} recent tokens; "
                f"raise --budget or lower the sink/recent options"
            )
        if self.granularity == "block" and self.budget is not None and self.budget < self.block_size:
            raise ValueError(f"lychee block budget {self.budget} is below one block of {self.block_size} tokens")
        if self.correction_period < 0:
            raise ValueError("lychee correction_period must be >= 0 (0 turns it off)")

    def host_budget(self, longest: int) -> int:
        """The token budget, as a host number, for sequences of at most `longest` real tokens."""
        return max(1, ratio_budget(self.budget_ratio, longest)) if self.budget_ratio is not None else self.budget

    def host_budget_blocks(self, longest: int) -> int:
        """`host_budget` in whole blocks (at least one)."""
        return max(1, self.host_budget(longest) // self.block_size)


class LycheeDecode(KernelPath, Method):
    """Retrieval heads: full attention + selection into their slot. Sparse heads: attention over their slot."""

    name: ClassVar[str] = "lychee"
    plot_style: ClassVar[tuple[str, str]] = ("#d62728", "o")  # colour, marker in every figure
    description: ClassVar[str] = (
        "LycheeDecode: retrieval heads pick tokens (top-k), sparse heads reuse them; granularity token (default, "
        "128 sink + 256 recent inside the budget) or block (64-token blocks, the fast kernel)"
    )
    Config: ClassVar[type] = LycheeConfig
    graph_safe: ClassVar[bool] = True
    tensor_parallel: ClassVar[str] = (
        "nothing gathered: a retrieval head scores with its own group's mean query and fills slot h of its own KV "
        "head, and the sparse heads reading slot h are that same KV head in later layers, on the same process; "
        "the roles table is sliced to the process's KV heads"
    )

    def __init__(self, config: LycheeConfig | None = None):
        super().__init__(config)
        self.roles: HeadRoles | None = None
        self._head_indices: dict[tuple[int, str], torch.Tensor] = {}
        self._sparse_masks: dict[tuple[int, str], torch.Tensor] = {}

    def set_head_shard(self, shard: HeadShard | None) -> None:
        super().set_head_shard(shard)
        self._head_indices.clear()
        self._sparse_masks.clear()

    def _retrieval(self, layer_idx: int) -> torch.Tensor:
        """The layer's roles [Hkv] of the KV heads this process holds (all of them without tensor parallelism)."""
        assert self.roles is not None, "prepare() loads the roles before decoding"
        return local_heads(self.roles.retrieval[layer_idx], self.head_shard)

    def check_config(self, shape: RunShape) -> list[str]:
        reasons = []
        try:
            self.roles = resolve_roles(self.config.roles, shape.num_layers, shape.num_kv_heads, shape.model_name)
        except RolesError as error:
            reasons.append(str(error))
        return reasons + self.resolve_path(shape.device, shape.head_dim)

    def graph_refusal(self) -> str | None:
        if self.config.budget_ratio is not None:
            return "lychee budget_ratio changes the budget with every token; a captured step needs a fixed --budget"
        return super().graph_refusal()

    @property
    def correction_period(self) -> int:
        return self.config.correction_period

    def kernel_refusals(self) -> list[str]:
        if self.config.granularity == "block" and self.config.block_size != 64:
            return ["the block kernel uses 64-token blocks; leave block_size at 64"]
        return []

    def prepare(self, model: torch.nn.Module) -> None:
        config = model.config
        if self.roles is None:
            name = getattr(config, "_name_or_path", "")
            self.roles = resolve_roles(self.config.roles, config.num_hidden_layers, config.num_key_value_heads, name)
        self.resolve_path_for(model)
        self._head_indices.clear()
        self._sparse_masks.clear()

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.roles is not None:
            described["roles_used"] = self.roles.describe()
        return described

    def resolved_artifacts(self) -> dict[str, str]:
        return {} if self.roles is None else {"roles": self.roles.checksum}

    @classmethod
    def synthetic_options(cls, config: Any, model_name: str) -> dict[str, Any]:
        """Uniform roles with 12.5% retrieval heads (no trained roles ship for a synthetic model)."""
        return {"roles": synthetic_roles_spec(config)}

    def sparse_tokens(self, ctx: int) -> int:
        """Tokens a sparse head reads at context ``ctx``: its budget (block granularity: whole blocks)."""
        cfg = self.config
        if cfg.granularity == "block":
            return min(ctx, cfg.host_budget_blocks(ctx) * cfg.block_size)
        return min(ctx, cfg.host_budget(ctx))

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int | None:
        """Retrieval heads all ``ctx`` tokens, sparse heads their budget, summed over the role table (None
        before the roles are loaded); under tensor parallelism over this process's KV heads (and `shape` is then
        the process's own, methods/head_shard.local_shape)."""
        if self.roles is None:
            return None
        retrieval = int(local_heads(self.roles.retrieval, self.head_shard).sum())
        sparse = shape.num_layers * shape.num_kv_heads - retrieval
        return head_tokens_bytes(shape, retrieval * ctx + sparse * self.sparse_tokens(ctx), batch)

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]] | None:
        """Token granularity with a fixed budget (None otherwise): a retrieval KV head's query heads attend to
        every real token and choose, for slot h, the sink and recent window plus the top real tokens by the
        group-mean query's logit (everything within budget); a sparse head's query heads attend to slot h."""
        assert self.roles is not None, "check() or prepare() loads the roles first"
        cfg = self.config
        if cfg.granularity != "token" or cfg.budget is None:
            return None
        retrieval = self.roles.retrieval[layer_idx]
        out = []
        for row in naive_rows(query, key, valid):
            real = row.real
            heads = []
            for h in range(row.num_heads):
                kv_head = h // row.group
                if retrieval[kv_head]:
                    if h % row.group == 0:
                        if len(real) <= cfg.budget:
                            chosen = set(real)
                        else:
                            forced = sink_recent_positions(real, cfg.sink, cfg.recent)
                            rest = [p for p in real if p not in forced]
                            chosen = forced | top_positions(rest, row.mean_logits[kv_head], cfg.budget - len(forced))
                        memory[(row.b, kv_head)] = chosen
                    heads.append(set(real))
                else:
                    heads.append(memory[(row.b, kv_head)])
            out.append(heads)
        return out

    def budget_for(self, valid: torch.Tensor) -> torch.Tensor:
        """Token budget per sequence [B]."""
        _, count = valid_rank(valid)
        if self.config.budget_ratio is not None:  # float64 and truncated: ratio_budget's numbers, on the device
            factor = ratio_keep_factor(self.config.budget_ratio)
            return torch.clamp(torch.floor(count[:, 0].double() * factor).long(), min=1)
        return torch.full_like(count[:, 0], self.config.budget)

    def select(self, scores: torch.Tensor, valid: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """Selected positions [B, R, S] from the retrieval heads' scores [B, R, S]. `lengths`, the real tokens
        per sequence on the host, bound the top-k sizes without reading the device back."""
        budget = self.budget_for(valid)
        cfg = self.config
        longest = None if lengths is None else max(lengths)
        if cfg.granularity == "token":
            bound = None if longest is None else cfg.host_budget(longest)
            return select_tokens(scores, valid, budget, cfg.sink, cfg.recent, bound)
        blocks = None if longest is None else cfg.host_budget_blocks(longest)
        return select_blocks(
            scores, valid, torch.clamp(budget // cfg.block_size, min=1), cfg.block_size, blocks, longest
        )

    def decode_attention(
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
        if self.path == "triton" and self.config.granularity == "token":
            return self._decode_token_kernel(layer_idx, query, key, value, valid, scaling, state)
        if self.path == "triton":
            return self._decode_triton(layer_idx, query, key, value, valid, scaling, state)
        batch, num_heads, _, head_dim = query.shape
        num_kv_heads = key.shape[1]
        retrieval = self._retrieval(layer_idx).tolist()
        keep = torch.empty(batch, num_kv_heads, key.shape[2], dtype=torch.bool, device=key.device)
        retrieval_heads = [h for h in range(num_kv_heads) if retrieval[h]]
        if retrieval_heads:
            group = num_heads // num_kv_heads
            mean_query = query.float().view(batch, num_kv_heads, group, head_dim).mean(dim=2)  # [B, Hkv, D]
            heads = self._head_index(layer_idx, retrieval_heads, key.device)
            scores = torch.einsum("bhd,bhsd->bhs", mean_query[:, heads], key[:, heads].float())
            chosen = self.select(scores, valid, state.host_lengths(valid))
            for i, h in enumerate(retrieval_heads):
                keep[:, h] = valid  # a retrieval head reads the whole cache, always
                state.slots[h] = chosen[:, i]
            state.layer_data[("chosen", layer_idx)] = dict(zip(retrieval_heads, chosen.unbind(1), strict=True))
        for h in range(num_kv_heads):
            if not retrieval[h]:
                if h not in state.slots:
                    raise RuntimeError(f"sparse head {h} of layer {layer_idx} has an empty slot; layer 0 must fill it")
                keep[:, h] = state.slots[h]
        state.layer_data[("keep", layer_idx)] = keep  # what selected_positions reads (as attend_kept records)
        state.count("kv_tokens_read", keep.sum)
        return masked_decode_attention(query, key, value, keep, scaling)

    def chosen_positions(self, layer_idx: int, state: DecodeState) -> dict[int, torch.Tensor]:
        """The retrieval heads' picks of layer `layer_idx` in the last reference decode step, {KV head: [B, S]}."""
        return dict(state.layer_data.get(("chosen", layer_idx), {}))

    def _head_index(self, layer_idx: int, heads: list[int], device: torch.device) -> torch.Tensor:
        """The layer's retrieval heads as a device index, made once (a copy per step would wait for the device)."""
        key = (layer_idx, str(device))
        if key not in self._head_indices:
            self._head_indices[key] = torch.tensor(heads, device=device)
        return self._head_indices[key]

    def _decode_triton(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """The efficient path: one split-KV launch for all heads (kernels/lychee_triton.py). Slots hold block
        indices [B, Hkv, W] counted from each sequence's first real token, exactly the reference's blocks.

        The work plans (one per role pattern), their scratch buffers and the slot table are built once for the
        lengths the geometry bounds and kept in `state.persistent`: every later step, eager or a replay of a
        captured graph, uses the same tensors (the kernels read the exact lengths on the device)."""
        from lychee_bench.kernels.lychee_plan import plan_decode_work
        from lychee_bench.kernels.lychee_triton import DecodeBuffers, lychee_decode_layer

        geometry = step_geometry(valid, state)
        kept = state.persistent.get("lychee")
        if kept is None or kept["lengths_max"] != geometry.lengths_max:
            kept = {"lengths_max": geometry.lengths_max, "plans": {}, "buffers": {}, "slots": None}
            kept["budget_blocks"] = self.config.host_budget_blocks(geometry.longest)
            state.persistent["lychee"] = kept
        roles = self._retrieval(layer_idx)
        pattern = tuple(roles.tolist())
        q = query[:, :, 0]
        if pattern not in kept["plans"]:
            plan = plan_decode_work(geometry.lengths_max, roles, key.shape[2], kept["budget_blocks"], key.device)
            kept["plans"][pattern] = plan
            kept["buffers"][pattern] = DecodeBuffers.allocate(plan, q)
            if kept["slots"] is None:
                kept["slots"] = torch.full(
                    (plan.batch, plan.num_kv_heads, plan.slot_width), -1, dtype=torch.int32, device=key.device
                )
        if state.counting and not all(pattern):  # the blocks the sparse heads read: the slots before this layer
            sparse = self._sparse_mask(layer_idx, pattern, key.device)
            blocks = kept["slots"]
            state.count(
                "kv_tokens_read", lambda: (rows_read(blocks, self.config.block_size, geometry.lengths) * sparse).sum()
            )
        state.count("kv_tokens_read", lambda: geometry.lengths.sum() * sum(pattern))
        out, _ = lychee_decode_layer(
            q,
            key,
            value,
            geometry.lengths,
            roles,
            kept["slots"],
            kept["budget_blocks"],
            scaling,
            plan=kept["plans"][pattern],
            buffers=kept["buffers"][pattern],
            starts=geometry.starts,
            inplace_slots=True,
        )
        return out[:, :, None, :]

    def _decode_token_kernel(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        state: DecodeState,
    ) -> torch.Tensor:
        """Token granularity on the shared position-list kernel (kernels/sparse_decode.py): retrieval heads are
        dense rows that also leave their token scores (mean query . key) for the top-k, so K is read once; sparse
        heads read the position list in their slot: the sink and recent window, then the top-scoring tokens,
        exactly the reference's sets."""
        cfg = self.config
        geometry = step_geometry(valid, state)
        pattern = tuple(self._retrieval(layer_idx).tolist())
        batch, num_kv_heads, cache_len = query.shape[0], key.shape[1], key.shape[2]
        step = state.layer_data.get("lychee_token")
        if step is None:  # once per decode step: the forced window and the per-sequence top-k sizes
            window = step_window(state, geometry, cfg.sink, cfg.recent)
            bound = cfg.host_budget(geometry.longest)
            window_tokens = cfg.sink + cfg.recent
            width = max(1, bound - min(geometry.shortest, window_tokens))
            free = (self.budget_for(valid) - geometry.lengths.long().clamp(max=window_tokens)).clamp(min=0)
            unused = torch.full_like(window[:, :1], -1).expand(-1, window.shape[1] + min(width, cache_len))
            step = {"window": window, "width": width, "free": free, "unused": unused}
            state.layer_data["lychee_token"] = step
        retrieval = [h for h in range(num_kv_heads) if pattern[h]]
        missing = [h for h in range(num_kv_heads) if not pattern[h] and h not in state.slots]
        if missing:
            raise RuntimeError(f"sparse heads {missing} of layer {layer_idx} have empty slots; layer 0 must fill them")
        scores = None
        if retrieval:  # the dense rows leave their token scores here (the kernel's q . k: K is read once)
            if "scores" not in step:
                step["scores"] = torch.empty(batch, num_kv_heads, cache_len, device=key.device)
            scores = step["scores"]
        if all(pattern):
            index = None
        else:  # the sparse heads' lists; a dense row's entry is never read
            index = torch.stack([state.slots.get(h, step["unused"]) for h in range(num_kv_heads)], dim=1)
            sparse = self._sparse_mask(layer_idx, pattern, key.device)
            state.count("kv_tokens_read", lambda: (rows_read(index, 1, geometry.lengths) * sparse).sum())
        state.count("kv_tokens_read", lambda: geometry.lengths.sum() * len(retrieval))
        out = attend(query, key, value, scaling, geometry, index, dense_rows=pattern, scores=scores)
        if retrieval:  # the retrieval heads choose for the sparse heads of the layers after this one
            top = self._select(scores, geometry, step, retrieval)
            for h in retrieval:
                state.slots[h] = torch.cat([step["window"], top[:, h]], dim=-1)
        return out

    def _select(self, scores, geometry, step, retrieval: list[int]) -> torch.Tensor:
        """Each retrieval head's top tokens outside the sink and recent window, [B, Hkv, k] positions counted
        from the first real token (-1 unused), by the exact top-k kernel (kernels/token_select.py): it keeps each
        row's own count (its budget less the window), so no rank order is needed."""
        from lychee_bench.kernels.token_select import select_top_tokens

        cfg = self.config
        k = min(step["width"], scores.shape[-1])
        if "top" not in step:
            step["top"] = torch.full((*scores.shape[:2], k), -1, dtype=torch.int32, device=scores.device)
            step["free_rows"] = step["free"].to(torch.int32)
        return select_top_tokens(
            scores,
            geometry.lengths,
            geometry.starts,
            k,
            sink=cfg.sink,
            recent=cfg.recent,
            k_per_row=step["free_rows"],
            rows=retrieval,
            out=step["top"],
        )

    def _sparse_mask(self, layer_idx: int, pattern: tuple[bool, ...], device: torch.device) -> torch.Tensor:
        """[Hkv] 1 for the layer's sparse heads, on the device, made once per layer."""
        key = (layer_idx, str(device))
        if key not in self._sparse_masks:
            self._sparse_masks[key] = torch.tensor([0 if r else 1 for r in pattern], device=device)
        return self._sparse_masks[key]
