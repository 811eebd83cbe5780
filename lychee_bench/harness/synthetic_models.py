"""Synthetic-shape models: published configurations with random weights, for speed measurements (SPEC §6).

Decode speed does not depend on weight values, so an 8B-shape model with random weights times the same as the
real one. Every result from these models is labelled ``weights: synthetic`` (see :func:`describe_synthetic`).

Building 8B parameters with transformers' own initialisation takes minutes on a CPU; here the model is built on
the ``meta`` device (no memory, no init), moved with ``to_empty`` straight onto the target device in the target
dtype, and filled there: normal(0, 0.02) for matrices (activations stay finite through 32 layers), ones for the
RMSNorm scales, zeros for biases. The rotary ``inv_freq`` buffer is recomputed (``to_empty`` leaves it garbage).
Under tensor parallelism (``build_synthetic_shard``) each process builds only its own shard, on its own GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

WEIGHT_STD = 0.02


@dataclass(frozen=True)
class SyntheticModel:
    name: str
    description: str
    make_config: Callable[[], Any]


def _llama3(hidden: int, intermediate: int, layers: int, heads: int) -> Any:
    """A Llama-3 shape: 8 KV heads of dim 128, 128K vocabulary, llama3 RoPE scaling to 131072 tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def _llama3_8b() -> Any:
    return _llama3(hidden=4096, intermediate=14336, layers=32, heads=32)


def _llama3_70b() -> Any:
    """Llama-3-70B's published shape (80 layers, 64 query / 8 KV heads): 141 GB of bf16 weights, more than fits one
    GPU beside a long cache; the bench runs it under tensor parallelism (harness/tensor_parallel.py)."""
    return _llama3(hidden=8192, intermediate=28672, layers=80, heads=64)


def _qwen3_8b() -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def _tiny_shape() -> dict[str, Any]:
    """The tiny CPU shape, the same sizes for every architecture (a fresh dict: configs may change theirs)."""
    return dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _tiny_llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**_tiny_shape())


def _tiny_qwen3() -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**_tiny_shape())


SYNTHETIC_MODELS: dict[str, SyntheticModel] = {
    m.name: m
    for m in (
        SyntheticModel("llama3-8b-synthetic", "Llama-3-8B shape (32 layers, 32/8 heads, d 128)", _llama3_8b),
        SyntheticModel("qwen3-8b-synthetic", "Qwen3-8B shape (36 layers, 32/8 heads, d 128)", _qwen3_8b),
        SyntheticModel(
            "llama3-70b-synthetic",
            "Llama-3-70B shape (80 layers, 64/8 heads, d 128, 141 GB in bf16; --tensor-parallel)",
            _llama3_70b,
        ),
        SyntheticModel("tiny-llama-synthetic", "tiny Llama (4 layers, 4/2 heads, d 32) for CPU tests", _tiny_llama),
        SyntheticModel("tiny-qwen3-synthetic", "tiny Qwen3 (4 layers, 4/2 heads, d 32) for CPU tests", _tiny_qwen3),
    )
}
TINY_MODELS = ("tiny-llama-synthetic", "tiny-qwen3-synthetic")


def is_synthetic(name: str) -> bool:
    return name in SYNTHETIC_MODELS


def synthetic_config(name: str) -> Any:
    if name not in SYNTHETIC_MODELS:
        known = ", ".join(SYNTHETIC_MODELS)
        raise ValueError(f"unknown synthetic model {name!r}; known: {known}")
    return SYNTHETIC_MODELS[name].make_config()


@torch.no_grad()
def build_synthetic(
    name: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0, config: Any = None
) -> torch.nn.Module:
    """The named synthetic model on ``device`` in ``dtype`` with random weights (seconds for 8B on a GPU);
    ``config`` replaces the published one (e.g. a vocabulary sized to a given tokenizer)."""
    from transformers import AutoModelForCausalLM

    config = synthetic_config(name) if config is None else config
    config._name_or_path = name
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for param_name, param in model.named_parameters():
        if param.dim() >= 2:
            param.normal_(0.0, WEIGHT_STD, generator=generator)
        elif "norm" in param_name:
            param.fill_(1.0)
        else:
            param.zero_()
    _rebuild_rotary(model, device)
    return model.eval()


