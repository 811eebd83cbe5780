"""Head roles for LycheeDecode: which KV heads are retrieval heads, as a small versioned, checksummed file.

File format (JSON, `format: lychee-bench/head-roles`, version 2):
    model:      {name, fingerprint, num_layers, num_kv_heads}
    retrieval:  per layer, the sorted list of retrieval KV-head indices (layer 0 holds all of them)
    threshold_rule, training: how the roles were learned (free-form provenance)
    sha256:     checksum of the canonical JSON of {model: {name, fingerprint, num_layers, num_kv_heads},
                retrieval} (version 1 covered only the shape and the retrieval lists)
Shipped files live in lychee_bench/artifacts/roles/ and are loaded by name. Every file is checked before use: its
structure, every layer listed, head indices in range, the checksum, and the model it was made for (its name must
be the run's model's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lychee_bench.methods.artifacts import checksum, read_artifact, shipped_names, shipped_path

FORMAT = "lychee-bench/head-roles"
VERSION = 2
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
    """Version 1's checksum: the shape and the retrieval lists (also the id of roles built in memory)."""
    return checksum({"num_layers": num_layers, "num_kv_heads": num_kv_heads, "retrieval": retrieval})


def file_checksum(model: dict[str, Any], retrieval: list[list[int]], version: int = VERSION) -> str:
    """The checksum a roles file of `version` carries (version 2 covers the model it was made for)."""
    if version < 2:
        return roles_checksum(model["num_layers"], model["num_kv_heads"], retrieval)
    identity = {key: model.get(key) for key in ("name", "fingerprint", "num_layers", "num_kv_heads")}
    return checksum({"model": identity, "retrieval": retrieval})


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
        "sha256": file_checksum({**model, "num_layers": num_layers, "num_kv_heads": num_kv_heads}, retrieval),
    }


def shipped_roles_path(name: str) -> Path | None:
    return shipped_path("roles", name)


def _checked_structure(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[list[int]]]:
    """(model, retrieval lists) of a roles file, or a RolesError naming the first thing that is wrong."""
    fix = "regenerate it with `lychee-bench train-heads`"
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise RolesError(f"roles file {path} does not say which model it is for (a `model` object with a name); {fix}")
    layers, heads = model.get("num_layers"), model.get("num_kv_heads")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (layers, heads)):
        raise RolesError(f"roles file {path}: model.num_layers and model.num_kv_heads must be positive integers; {fix}")
    retrieval = data.get("retrieval")
    if not isinstance(retrieval, list) or len(retrieval) != layers:
        count = len(retrieval) if isinstance(retrieval, list) else "no"
        raise RolesError(f"roles file {path} lists {count} layers of retrieval heads for a {layers}-layer model; {fix}")
    for layer, row in enumerate(retrieval):
        if not isinstance(row, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in row):
            raise RolesError(f"roles file {path}: layer {layer} is not a list of KV-head indices; {fix}")
        if any(h < 0 or h >= heads for h in row) or len(set(row)) != len(row):
            raise RolesError(
                f"roles file {path}: layer {layer} lists heads {row}, but the model has KV heads 0..{heads - 1} "
                f"(each once); {fix}"
            )
    return model, retrieval


def load_roles_file(path: Path, source: str) -> HeadRoles:
    data = read_artifact(path, FORMAT, VERSION, RolesError)
    model, retrieval = _checked_structure(data, path)
    if data.get("sha256") != file_checksum(model, retrieval, data["version"]):
        raise RolesError(f"roles file {path} fails its checksum (edited or corrupt); regenerate it")
    num_layers, num_kv_heads = model["num_layers"], model["num_kv_heads"]
    table = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool)
    for layer, heads in enumerate(retrieval):
        table[layer, heads] = True
    info = {k: v for k, v in data.items() if k not in ("retrieval",)}
    # The roles' id is the table's own checksum (as for uniform:N): one table decodes the same from any source.
    return HeadRoles(table, source, roles_checksum(num_layers, num_kv_heads, retrieval), info)


def resolve_roles(spec: str | None, num_layers: int, num_kv_heads: int, model_name: str) -> HeadRoles:
    """`spec`: None (the model's shipped roles), "uniform:N", "all", a shipped name, or a file path."""
    if spec is None:
        model = Path(model_name).name
        path = shipped_roles_path(model)
        if path is None:
            named = [name for name in shipped_names("roles") if name.startswith(f"{model}-")] if model else []
            shipped = f"Shipped for this model (--roles NAME): {', '.join(named)}. " if named else ""
            raise RolesError(
                f"no default LycheeDecode head roles ship for model {model_name!r}. {shipped}Give --roles <file> "
                f"(see `lychee-bench train-heads`), or --roles uniform:N for N retrieval heads spread "
                f"evenly (layer 0's {num_kv_heads} included)."
            )
        roles = load_roles_file(path, f"shipped:{model}")
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
    elif Path(spec).expanduser().exists():  # a folder too: the reader names it as one
        roles = load_roles_file(Path(spec).expanduser(), str(Path(spec).expanduser().resolve()))
    else:
        raise RolesError(f"roles {spec!r} is neither uniform:N, all, a shipped roles name, nor an existing file")
    made_for = roles.info.get("model", {}).get("name")
    if made_for is not None and model_name and Path(model_name).name != Path(made_for).name:
        raise RolesError(
            f"roles {roles.source} were learned for model {made_for!r}, and this run's model is "
            f"{Path(model_name).name!r}: head roles belong to one model's weights, a shape that matches is not "
            f"enough. Use roles made for {Path(model_name).name!r} (`lychee-bench train-heads --model ...`) or "
            "--roles uniform:N"
        )
    if tuple(roles.retrieval.shape) != (num_layers, num_kv_heads):
        raise RolesError(
            f"roles {roles.source} are for {tuple(roles.retrieval.shape)} (layers, KV heads) but the model has "
            f"({num_layers}, {num_kv_heads}); use roles trained for this model"
        )
    if not bool(roles.retrieval[0].all()):
        raise RolesError(f"roles {roles.source}: every KV head of layer 0 must be a retrieval head")
    return roles
