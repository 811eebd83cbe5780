"""Tensor parallelism for models that do not fit one GPU: transformers' plan, the engine's own forward.

Launch every process with torchrun, e.g. `torchrun --nproc-per-node 2 -m lychee_bench.cli bench --tensor-parallel
...`; every process of the torchrun world is one tensor-parallel group of W = WORLD_SIZE processes, joined through
harness/distributed.py (NCCL on CUDA, one GPU per process; gloo on the CPU). Each process holds the shard
transformers' tensor-parallel plan (`model._tp_plan`, the architecture's `base_model_tp_plan` plus the model class's
own rules) gives it:

- q_proj, k_proj, v_proj: colwise (output rows): rank r holds KV heads [r Hkv/W, (r+1) Hkv/W) and the query heads
  of their groups, so attention, the KV cache and every method's per-head state are the rank's own heads.
- o_proj and down_proj: rowwise (input columns): each rank's product is a partial sum, all-reduced.
- gate_proj and up_proj: colwise; norms (qwen3's per-head q/k norms too): replicated.
- embed_tokens: embedding_rowwise (vocabulary rows): a rank looks up the ids in its range, the lookups are summed.
- lm_head: colwise_gather_output (vocabulary rows): each rank's logits are all-gathered, so every rank holds the
  same logits and chooses the same next token.

The engine reads weights directly (harness/forward.py), so the model is loaded sharded and then `localize`d: a real
model through `from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))`, whose DTensor
parameters are swapped for their local shards (plain tensors; transformers' own forward is not used after that),
and a synthetic shape (harness/synthetic_models.py) built shard by shard on each rank's device, never whole.
A run whose KV heads do not split evenly over W processes is refused before anything is loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lychee_bench.methods.head_shard import HeadShard

ATTRIBUTE = "_lychee_bench_tensor_parallel"  # where a localized model keeps its TensorParallel
BUILT_SHARD = "_lychee_bench_built_shard"  # (rank, world) of a model built shard by shard (synthetic shapes)
SHARDED_ROWS = ("colwise", "colwise_gather_output", "embedding_rowwise")  # shard dim 0 (output rows / vocabulary)
SHARDED_COLUMNS = ("rowwise",)  # weight shards its input columns; a bias is replicated (added after the sum)
REPLICATED = ("replicated_with_grad_allreduce", "replicate")
LAUNCH_HINT = "torchrun --nproc-per-node 2 -m lychee_bench.cli bench --tensor-parallel ..."
COLLECTIVES = (
    "all-reduce (sum) after o_proj and after down_proj in every layer and after the vocabulary-parallel embedding; "
    "all-gather of the LM head's logits; a method's own gathers (its class's `tensor_parallel`)"
)


class TensorParallelError(ValueError):
    """Tensor parallelism cannot start; the message says why and how to fix it."""


def launched_world() -> int | None:
    """WORLD_SIZE when torchrun (or another launcher that sets RANK, LOCAL_RANK, WORLD_SIZE) started us, else None."""
    if not all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    return int(os.environ["WORLD_SIZE"])


def shard_bounds(size: int, world: int, rank: int) -> tuple[int, int]:
    """Rows [start, end) of a dimension of `size` that rank `rank` of `world` holds: DTensor's Shard split (chunks
    of ceil(size / world), the last ones shorter or empty), so a synthetic shard matches a loaded one."""
    chunk = -(-size // world)
    start = min(rank * chunk, size)
    return start, min(start + chunk, size)


def _style_of(plan: dict[str, str], module_name: str) -> str | None:
    for pattern, style in plan.items():
        if re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), module_name):
            return style
    return None


def parameter_shard_dim(plan: dict[str, str], parameter_name: str, ndim: int) -> int | None:
    """The dimension of `parameter_name` (e.g. model.layers.3.self_attn.q_proj.weight) the plan shards (None:
    replicated). Styles this engine does not run are refused with the style's name."""
    module_name, _, leaf = parameter_name.rpartition(".")
    style = _style_of(plan, module_name)
    if style is None or style in REPLICATED:
        return None
    if style in SHARDED_ROWS:
        return 0
    if style in SHARDED_COLUMNS:
        return None if leaf == "bias" else ndim - 1
    raise TensorParallelError(
        f"transformers' plan shards {module_name} as {style!r}, which the engine does not run under tensor "
        f"parallelism (it runs {', '.join(SHARDED_ROWS + SHARDED_COLUMNS + REPLICATED)})"
    )


