"""What a method is: a config, a capability declaration, and a decode-attention function."""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from lychee_bench.methods.state import DecodeState

if TYPE_CHECKING:
    from lychee_bench.methods.head_shard import HeadShard


@dataclass(frozen=True)
class Capabilities:
    """What a method supports; `check` turns a mismatch into a human-readable reason."""

    architectures: tuple[str, ...] = ("llama", "qwen2", "qwen3")
    group_sizes: tuple[int, ...] | None = None  # query heads per KV head; None = any
    head_dims: tuple[int, ...] | None = None  # None = any
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    batch: bool = True  # more than one sequence per forward
    needs_gpu: bool = False


def head_dim_of(config: Any) -> int:
    """A transformers config's attention head size (its `head_dim`, else hidden size over heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class RunShape:
    """The parts of a run a method may refuse, known before any weights are loaded."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    device: str
    batch_size: int
    ctx: int
    model_name: str = ""
    tensor_parallel: int = 1  # processes the heads are split over (harness/tensor_parallel.py)

    @classmethod
    def from_config(
        cls, config: Any, dtype: str, device: str, batch_size: int, ctx: int, model_name: str = ""
    ) -> RunShape:
        head_dim = head_dim_of(config)
        return cls(
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            ctx=ctx,
            model_name=model_name,
        )

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class CalibrationRequest:
    """What `lychee-bench calibrate` asks of a method's calibration: the model's shape and the command's options."""

    num_layers: int
    num_kv_heads: int
    num_anchors: int | None = None
    selection_layer: int = 2
    importance: bool = False


@dataclass(frozen=True)
class Calibration:
    """How `lychee-bench calibrate --method NAME` calibrates a method (`Method.calibration`; None: it cannot).

    `chooser` names the function that picks the method's layers from the dense pass's statistics, as
    "module:function"; it is imported only when calibrating (it may live above `methods` in the package, e.g. in
    `lychee_bench.calibration`). The class's `calibration_artifact` calls it and builds the artifact. `sets`
    says how the similarity sets are built (recorded in the artifact); `options` are the calibrate options that
    apply besides the model and data (e.g. "importance"); `shown` is the artifact field the command prints;
    `use` is how to use the artifact, formatted with `path` and the artifact's fields."""

    chooser: str
    sets: str
    shown: str
    use: str
    options: tuple[str, ...] = ()

    def load_chooser(self) -> Any:
        module_name, _, attr = self.chooser.partition(":")
        return getattr(importlib.import_module(module_name), attr)


