"""Synthetic-shape models: published configurations with random weights, for speed measurements (SPEC §6).

Decode speed does not depend on weight values, so an 8B-shape model with random weights times the same as the
real one. Every result from these models is labelled ``weights: synthetic`` (see :func:`describe_synthetic`).

Building 8B parameters with transformers' own initialisation takes minutes on a CPU; here the model is built on
the ``meta`` device (no memory, no init), moved with ``to_empty`` straight onto the target device in the target
dtype, and filled there: normal(0, 0.02) for matrices (activations stay finite through 32 layers), ones for the
RMSNorm scales, zeros for biases. The rotary ``inv_freq`` buffer is recomputed (``to_empty`` leaves it garbage).
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


def _llama3_8b() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
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


def _rebuild_rotary(model: torch.nn.Module, device: str | torch.device) -> None:
    """Recompute every rotary-embedding module's buffers (they were left uninitialised by ``to_empty``)."""
    for module_name, module in list(model.named_modules()):
        if "RotaryEmbedding" not in type(module).__name__:
            continue
        fresh = type(module)(config=model.config).to(device)  # built on the CPU: inv_freq in float32
        parent_name, _, attr = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, fresh)


def describe_synthetic(name: str, seed: int) -> dict[str, Any]:
    """What every result from a synthetic model records about its weights."""
    return {"weights": "synthetic", "init": f"normal(0, {WEIGHT_STD}), norms 1, seed {seed}", "shape_of": name}