def tensor_parallel_refusals(config: Any, world: int) -> list[str]:
    """Why a model with this config cannot be split over `world` processes (empty: it can)."""
    reasons = []
    kv_heads, heads = config.num_key_value_heads, config.num_attention_heads
    if kv_heads % world:
        divisors = ", ".join(str(n) for n in range(1, kv_heads + 1) if kv_heads % n == 0)
        reasons.append(
            f"the model's {kv_heads} KV heads do not split over {world} processes: each process must hold whole KV "
            f"heads with their query heads; run {divisors} processes (torchrun --nproc-per-node N)"
        )
    elif heads % world:
        reasons.append(f"the model's {heads} query heads do not split over {world} processes")
    if not getattr(config, "base_model_tp_plan", None):
        reasons.append(f"transformers has no tensor-parallel plan for {getattr(config, 'model_type', '?')!r} models")
    return reasons


def run_refusals(config: Any, world: int) -> list[str]:
    """Why `run --tensor-parallel` cannot start (empty: it can): it must be launched by torchrun, and the model
    must split over its processes."""
    if launched_world() is None:
        return [f"--tensor-parallel splits the model over the processes torchrun starts; launch with {LAUNCH_HINT}"]
    return tensor_parallel_refusals(config, world) if world > 1 else []


def layout_fields(world: int, config: Any = None) -> dict[str, Any]:
    """What a run's manifest (with `config`) and each of its records (without) say about a tensor-parallel layout."""
    fields: dict[str, Any] = {"layout": "tensor parallel", "world_size": world}
    if config is not None:
        fields |= {
            "kv_heads_per_rank": config.num_key_value_heads // world,
            "query_heads_per_rank": config.num_attention_heads // world,
            "collectives": COLLECTIVES,
            "records": "rank 0 writes every record (every rank runs every batch on its shard)",
        }
    return fields


class Unwritten:
    """The record writer of a tensor-parallel rank other than 0: every rank computes the same records, rank 0
    writes them once."""

    def append(self, record: dict[str, Any]) -> None:
        return None


@dataclass
class TensorParallel:
    """This process's place in the tensor-parallel group and the collectives the engine calls."""

    rank: int
    world: int
    local_rank: int
    backend: str
    group: Any = None  # the process group of the collectives (None: the default group)
    handle: Any = None  # harness/distributed.py's Group that joined the default group (closed by `close`)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (a rowwise layer's partial products)."""
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather_last(self, local: torch.Tensor, size: int) -> torch.Tensor:
        """Every rank's slice of the last dimension [..., chunk] (rank order, `shard_bounds`) as [..., size]."""
        chunk = -(-size // self.world)
        if local.shape[-1] < chunk:  # an uneven last shard: pad to the common chunk, trimmed below
            local = torch.nn.functional.pad(local, (0, chunk - local.shape[-1]))
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[..., :size]

    def gather_heads(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's heads [B, h, ...] as [B, world * h, ...] in head order (bool travels as uint8)."""
        flag = local.dtype == torch.bool
        send = (local.to(torch.uint8) if flag else local).contiguous()
        parts = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(parts, send, group=self.group)
        gathered = torch.cat(parts, dim=1)
        return gathered.bool() if flag else gathered

    def reduce(self, value: float, op: str) -> float:
        """`value` reduced over the ranks ("max", "min" or "sum"), as a host number."""
        ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=ops[op], group=self.group)
        return float(tensor.item())

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable, made by this program), in rank order."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(group=self.group, device_ids=[self.local_rank])
        else:
            dist.barrier(group=self.group)

    def head_shard(self, total_kv_heads: int) -> HeadShard:
        return HeadShard.for_rank(total_kv_heads, self.rank, self.world, self.gather_heads)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group: destroyed if `init_from_env` created it (one someone else made is left alone)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def init_from_env(device: str) -> TensorParallel:
    """The tensor-parallel group of the processes torchrun started: harness/distributed.py reads torchrun's variables,
    places this process on its GPU (cuda:LOCAL_RANK) and joins the default process group (creating it unless it
    exists: NCCL on CUDA, gloo on the CPU)."""
    from lychee_bench.harness import distributed

    world = launched_world()
    if world is None:
        raise TensorParallelError(
            f"--tensor-parallel splits the model over the processes torchrun starts; launch with {LAUNCH_HINT}"
        )
    try:
        ranks = distributed.ranks_from_env()
        placed = distributed.rank_device("cuda" if device.startswith("cuda") else device, ranks)
    except distributed.DistributedError as error:
        raise TensorParallelError(str(error)) from None
    if not ranks.parallel:
        raise TensorParallelError("tensor parallelism needs 2 or more processes (torchrun --nproc-per-node N)")
    handle = distributed.Group(ranks, placed)
    backend = "nccl" if placed.startswith("cuda") else "gloo"
    if dist.get_backend() != backend:
        raise TensorParallelError(
            f"the process group runs {dist.get_backend()}, but tensor parallelism on {placed} needs {backend}"
        )
    return TensorParallel(ranks.rank, ranks.world_size, ranks.local_rank, backend, handle=handle)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether some parameter of `model` is still a DTensor (sharded by transformers, not yet `localize`d)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support shards nothing
        return False
    return any(isinstance(param, DTensor) for param in model.parameters())


