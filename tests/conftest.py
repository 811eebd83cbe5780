"""Shared fixtures: tiny randomly initialised models of each supported architecture, and the real tokenizer."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("TRITON_INTERPRET", "1")

ARCHITECTURES = ("llama", "qwen2", "qwen3")


def tiny_config(
    arch: str,
    vocab_size: int = 256,
    num_heads: int = 6,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    layers: int = 3,
):
    """A transformers config of `arch` small enough for the CPU; `layers` decoder layers."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=num_heads * head_dim,
        intermediate_size=2 * num_heads * head_dim,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=head_dim, **common)
    raise ValueError(f"tiny_config: unknown arch {arch!r}; use one of {', '.join(ARCHITECTURES)}")


def tiny_model(arch: str, seed: int = 0, *, layers: int = 3, **overrides: Any) -> torch.nn.Module:
    """A randomly initialised `arch` model of `layers` layers (SDPA attention, eval mode); `overrides` go to
    tiny_config (vocab_size, num_heads, num_kv_heads, head_dim)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, layers=layers, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    # Larger-than-default weights make attention peaky, so a wrong key set changes the output visibly.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj" in name and param.dim() == 2:
                param.mul_(4.0)
    return model.eval()


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default model's real tokenizer (converted once into the lychee-bench cache)."""
    from lychee_bench.harness import models

    source = models.resolve_model(None)
    return models.load_tokenizer(source)


HOST_READS = (
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,  # seen instead of _local_scalar_dense under inference_mode
    torch.ops.aten.is_nonzero.default,  # bool(tensor)
    torch.ops.aten.nonzero.default,
)


class NoHostReads(TorchDispatchMode):
    """Fails on any op that reads a tensor value back to the host (.item(), bool(t), nonzero): the CPU stand-in
    for what a CUDA graph capture refuses."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"host read inside the decode step: {func}")
        return func(*args, **(kwargs or {}))


def fresh_seed() -> int:
    """Seeds torch with a fresh random seed (or LYCHEE_TEST_SEED, to reproduce a run) and prints it."""
    value = int(os.environ.get("LYCHEE_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={value}")
    torch.manual_seed(value)
    return value


def read_jsonl(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (records.jsonl, train_log.jsonl, either gzip-compressed), blank lines
    skipped; only those of `kind` when given. Strict on purpose: a line the code under
    test wrote badly fails the test."""
    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def sample_record(index: int, value: float, subtask: str = "vt", **fields: Any) -> dict[str, Any]:
    """A sample record with the fields summaries, comparisons and resume keys read (run key "k1", method full,
    ruler at 1024 tokens, model "m"); `fields` override or add."""
    record = {
        "kind": "sample",
        "run_key": "k1",
        "method": "full",
        "task": "ruler",
        "subtask": subtask,
        "ctx": 1024,
        "batch": 1,
        "model": "m",
        "metric": "string_match_all",
        "index": index,
        "value": value,
    }
    return record | fields


def cli(*args: str) -> Any:
    """`lychee-bench ARGS` run in this process (typer's CliRunner): its exit_code and output."""
    from typer.testing import CliRunner

    from lychee_bench.cli import app

    return CliRunner().invoke(app, list(args))
