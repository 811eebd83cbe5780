"""Tensor parallelism for models that do not fit one GPU: the engine's own layout and forward.

Launch every process with torchrun, e.g. `torchrun --nproc-per-node 2 -m lychee_bench.cli bench --tensor-parallel
...`; every process of the torchrun world is one tensor-parallel group of W = WORLD_SIZE processes, joined through
harness/distributed.py (NCCL on CUDA, one GPU per process; gloo on the CPU). Each process holds the shard the
engine's layout (`ENGINE_LAYOUT`, transformers' style names) gives it:

- q_proj, k_proj, v_proj: colwise (output rows): rank r holds KV heads [r Hkv/W, (r+1) Hkv/W) and the query heads
  of their groups, so attention, the KV cache and every method's per-head state are the rank's own heads.
- o_proj and down_proj: rowwise (input columns): each rank's product is a partial sum, all-reduced.
- gate_proj and up_proj: colwise; norms (qwen3's per-head q/k norms too): replicated.
- embed_tokens: embedding_rowwise (vocabulary rows): a rank looks up the ids in its range, the lookups are summed.
- lm_head: colwise_gather_output (vocabulary rows): each rank's logits are all-gathered, so every rank holds the
  same logits and chooses the same next token.

The engine reads weights directly (harness/forward.py), so the model is loaded sharded and then `localize`d: a real
model through `from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))`, whose parameters are
swapped for this rank's part as plain tensors (transformers' own forward is not used after that), and a synthetic
shape (harness/synthetic_models.py) built shard by shard on each rank's device, never whole, from the engine's
layout alone. transformers' plan differs between its versions (5.17 shards an embedding only when it is tied to
the LM head; 5.24 always), so `localize` takes the rank's rows or columns itself from any parameter the plan left
whole, and checks every parameter's final shape against the engine's layout.
A run whose KV heads do not split evenly over W processes is refused before anything is loaded.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lychee_bench.methods.head_shard import HeadShard

ATTRIBUTE = "_lychee_bench_tensor_parallel"  # where a localized model keeps its TensorParallel
BUILT_SHARD = "_lychee_bench_built_shard"  # (rank, world) of a model built shard by shard (synthetic shapes)
WHOLE_SHAPES = "_lychee_bench_whole_shapes"  # {parameter name: whole shape} of a model built shard by shard
SHARDED_ROWS = ("colwise", "colwise_gather_output", "embedding_rowwise")  # shard dim 0 (output rows / vocabulary)
SHARDED_COLUMNS = ("rowwise",)  # weight shards its input columns; a bias is replicated (added after the sum)
# What each rank holds, by a module's own (last) name; every other parameter (norms, rotary) is replicated.
ENGINE_LAYOUT = {
    "embed_tokens": "embedding_rowwise",
    "q_proj": "colwise",
    "k_proj": "colwise",
    "v_proj": "colwise",
    "o_proj": "rowwise",
    "gate_proj": "colwise",
    "up_proj": "colwise",
    "down_proj": "rowwise",
    "lm_head": "colwise_gather_output",
}
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


def engine_shard_dim(parameter_name: str, ndim: int) -> int | None:
    """The dimension of `parameter_name` (e.g. model.layers.3.self_attn.q_proj.weight) the engine's layout shards
    (None: every rank holds it whole)."""
    module_name, _, leaf = parameter_name.rpartition(".")
    style = ENGINE_LAYOUT.get(module_name.rpartition(".")[2])
    if style in SHARDED_ROWS:
        return 0
    if style in SHARDED_COLUMNS:
        return None if leaf == "bias" else ndim - 1
    return None


def local_shape(whole: tuple[int, ...], dim: int | None, world: int, rank: int) -> tuple[int, ...]:
    """The shape rank `rank` holds of a parameter of shape `whole` sharded along `dim` (None: whole)."""
    if dim is None:
        return tuple(whole)
    start, end = shard_bounds(whole[dim], world, rank)
    return (*whole[:dim], end - start, *whole[dim + 1 :])


def named_parameter_slots(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, str, torch.nn.Parameter]]:
    """(module, leaf, full name, parameter) of every parameter slot, tied ones (one object, two modules) in each."""
    return [
        (module, leaf, f"{module_name}.{leaf}" if module_name else leaf, param)
        for module_name, module in model.named_modules()
        for leaf, param in module.named_parameters(recurse=False)
    ]


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


def whole_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's whole shape: recorded by a model built shard by shard, else from a copy of the model built
    on the meta device from its config (no memory, no weights)."""
    known = model.__dict__.get(WHOLE_SHAPES)
    if known is not None:
        return known
    with torch.device("meta"):
        reference = type(model)(copy.deepcopy(model.config))
    return {name: tuple(param.shape) for _, _, name, param in named_parameter_slots(reference)}


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _rank_part(
    name: str, param: torch.Tensor, dim: int | None, whole: tuple[int, ...], parallel: TensorParallel
) -> torch.Tensor:
    """The part of `param` rank `parallel.rank` keeps as a plain tensor: a DTensor's local shard, or this rank's rows
    or columns of a parameter left whole (replicated by transformers' plan, or a plain whole tensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        placement, *more = param.placements
        if more:
            raise TensorParallelError(
                f"{name} is spread over a {len(param.placements)}-dimensional device mesh; "
                "tensor parallelism here runs one process group (torchrun's world)"
            )
        if placement.is_shard():
            held = placement.dim % param.dim()
            if held != dim:
                wanted = "holds it whole" if dim is None else f"shards dimension {dim}"
                raise TensorParallelError(
                    f"transformers {_transformers_version()} sharded {name} along dimension {held}, where the "
                    f"engine's layout {wanted} (harness/tensor_parallel.py ENGINE_LAYOUT)"
                )
            return param.to_local()
        if not placement.is_replicate():
            raise TensorParallelError(
                f"transformers {_transformers_version()} left {name} as {placement}; the engine takes shards "
                "(Shard) or whole parameters (Replicate) only"
            )
        tensor = param.to_local()
    else:
        tensor = param.detach()
    if dim is None or tuple(tensor.shape) != tuple(whole):
        return tensor  # replicated, or already this rank's part (the caller checks the shape)
    start, end = shard_bounds(whole[dim], parallel.world, parallel.rank)
    return tensor.narrow(dim, start, end - start).clone()  # a copy: the whole tensor is freed once replaced


@torch.no_grad()
def localize(model: torch.nn.Module, parallel: TensorParallel) -> torch.nn.Module:
    """Replace every parameter by the part of it this rank holds under the engine's layout (`ENGINE_LAYOUT`), as a
    plain tensor: a DTensor's local shard, this rank's rows or columns of a parameter transformers' plan left whole
    (its plan differs between versions), a shard built as such (synthetic_models.build_synthetic_shard) as it is.
    Every final shape is checked against the layout; the model is marked as this rank's shard. transformers' own
    forward is not for use afterwards: the engine's forward (harness/forward.py) runs it."""
    built = model.__dict__.get(BUILT_SHARD)
    if built is not None and built != (parallel.rank, parallel.world):
        raise TensorParallelError(f"this model was built as shard {built} (rank, world), not for rank {parallel.rank}")
    wholes = whole_shapes(model)
    done: dict[int, torch.nn.Parameter] = {}  # tied parameters (one object in several modules) stay one
    for module, leaf, name, param in named_parameter_slots(model):
        if id(param) not in done:
            if name not in wholes:
                raise TensorParallelError(f"{name} is not a parameter of {type(model).__name__} built from its config")
            dim = engine_shard_dim(name, param.dim())
            local = _rank_part(name, param, dim, wholes[name], parallel)
            expected = local_shape(wholes[name], dim, parallel.world, parallel.rank)
            if tuple(local.shape) != expected:
                raise TensorParallelError(
                    f"{name}: rank {parallel.rank} of {parallel.world} holds {tuple(local.shape)}, but the engine's "
                    f"layout gives it {expected} of {wholes[name]} (transformers {_transformers_version()}); load "
                    "the model through tensor_parallel.load_model, or run it on one GPU without --tensor-parallel"
                )
            done[id(param)] = torch.nn.Parameter(local, requires_grad=False)
        module._parameters[leaf] = done[id(param)]
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
    """What a result records about the parallel layout (one process: world size 1, no plan); `plan`: transformers'
    plan of the loaded model (`model._tp_plan`)."""
    if parallel is None:
        return {"parallel": "none", "world_size": 1}
    return {
        "parallel": "tensor",
        "world_size": parallel.world,
        "backend": parallel.backend,
        "kv_heads_per_rank": config.num_key_value_heads // parallel.world,
        "query_heads_per_rank": config.num_attention_heads // parallel.world,
        "plan": dict(ENGINE_LAYOUT),  # what every rank holds (localize checks it)
        "transformers_plan": dict(plan or {}),  # transformers' own plan, as loaded (it differs between versions)
        "collectives": COLLECTIVES,
    }