def shard_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s sharded weights (replicated ones use `seed` itself, so every rank agrees)."""
    return seed + 1_000_003 * (rank + 1)


@torch.no_grad()
def build_synthetic_shard(
    name: str,
    device: str | torch.device,
    dtype: torch.dtype,
    seed: int,
    rank: int,
    world: int,
    config: Any = None,
) -> torch.nn.Module:
    """Rank `rank`'s shard of the named synthetic model under tensor parallelism over `world` processes, built on
    `device` directly: every parameter the engine's layout shards (harness/tensor_parallel.py ENGINE_LAYOUT; not
    transformers' plan, which differs between its versions) gets only this rank's rows or columns, so no process
    ever holds the whole model (Llama-3-70B: 141 GB in bf16).
    Sharded weights are drawn from a generator seeded per shard (`shard_seed`), replicated ones (norms: ones,
    biases: zeros) are the same on every rank: the weights are random either way, and differ from
    `build_synthetic`'s for the same seed. The model is marked as a built shard for `tensor_parallel.localize`."""
    from transformers import AutoModelForCausalLM

    from lychee_bench.harness.tensor_parallel import (
        BUILT_SHARD,
        WHOLE_SHAPES,
        engine_shard_dim,
        local_shape,
        named_parameter_slots,
    )

    config = synthetic_config(name) if config is None else config
    config._name_or_path = name
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    own = torch.Generator(device=device).manual_seed(shard_seed(seed, rank))
    shared = torch.Generator(device=device).manual_seed(seed)
    made: dict[int, torch.nn.Parameter] = {}  # tied parameters (one object in several modules) stay one
    wholes: dict[str, tuple[int, ...]] = {}
    for module, leaf, full_name, param in named_parameter_slots(model):
        wholes[full_name] = tuple(param.shape)
        if id(param) not in made:
            dim = engine_shard_dim(full_name, param.dim())
            tensor = torch.empty(local_shape(tuple(param.shape), dim, world, rank), dtype=dtype, device=device)
            if tensor.dim() >= 2:
                tensor.normal_(0.0, WEIGHT_STD, generator=own if dim is not None else shared)
            elif "norm" in full_name:
                tensor.fill_(1.0)
            else:
                tensor.zero_()
            made[id(param)] = torch.nn.Parameter(tensor, requires_grad=False)
        module._parameters[leaf] = made[id(param)]
    _rebuild_rotary(model, device)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"synthetic shard of {name}: {', '.join(left)} left unbuilt")
    model.__dict__[BUILT_SHARD] = (rank, world)
    model.__dict__[WHOLE_SHAPES] = wholes  # tensor_parallel.localize checks each shard against these
    return model.eval()


def _rebuild_rotary(model: torch.nn.Module, device: str | torch.device) -> None:
    """Recompute every rotary-embedding module's buffers (they were left uninitialised by ``to_empty``)."""
    for module_name, module in list(model.named_modules()):
        if "RotaryEmbedding" not in type(module).__name__:
            continue
        fresh = type(module)(config=model.config).to(device)  # built on the CPU: inv_freq in float32
        parent_name, _, attr = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, fresh)


def describe_synthetic(name: str, seed: int, world: int = 1) -> dict[str, Any]:
    """What every result from a synthetic model records about its weights (`world` > 1: built shard by shard)."""
    init = f"normal(0, {WEIGHT_STD}), norms 1, seed {seed}"
    if world > 1:
        init += f", each of {world} tensor-parallel shards seeded on its own (shard_seed)"
    return {"weights": "synthetic", "init": init, "shape_of": name}