def parallel_of(model: torch.nn.Module) -> TensorParallel | None:
    """The TensorParallel of a model `localize` prepared (None: a whole model in one process)."""
    return model.__dict__.get(ATTRIBUTE)


@torch.no_grad()
def localize(model: torch.nn.Module, parallel: TensorParallel) -> torch.nn.Module:
    """Swap every DTensor parameter of a model transformers sharded for its local shard (a plain tensor), check
    each against the plan, and mark the model as this rank's shard. transformers' own forward is not for use
    afterwards: the engine's forward (harness/forward.py) runs it. A model built as a shard
    (synthetic_models.build_synthetic_shard) already holds plain local tensors."""
    from torch.distributed.tensor import DTensor

    built = model.__dict__.get(BUILT_SHARD)
    if built is not None and built != (parallel.rank, parallel.world):
        raise TensorParallelError(f"this model was built as shard {built} (rank, world), not for rank {parallel.rank}")
    plan = getattr(model, "_tp_plan", None) or {}
    for module_name, module in model.named_modules():
        for leaf, param in list(module.named_parameters(recurse=False)):
            name = f"{module_name}.{leaf}" if module_name else leaf
            dim = parameter_shard_dim(plan, name, param.dim())
            if not isinstance(param, DTensor):
                if dim is not None and built is None:
                    raise TensorParallelError(
                        f"{name} is a whole tensor where transformers' plan shards it: load the model with "
                        "tensor_parallel.load_model (tp_plan='auto')"
                    )
                continue
            local = param.to_local()
            expected = list(param.shape)
            if dim is not None:
                start, end = shard_bounds(expected[dim], parallel.world, parallel.rank)
                expected[dim] = end - start
            if list(local.shape) != expected:
                raise TensorParallelError(
                    f"{name}: rank {parallel.rank} holds {tuple(local.shape)}, but the plan gives it {tuple(expected)} "
                    f"of {tuple(param.shape)}"
                )
            module._parameters[leaf] = torch.nn.Parameter(local, requires_grad=False)
    model.__dict__[ATTRIBUTE] = parallel
    return model


def load_model(source: Any, config: Any, dtype: str, seed: int, parallel: TensorParallel) -> torch.nn.Module:
    """This rank's shard of the model, on its device, localized: a synthetic shape built shard by shard, any
    other model through transformers' tensor-parallel loading (`tp_plan="auto"`)."""
    from lychee_bench.harness import models

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    reasons = tensor_parallel_refusals(config, parallel.world)
    if reasons:
        raise TensorParallelError("; ".join(reasons))
    if models.is_synthetic(source):
        from lychee_bench.harness.synthetic_models import build_synthetic_shard

        model = build_synthetic_shard(
            source.name, parallel.device, torch_dtype, seed, parallel.rank, parallel.world, config=config
        )
    else:
        from transformers import AutoModelForCausalLM
        from transformers.distributed import DistributedConfig

        model = AutoModelForCausalLM.from_pretrained(
            source.location,
            config=config,
            dtype=torch_dtype,
            distributed_config=DistributedConfig(tp_plan="auto", tp_size=parallel.world),
        ).eval()
    return localize(model, parallel)


def layout(parallel: TensorParallel | None, config: Any, plan: dict[str, str] | None = None) -> dict[str, Any]:
    """What a result records about the parallel layout (one process: world size 1, no plan)."""
    if parallel is None:
        return {"parallel": "none", "world_size": 1}
    return {
        "parallel": "tensor",
        "world_size": parallel.world,
        "backend": parallel.backend,
        "kv_heads_per_rank": config.num_key_value_heads // parallel.world,
        "query_heads_per_rank": config.num_attention_heads // parallel.world,
        "plan": dict(plan or {}),
        "collectives": COLLECTIVES,
    }