class Method(ABC):
    """A decode-attention method. Subclasses set `name`, `description`, `Config`, `capabilities`.

    Everything the harness, the bench and the shared tests need to know about a method is declared on its class,
    so a method is one file (plus a `lychee_bench.methods` entry point for a third-party one):

    - `description`: the one line `lychee-bench list` prints (the registry reads it from here).
    - `naive_selection(...)`: its selection rule as a naive float64 model (tests/test_method_matrix.py checks
      `decode_attention` against attention over exactly those positions, for every registered method).
    - `bytes_read_per_step(shape, ctx, batch)`: the K/V bytes its efficient path reads per decode step (the
      bench's byte floor; None: unknown, no floor reported).
    - `synthetic_options(config, model_name)`: bench defaults for a synthetic model with no shipped artifacts.
    - `is_dense_baseline`: the bench takes its fastest such row as the reference for speedups.
    - `graph_safe` / `graph_refusal()`, `check()` / `check_config()`: CUDA-graph safety and refusals.
    - `calibration`: how `lychee-bench calibrate` calibrates it (None: it needs no calibration).
    - `plot_style`: its colour and marker in every figure (None: a colour no built-in uses, from its name).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Decode-only methods change nothing in prefill, so the harness decodes the question's tail by default.
    decode_only: ClassVar[bool] = True
    # Its decode step can be captured once in a CUDA graph and replayed while the context grows: it reads
    # nothing back from the device, and it uses the step's host lengths only as the bounds the engine gives
    # (StepGeometry). tests/test_latency.py and tests/test_method_matrix.py check every method that says so.
    graph_safe: ClassVar[bool] = False
    # The dense reference of the bench's speedups (full attention); a sparse method leaves it False.
    is_dense_baseline: ClassVar[bool] = False
    # How `lychee-bench calibrate` calibrates this method; None: it has nothing to calibrate.
    calibration: ClassVar[Calibration | None] = None
    # How it runs under tensor parallelism, where each process holds a slice of the KV heads (methods/head_shard.py):
    # what, if anything, it gathers from the other processes. None: undeclared, and a tensor-parallel run refuses it.
    tensor_parallel: ClassVar[str | None] = None
    # (colour, marker) in every figure (harness/plot_style.py); None: one picked from the name among unused colours.
    plot_style: ClassVar[tuple[str, str] | None] = None
    # The KV heads this process holds (None: all of them); set by the harness through `set_head_shard`.
    head_shard: HeadShard | None = None

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        # How this instance's results are keyed; the runner labels a variant name[key=value;...].
        self.label = self.name

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Method:
        """Build from CLI options (strings are converted to the field types); unknown keys are refused."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            allowed = ", ".join(fields) or "none"
            raise ValueError(f"method {cls.name!r} has no option {', '.join(unknown)}; its options: {allowed}.")
        empty = sorted(key for key, raw in options.items() if isinstance(raw, str) and not raw.strip())
        if empty:
            raise ValueError(
                f"method {cls.name!r} option {', '.join(empty)} is empty; give a value ({empty[0]}=...) or leave "
                "it out for the default"
            )
        values = {}
        for key, raw in options.items():
            values[key] = _convert(raw, fields[key].type, f"{cls.name} option {key}")
        return cls(cls.Config(**values))

    def check(self, shape: RunShape) -> list[str]:
        """Reasons this method refuses the run (empty list: accepted). Called before loading weights."""
        caps = self.capabilities
        reasons = []
        if shape.model_type not in caps.architectures:
            reasons.append(f"{self.name} supports architectures {caps.architectures}, not {shape.model_type!r}")
        if caps.group_sizes is not None and shape.group_size not in caps.group_sizes:
            reasons.append(f"{self.name} supports GQA group sizes {caps.group_sizes}, not {shape.group_size}")
        if caps.head_dims is not None and shape.head_dim not in caps.head_dims:
            reasons.append(f"{self.name} supports head dims {caps.head_dims}, not {shape.head_dim}")
        if shape.dtype not in caps.dtypes:
            reasons.append(f"{self.name} supports dtypes {caps.dtypes}, not {shape.dtype!r}")
        if shape.batch_size > 1 and not caps.batch:
            reasons.append(f"{self.name} runs one sequence at a time; use --batch-size 1")
        if caps.needs_gpu and not shape.device.startswith("cuda"):
            reasons.append(f"{self.name} needs a CUDA GPU (device is {shape.device!r})")
        if shape.tensor_parallel > 1 and self.tensor_parallel is None:
            reasons.append(
                f"{self.name} does not declare how it runs with its KV heads split over processes (its class's "
                "`tensor_parallel`); run it without --tensor-parallel"
            )
        return reasons + self.check_config(shape)

    def set_head_shard(self, shard: HeadShard | None) -> None:
        """The KV heads this process holds from now on (None: all). A method that caches per-head tables on the
        device clears them here."""
        self.head_shard = shard

    def check_config(self, shape: RunShape) -> list[str]:
        """Method-specific reasons to refuse; override where needed."""
        return []

    def graph_refusal(self) -> str | None:
        """Why this configuration's decode step cannot be captured in a CUDA graph (None: it can). The engine
        runs a refused method eagerly and records the reason with its results."""
        if not self.graph_safe:
            return f"{self.name} does not declare its decode step graph-safe"
        return None

    @property
    def correction_period(self) -> int:
        """Cache correction: every this many decoded tokens the engine recomputes their K/V densely (0: off)."""
        return 0

    def prepare(self, model: torch.nn.Module) -> None:
        """Load per-model artifacts (head roles, ...) once the model is loaded."""
        return None

    def describe(self) -> dict[str, Any]:
        """The method config recorded in every result, including which implementation path runs (`path`; a
        `path` option, e.g. auto, is kept as `path_option`)."""
        described = {"name": self.name, **dataclasses.asdict(self.config)}
        if "path" in described:
            described["path_option"] = described.pop("path")
        described["path"] = self.path
        return described

    def decode_signature(self) -> str:
        """Equal signatures decode identically: the engine decodes such entries once and shares the result.
        The recorded config, with every option that names an artifact (by shipped name or by file) replaced by
        the checksum of what it resolved to (`resolved_artifacts`)."""
        described = self.describe()
        for option, checksum in self.resolved_artifacts().items():
            described.pop(option, None)
            described.pop(f"{option}_used", None)
            described[f"{option}_sha256"] = checksum
        return json.dumps(described, sort_keys=True, default=str)

    def resolved_artifacts(self) -> dict[str, str]:
        """Options that name an artifact, mapped to the checksum of the loaded artifact (none by default)."""
        return {}

    @property
    def path(self) -> str:
        return "reference"

    def bytes_read_per_step(self, shape: RunShape, ctx: int, batch: int) -> int | None:
        """K/V bytes one decode step reads at context `ctx` for `batch` sequences, as the efficient path reads
        them (every K or V row counted once per reader; a fused kernel that scores and attends in one pass reads
        K once). The bench's byte floor adds the weights. None: unknown (or not yet known, e.g. before `check`
        has loaded the method's artifacts), and no floor is reported. Helpers: methods/traffic.py."""
        return None

    @classmethod
    def synthetic_options(cls, config: Any, model_name: str) -> dict[str, Any]:
        """Options the bench gives this method on a synthetic model (`config`, a transformers config), where no
        artifact ships for it, unless the user gives them. They are shared options: every method of the bench
        that has the option receives them. Empty by default."""
        return {}

    def naive_selection(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        memory: dict[Any, Any],
    ) -> list[list[set[int]]] | None:
        """The contract tests/test_method_matrix.py checks: a deliberately naive model (Python sets, float64) of
        the positions this method's decode step attends to. Called for layers 0, 1, ... of one decode step with
        the same arguments as `decode_attention` (query [B, Hq, 1, D], key [B, Hkv, S, D], valid [B, S]);
        `memory` is a dict kept across the step's layers for sets that one layer chooses and later layers reuse.
        Returns, per batch row and query head, the set of cache positions attended to; `decode_attention` must
        equal plain softmax attention over exactly those positions. None: no naive model (the matrix fails a
        registered method that has none). Helpers: methods/naive.py."""
        return None

    def selected_positions(self, layer_idx: int, state: DecodeState) -> torch.Tensor | None:
        """Read-only, for diagnosis (tools/needle_recall.py): after a decode step on the reference path, the cache
        positions layer `layer_idx` attended to in that step, keep [B, Hkv or Hq, S] bool. None: not recorded
        (an efficient path, or a method that records nothing). By default the mask the reference path recorded
        through `attend_kept` (methods/efficient.py); a method that attends otherwise records its own."""
        return state.layer_data.get(("keep", layer_idx))

    def chosen_positions(self, layer_idx: int, state: DecodeState) -> dict[int, torch.Tensor]:
        """Read-only, for diagnosis: the sets layer `layer_idx` chose in the last decode step for later layers to
        read, {KV head: [B, S] bool}, where they differ from what the layer itself attended to (LycheeDecode's
        retrieval heads attend to everything and pick for the sparse heads). Empty by default."""
        return {}

    @classmethod
    def calibration_refusals(cls, request: CalibrationRequest) -> list[str]:
        """Reasons `lychee-bench calibrate` refuses this method for a model and options (none by default)."""
        return []

    @classmethod
    def calibration_artifact(
        cls, stats: Any, request: CalibrationRequest, model: dict[str, Any], calibration: dict[str, Any]
    ) -> dict[str, Any]:
        """The calibration artifact (JSON content) from the dense pass's statistics: call `calibration.chooser`,
        add what it reports to `calibration` and build the artifact around `model` and `calibration`."""
        raise NotImplementedError(f"{cls.name} declares no calibration")

    @abstractmethod
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
        """One decode step of one layer: query [B, Hq, 1, D], key/value [B, Hkv, S, D] (whole cache),
        valid [B, S] (real tokens). Returns [B, Hq, 1, D]."""


def _convert(raw: Any, annotation: Any, what: str) -> Any:
    """Read a CLI string as the dataclass field's type (fields are annotated as strings here)."""
    if not isinstance(raw, str):
        return raw
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if "None" in text and raw.lower() in ("none", ""):
        return None
    base = text.replace("| None", "").replace("None |", "").strip()
    try:
        if base == "int":
            return int(raw)
        if base == "float":
            return float(raw)
        if base == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError as error:
        raise ValueError(f"{what}: cannot read {raw!r} as {base}") from error
    return raw
