"""Head roles for LycheeDecode: which KV heads are retrieval heads, as a small versioned, checksummed file.

File format (JSON, `format: lychee-bench/head-roles`, version 1):
    model:      {name, fingerprint, num_layers, num_kv_heads}
    retrieval:  per layer, the sorted list of retrieval KV-head indices (layer 0 holds all of them)
    threshold_rule, training: how the roles were learned (free-form provenance)
    sha256:     checksum of the canonical JSON of {model.num_layers, model.num_kv_heads, retrieval}
Shipped files live in lychee_bench/artifacts/roles/ and are loaded by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lychee_bench.methods.artifacts import checksum, shipped_path

FORMAT = "lychee-bench/head-roles"
VERSION = 1
SYNTHETIC_RETRIEVAL_FRACTION = 0.125  # the paper's budget: 32 of 256 KV heads (Llama-3-8B)


class RolesError(ValueError):
    """Roles that cannot be used; the message says what to do."""


@dataclass
class HeadRoles:
    retrieval: torch.Tensor  # [num_layers, num_kv_heads] bool
    source: str  # what the user asked for ("uniform:11", a file, a shipped name)
    checksum: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_retrieval(self) -> int:
        return int(self.retrieval.sum())

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.checksum, "retrieval_heads": self.num_retrieval}


def roles_checksum(num_layers: int, num_kv_heads: int, retrieval: list[list[int]]) -> str:
    return checksum({"num_layers": num_layers, "num_kv_heads": num_kv_heads, "retrieval": retrieval})


def _as_lists(table: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in table]


def synthetic_roles_spec(config: Any) -> str:
    """The roles the bench gives a synthetic model (no trained roles ship for it): `uniform:N`, N being 12.5% of
    its KV heads (at least layer 0's)."""
    total = config.num_hidden_layers * config.num_key_value_heads
    return f"uniform:{max(config.num_key_value_heads, round(SYNTHETIC_RETRIEVAL_FRACTION * total))}"


def uniform_roles(total: int, num_layers: int, num_kv_heads: int) -> torch.Tensor:
    """`total` retrieval heads: all of layer 0, the rest spread evenly over layers 1.. and heads."""
    extra = total - num_kv_heads
    slots = (num_layers - 1) * num_kv_heads
    if extra < 0 or extra > slots:
        raise RolesError(
            f"uniform:{total} is impossible for {num_layers} layers x {num_kv_heads} KV heads: the count includes "
            f"layer 0's {num_kv_heads} heads, so use {num_kv_heads}..{num_layers * num_kv_heads}."
        )
    table = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool)
    table[0] = True
    for i in range(extra):
        flat = int((i + 0.5) * slots / extra)
        table[1 + flat // num_kv_heads, flat % num_kv_heads] = True
    return table


def roles_to_json(table: torch.Tensor, model: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    num_layers, num_kv_heads = table.shape
    retrieval = _as_lists(table)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {**model, "num_layers": num_layers, "num_kv_heads": num_kv_heads},
        "retrieval": retrieval,
        **provenance,
        "sha256": roles_checksum(num_layers, num_kv_heads, retrieval),
    }


def shipped_roles_path(name: str) -> Path | None:
    return shipped_path("roles", name)


def load_roles_file(path: Path, source: str) -> HeadRoles:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RolesError(f"cannot read roles file {path}: {error}") from error
    if data.get("format") != FORMAT or data.get("version", 0) > VERSION:
        raise RolesError(f"{path} is not a version-{VERSION} {FORMAT} file")
    num_layers, num_kv_heads = data["model"]["num_layers"], data["model"]["num_kv_heads"]
    expected = roles_checksum(num_layers, num_kv_heads, data["retrieval"])
    if data.get("sha256") != expected:
        raise RolesError(f"roles file {path} fails its checksum (edited or corrupt); regenerate it")
    table = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool)
    for layer, heads in enumerate(data["retrieval"]):
        table[layer, heads] = True
    info = {k: v for k, v in data.items() if k not in ("retrieval",)}
    return HeadRoles(table, source, expected, info)


def resolve_roles(spec: str | None, num_layers: int, num_kv_heads: int, model_name: str) -> HeadRoles:
    """`spec`: None (the model's shipped roles), "uniform:N", "all", a shipped name, or a file path."""
    if spec is None:
        path = shipped_roles_path(Path(model_name).name)
        if path is None:
            raise RolesError(
                f"no trained LycheeDecode head roles ship for model {model_name!r}. Give --roles <file> "
                f"(see `lychee-bench train-heads`), or --roles uniform:N for N retrieval heads spread "
                f"evenly (layer 0's {num_kv_heads} included)."
            )
        roles = load_roles_file(path, f"shipped:{Path(model_name).name}")
    elif spec == "all":
        table = torch.ones(num_layers, num_kv_heads, dtype=torch.bool)
        roles = HeadRoles(table, spec, roles_checksum(num_layers, num_kv_heads, _as_lists(table)))
    elif spec.startswith("uniform:"):
        try:
            total = int(spec.split(":", 1)[1])
        except ValueError as error:
            raise RolesError(f"bad roles {spec!r}: write uniform:N with N an integer") from error
        table = uniform_roles(total, num_layers, num_kv_heads)
        roles = HeadRoles(table, spec, roles_checksum(num_layers, num_kv_heads, _as_lists(table)))
    elif (path := shipped_roles_path(spec)) is not None:
        roles = load_roles_file(path, f"shipped:{spec}")
    elif Path(spec).expanduser().is_file():
        roles = load_roles_file(Path(spec).expanduser(), str(Path(spec).expanduser().resolve()))
    else:
        raise RolesError(f"roles {spec!r} is neither uniform:N, all, a shipped roles name, nor an existing file")
    if tuple(roles.retrieval.shape) != (num_layers, num_kv_heads):
        raise RolesError(
            f"roles {roles.source} are for {tuple(roles.retrieval.shape)} (layers, KV heads) but the model has "
            f"({num_layers}, {num_kv_heads}); use roles trained for this model"
        )
    if not bool(roles.retrieval[0].all()):
        raise RolesError(f"roles {roles.source}: every KV head of layer 0 must be a retrieval head")
    return roles
