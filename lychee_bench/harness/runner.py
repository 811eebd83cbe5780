"""`lychee-bench run`: plan, check, generate samples, run every method over them, record, summarise."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lychee_bench.harness import distributed, models, provenance, records, tensor_parallel
from lychee_bench.harness.catalog import METHODS, TASKS
from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.harness.memory import MemoryPlanError
from lychee_bench.harness.registry import UnknownNameError
from lychee_bench.harness.sample_cache import cached_samples
from lychee_bench.harness.sampling import row_seed
from lychee_bench.harness.task import ContextTooShortError
from lychee_bench.methods.base import Method, RunShape


class PlanError(ValueError):
    """A run that cannot start; carries every reason so the user can fix them all at once."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("\n".join(f"- {reason}" for reason in reasons))


@dataclass
class RunPlan:
    methods: list[str]  # `--method` entries: name or name[key=value;...] (see parse_method_entry)
    task: str  # "ruler" or "ruler/<subtask>" (comma lists allowed)
    ctx: int
    model: str | None = None
    samples: int | None = None  # None: the task's default (generation_defaults()["samples"]), else 5
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 0  # 0: automatic
    method_options: dict[str, Any] = field(default_factory=dict)
    decode_exercise: bool | None = None  # None: on when any method is decode-only
    exercise_chars: int = 100
    chat_template: bool | None = None  # None: use the tokenizer's template when it has one
    rope_scaling: str | None = None
    tokenizer: str | None = None  # a synthetic model's tokenizer (an embedded model name or a folder)
    temperature: float | None = None  # None: the tasks' protocol (generation_defaults), else greedy
    top_p: float | None = None
    out: Path | None = None
    tensor_parallel: bool = False  # split the model over the torchrun processes (harness/tensor_parallel.py)
    tags: list[str] = field(default_factory=list)  # what the run is (`--tag`; the report's appendix reads them)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PlanError([f"device {device!r} was asked for but no CUDA GPU is visible; use --device cpu"])
    if not (device == "cpu" or device.startswith("cuda")):
        raise PlanError([f"unknown device {device!r}; use cpu, cuda or cuda:N"])
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    allowed = ("float32", "bfloat16", "float16")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    dtype = aliases.get(dtype, dtype)
    if dtype not in allowed:
        raise PlanError([f"unknown dtype {dtype!r}; use one of {', '.join(allowed)} (or auto)"])
    return dtype


def parse_tasks(spec: str) -> list[tuple[str, list[str]]]:
    """'ruler' -> its default subtasks; 'ruler/niah_single_1,ruler/vt' -> those. Unknown names raise with hints."""
    return build_tasks(spec)[0]


def build_tasks(spec: str) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    """(task name, subtasks) in `--task` order, and each task built with its options: `aime24[k=16]`,
    `longbench[data_dir=/data/longbench]/qasper` (the class's `from_options` when it has one, else its keyword
    arguments)."""
    chosen: dict[str, list[str]] = {}
    options: dict[str, dict[str, str]] = {}
    tasks: dict[str, Any] = {}  # each task built once, with its options
    for part in _split_outside_brackets(spec):
        family, subtask = part, ""
        if "/" in part and part.rfind("/") > part.rfind("]"):
            family, _, subtask = part.rpartition("/")
        base, entry_options = parse_method_entry(family) if "[" in family else (family, {})
        name = TASKS.resolve(base)
        if options.setdefault(name, entry_options) != entry_options:
            raise PlanError([f"{name} is given twice with different options in --task {spec!r}; give it once"])
        if name not in tasks:
            tasks[name] = _build_task(name, entry_options)
        task = tasks[name]
        subtasks = task.subtasks()
        if subtask:
            if subtask not in subtasks:
                raise UnknownNameError(f"{name} subtask", subtask, subtasks)
            chosen.setdefault(name, [])
            if subtask not in chosen[name]:
                chosen[name].append(subtask)
        else:
            chosen[name] = list(getattr(task, "default_subtasks", task.subtasks)())
    if not chosen:
        raise PlanError([f"no task given in {spec!r}; e.g. --task ruler or --task ruler/niah_single_1"])
    return list(chosen.items()), tasks


def _split_outside_brackets(spec: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def _build_task(name: str, options: dict[str, str]) -> Any:
    """A task instance with its options; bad options are a PlanError naming what the task takes."""
    cls = TASKS.get(name)
    if not options:
        return cls()
    try:
        if hasattr(cls, "from_options"):
            return cls.from_options(options)
        return cls(**options)
    except (TypeError, ValueError) as error:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise PlanError(
            [
                f"task {name}[{';'.join(f'{k}={v}' for k, v in options.items())}]: {error}; it takes "
                f"{', '.join(accepted) or 'no options'}"
            ]
        ) from None


def split_methods(spec: str) -> list[str]:
    """`--method` text -> its entries: 'full,lychee[roles=all;budget=256]' -> ['full', 'lychee[roles=all;budget=256]'].

    Commas separate entries; inside brackets they do not (parse_method_entry refuses them there)."""
    entries, current, depth = [], "", 0
    for char in spec:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise PlanError([f"unbalanced brackets in --method {spec!r}: a ']' closes nothing"])
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise PlanError([f"unbalanced brackets in --method {spec!r}: close each '[' with ']'"])
    entries = [e.strip() for e in [*entries, current] if e.strip()]
    if not entries:
        raise PlanError([f"no method given in --method {spec!r}; e.g. --method full,lychee"])
    return entries


METHOD_ENTRY = re.compile(r"(?P<name>[^\[\]]+?)\s*(?:\[(?P<options>[^\[\]]*)\])?")
ENTRY_SYNTAX = "name or name[key=value;key=value], e.g. lychee[roles=uniform:11;granularity=token]"


def parse_method_entry(entry: str) -> tuple[str, dict[str, str]]:
    """'lychee[roles=uniform:11;budget=512]' -> ('lychee', {'roles': 'uniform:11', 'budget': '512'}).

    A value is everything after the first '=' (it may hold ':', '/', '.', '='); keys are read like `-o` keys."""
    match = METHOD_ENTRY.fullmatch(entry.strip())
    if not match:
        raise PlanError([f"bad --method entry {entry!r}: write {ENTRY_SYNTAX}"])
    options: dict[str, str] = {}
    for item in (match["options"] or "").split(";"):
        item = item.strip()
        if not item:
            continue  # 'name[]' and a trailing ';' are fine
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if "," in item:
            problem = "separate the options inside brackets with ';', not ','"
        elif not sep:
            problem = "write key=value"
        elif not key:
            problem = "the key before '=' is empty"
        elif key in options:
            problem = f"option {key!r} is given twice"
        else:
            options[key] = value.strip()
            continue
        raise PlanError([f"bad option {item!r} in --method entry {entry!r}: {problem}"])
    return match["name"], options


def method_label(name: str, options: dict[str, str]) -> str:
    """How results of a method instance are keyed: its name, or name[k=v;...] with the entry's own options."""
    if not options:
        return name
    return f"{name}[{';'.join(f'{key}={value}' for key, value in options.items())}]"


def takes_option(entry: str, key: str) -> bool:
    """Whether the method an entry names has the option `key` (a tool's default then applies to it; a name that
    is not a method is reported by build_methods)."""
    try:
        cls = METHODS.get(parse_method_entry(entry)[0])
    except (PlanError, UnknownNameError):
        return False
    return key in {f.name for f in dataclasses.fields(cls.Config)}


def options_taken(entries: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """A tool's own default options, kept where some entry's method takes them (build_methods refuses a shared
    option no method has: right for what the user gave, wrong for a tool's defaults, e.g. `--methods full`)."""
    return {key: value for key, value in options.items() if any(takes_option(entry, key) for entry in entries)}


def build_methods(entries: list[str], shared: dict[str, Any]) -> list[Method]:
    """One labelled method instance per `--method` entry. Shared options (--budget, --roles, -o) go to every
    method that has them; an entry's bracket options override them. All problems are raised at once."""
    methods: list[Method] = []
    accepted_by: dict[str, list[str]] = {}
    reasons: list[str] = []
    for entry in entries:
        try:
            name, own = parse_method_entry(entry)
            cls = METHODS.get(name)
        except PlanError as error:
            reasons += error.reasons
            continue
        except UnknownNameError as error:
            reasons.append(str(error))
            continue
        accepted = [f.name for f in dataclasses.fields(cls.Config)]
        accepted_by[cls.name] = accepted
        unknown = [key for key in own if key not in accepted]
        if unknown:
            allowed = ", ".join(accepted) or "none"
            reasons.append(f"--method {entry!r}: {cls.name} has no option {', '.join(unknown)}; its options: {allowed}")
            continue
        try:
            method = cls.from_options({**{k: v for k, v in shared.items() if k in accepted}, **own})
        except ValueError as error:
            reasons.append(f"--method {entry!r}: {error}")
            continue
        method.label = method_label(cls.name, own)
        twin = next((m for m in methods if type(m) is type(method) and m.config == method.config), None)
        if twin is not None:
            reasons.append(
                f"--method {entry!r} repeats {twin.label!r}: same method, same effective options; drop one entry "
                "or give it other options"
            )
            continue
        methods.append(method)
    unused = [key for key in shared if accepted_by and not any(key in a for a in accepted_by.values())]
    if unused:
        options = "; ".join(f"{name}: {', '.join(accepted) or 'none'}" for name, accepted in accepted_by.items())
        reasons.append(f"--option/--budget/--roles {', '.join(unused)}: no method here has it ({options})")
    if reasons:
        raise PlanError(reasons)
    return methods


def default_out(plan: RunPlan, methods: list[Method], model_name: str) -> Path:
    task = plan.task.replace("/", "-").replace(",", "+")
    names = "+".join(_file_name(method.label) for method in methods)
    return Path("runs") / f"{names}_{task}_{plan.ctx}_{Path(model_name).name}_s{plan.seed}"


def _file_name(label: str) -> str:
    """A label as part of a folder name: a variant's bracket options become a short hash."""
    name, bracket, _ = label.partition("[")
    return f"{name}-{records.config_hash(label)[:8]}" if bracket else name


@dataclass
class CheckedRun:
    """A plan that `check_run` found nothing wrong with, resolved: what the later steps of `run` read."""

    plan: RunPlan
    device: str
    dtype: str
    batch_size: int
    methods: list[Method]
    task_list: list[tuple[str, list[str]]]  # (task name, its subtasks), in `--task` order
    tasks: dict[str, Any]  # task name -> task instance
    source: Any  # the model's source (models.resolve_model)
    tokenizer_source: Any
    config: Any  # the model's config


@dataclass
class RunSetting:
    """How a checked run reads its inputs and where it records: everything its run keys and records are made of
    besides the method and the sample."""

    tokenizer: Any
    formatter: InputFormatter
    out: Path
    provenance: dict[str, Any]
    model_info: dict[str, Any]
    input_format: dict[str, Any]
    generation: dict[str, Any]  # the GenerationSettings every batch shares (besides its token limit and seed)
    parallel: dict[str, Any] = field(default_factory=dict)  # the launch's layout (distributed.describe)
    rank_fields: dict[str, Any] = field(default_factory=dict)  # what a data-parallel rank adds to its records


@dataclass
class PendingSample:
    """A sample some method still has to run: the labels of those methods, the run keys of every method."""

    task: Any
    sample: Any
    run_keys: dict[str, str]  # method label -> run key
    labels: set[str]


def run(plan: RunPlan, log: Any = print) -> list[dict[str, Any]]:
    """Execute a plan; returns the summary rows (also written as summary records).

    A folder that already holds records resumes: samples whose run key is recorded are not run again. Launched
    by torchrun with several processes, each rank runs its share of the samples into its own records shard, and
    rank 0 alone holds the folder's lock, shows the progress bar and summarises (returning the rows; the other
    ranks return none)."""
    try:
        ranks = distributed.ranks_from_env()
        device = distributed.rank_device(resolve_device(plan.device), ranks)
    except distributed.DistributedError as error:
        raise PlanError([str(error)]) from None
    group = distributed.Group(ranks, device)
    if not ranks.main:
        log = _silent
        _quiet_loading()
    try:
        return _run(plan, ranks, group, log)
    finally:
        group.close()


def _run(plan: RunPlan, ranks: distributed.Ranks, group: distributed.Group, log: Any) -> list[dict[str, Any]]:
    def prepare() -> tuple[CheckedRun, RunSetting, list[tuple[str, str, list[Any]]]]:
        with group.node_main_first():  # what this fills in the caches (model, samples) the other ranks then read
            checked = check_run(plan)
            setting = run_setting(checked)
            check_folder(checked, setting)
            work = build_samples(checked, setting.formatter)  # before the folder is touched: a bad --ctx writes nothing
        return checked, setting, work

    checked, setting, work = group.agree(prepare, PlanError)
    out = setting.out
    launch_id = group.from_main(uuid.uuid4().hex[:12])
    processes = group.gather(distributed.this_process(checked.device, ranks))
    setting.parallel = distributed.describe(ranks, processes) | {"launch": launch_id}
    # Tensor parallel: every rank runs every batch on its shard of the model and rank 0 alone writes the records.
    split = plan.tensor_parallel and ranks.parallel
    dealt = ranks.parallel and not split  # data parallel: the batches are dealt to the ranks, one shard each
    if split:
        setting.parallel |= tensor_parallel.layout_fields(ranks.world_size, checked.config)
    if ranks.parallel:
        fields = distributed.rank_fields(ranks) | (tensor_parallel.layout_fields(ranks.world_size) if split else {})
        setting.rank_fields = {"parallel": {**fields, "launch": launch_id}}
    lock = records.FolderLock(out, f"{distributed.holder(ranks)}, launch {launch_id}" if ranks.parallel else "")
    group.agree(lambda: _lock_folder(lock, ranks, out), PlanError)
    try:
        done = group.from_main(group.agree(lambda: _open_folder(checked, setting, ranks), PlanError))
        gained = records.NewSamples(out) if ranks.main and dealt else None  # before any rank writes
        engine = group.agree(lambda: _rank_engine(checked, setting, work, log, ranks), PlanError)
        shard = records.shard_file(ranks.rank, ranks.world_size) if dealt else records.RECORDS_FILE
        writer = records.RecordWriter(out, shard) if ranks.main or not split else tensor_parallel.Unwritten()
        total = len(checked.methods) * sum(len(samples) for _, _, samples in work)
        bar = tqdm(total=total, desc="samples", unit="sample", dynamic_ncols=True, disable=not ranks.main)
        pending = pending_samples(checked, setting, work, done, bar)
        _check_same_work(group, pending)
        started, clock = datetime.now(UTC).isoformat(), time.perf_counter()
        progress = distributed.SharedProgress(bar, gained) if gained else bar
        batches = rank_batches(checked, pending, ranks if dealt else distributed.Ranks())
        timed = execute(checked, setting, engine, batches, writer, progress)
        if ranks.parallel:
            bar.set_postfix_str("waiting for the other ranks")
        seconds = round(time.perf_counter() - clock, 3)
        shares = group.gather(_rank_share(ranks, timed, seconds))  # after this, every rank's shard is complete
        progress.update(0)
        bar.close()
        rows: list[dict[str, Any]] = []
        if ranks.main:
            main_writer = writer if not ranks.parallel else records.RecordWriter(out)
            rows = summarise(checked, setting, main_writer)
            main_writer.append(_launch_record(setting, started, time.perf_counter() - clock, shares))
    finally:
        if ranks.main:
            lock.__exit__()
    if dealt:
        log(f"results: {out} ({records.RECORDS_FILE} and one records shard per rank, read as one run)")
    else:
        log(f"results: {out / records.RECORDS_FILE}")
    return rows


def _check_same_work(group: distributed.Group, pending: list[PendingSample]) -> None:
    """Every rank must hold the same pending samples, prompts included, since each deals them alike: a node with
    other package versions (tokenizer, task data) would build other prompts. Refused on every rank, before any
    rank writes."""
    if not group.ranks.parallel:
        return
    digest = hashlib.sha256()
    for row in pending:
        sample = row.sample
        for part in (*sorted(row.labels), sample.subtask, str(sample.index), sample.prompt, sample.answer_prefix):
            digest.update(str(part).encode() + b"\x1f")
    seen = group.gather(digest.hexdigest())
    if len(set(seen)) > 1:
        others = ", ".join(str(rank) for rank, value in enumerate(seen) if value != seen[0])
        error = PlanError(
            [
                f"rank(s) {others} built other samples than rank 0 (different prompts or pending work); install the "
                "same lychee-bench, transformers and tokenizers versions and task data on every node"
            ]
        )
        error.on_every_rank = True  # type: ignore[attr-defined]  # every rank raises it: rank 0 prints it
        raise error


def _silent(*_: Any) -> None:
    """The log of a rank other than 0: only rank 0 speaks."""


def _quiet_loading() -> None:
    """Transformers' own progress bars (loading weights) stay on rank 0 too."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _lock_folder(lock: records.FolderLock, ranks: distributed.Ranks, out: Path) -> None:
    """Rank 0 takes the folder's lock for the whole launch; a second launch (any world size) or a plain run into
    the same folder is refused while it holds it."""
    if not ranks.main:
        return
    try:
        lock.__enter__()
    except records.RunFolderError as error:
        raise PlanError([f"--out {out}: {error}"]) from None
    except OSError as error:  # e.g. a folder that cannot be created there
        raise PlanError([f"--out {out} cannot be written ({error}); pass a folder you can write"]) from None


def _open_folder(checked: CheckedRun, setting: RunSetting, ranks: distributed.Ranks) -> set | None:
    """Rank 0, holding the lock: reads what the folder already records (every shard, any world size), mends torn
    last lines and writes the manifest. Returns the finished samples, which rank 0 then hands to every rank."""
    if not ranks.main:
        return None
    done = recorded_keys(setting.out)  # read before the writers repair a torn last line
    records.repair_tails(setting.out)
    write_run_manifest(checked, setting)
    return done


def _rank_engine(
    checked: CheckedRun, setting: RunSetting, work: list[tuple[str, str, list[Any]]], log: Any, ranks: distributed.Ranks
) -> Engine:
    if ranks.parallel and not ranks.main and not checked.plan.tensor_parallel:
        _check_shared_folder(setting.out, setting.parallel["launch"], ranks)
    return load_engine(checked, setting, work, log)


def _check_shared_folder(out: Path, launch_id: str, ranks: distributed.Ranks) -> None:
    """Every rank writes into the same --out: on several nodes it must be a folder all of them mount."""
    try:
        runs = (records.read_manifest(out) or {}).get("runs", [])
    except records.RunFolderError:
        runs = []
    if not runs or (runs[-1].get("parallel") or {}).get("launch") != launch_id:
        raise PlanError(
            [
                f"rank {ranks.rank} does not see the manifest rank 0 wrote into --out {out}: every rank writes its "
                "records there, so on several nodes put --out on a filesystem all of them mount (NFS, Lustre, ...)"
            ]
        )


def rank_batches(checked: CheckedRun, pending: list[PendingSample], ranks: distributed.Ranks) -> list[list[Any]]:
    """The batches this rank runs: the batches one process would run (the pending samples in order,
    --batch-size at a time), dealt whole to the ranks balanced by their cost (batch_cost, distributed.deal). A
    batch is the same on any world size, so its outputs are those one process gets."""
    size = checked.batch_size
    batches = [pending[start : start + size] for start in range(0, len(pending), size)]
    if not ranks.parallel:
        return batches
    costs = [batch_cost(batch, checked.plan.ctx) for batch in batches]
    return [batches[position] for position in distributed.deal(costs, ranks.world_size)[ranks.rank]]


# A decode step of a batch costs about as long as prefilling this many tokens: on the H200 with the default model
# (RULER records, batch 65) a step took as long as 320-640 prefill tokens at 8192 and 140-230 at 4096. A proxy
# for balancing the ranks, not a measurement of any one run.
DECODE_STEP_TOKENS = 300


def batch_cost(batch: list[PendingSample], ctx: int) -> float:
    """A batch's work in prefill tokens: one prefill of every row, shared by its methods, then each method that
    still needs the batch decodes until the longest row's limit."""
    prefill = sum(row.sample.input_tokens or ctx for row in batch)
    methods = len(set().union(*(row.labels for row in batch))) if batch else 0
    return prefill + DECODE_STEP_TOKENS * methods * max((row.sample.max_new_tokens for row in batch), default=0)


def _rank_share(ranks: distributed.Ranks, timed: list[tuple[int, float]], seconds: float) -> dict[str, Any]:
    """What one rank did: its records and batches, its generating time, and the time of its first batch (which
    holds compilation and graph capture; tools/dp_check.py reads the steady rate after it)."""
    return {
        "rank": ranks.rank,
        "records": sum(count for count, _ in timed),
        "batches": len(timed),
        "generation_s": seconds,
        "first_batch_records": timed[0][0] if timed else 0,
        "first_batch_s": round(timed[0][1], 3) if timed else 0.0,
    }


def _launch_record(setting: RunSetting, started: str, seconds: float, shares: list[dict[str, Any]]) -> dict[str, Any]:
    """What one launch did: its layout, how many records each rank wrote and how long generating took (from the
    moment every rank had its model loaded to the moment the last rank finished)."""
    return {
        "kind": "launch",
        "parallel": setting.parallel,
        "started": started,
        "finished": datetime.now(UTC).isoformat(),
        "generation_s": round(seconds, 3),
        "records_written": sum(share["records"] for share in shares),
        "ranks": shares,
        "code": setting.provenance["code"],
    }


def run_identity(checked: CheckedRun, setting: RunSetting) -> dict[str, Any]:
    """What must agree for records to share a run folder: the model (and how it is loaded), the input format,
    the sampling settings and each task's configuration. Methods, subtasks, contexts and seeds may differ (they
    are in every record's key)."""
    info = setting.model_info
    model = {key: info.get(key) for key in ("name", "fingerprint", "dtype", "rope_scaling", "weights", "tokenizer")}
    return {
        "model": model,
        "input_format": setting.input_format,
        "sampling": setting.generation,
        "tasks": {name: task.config() for name, task in checked.tasks.items()},
    }


def check_folder(checked: CheckedRun, setting: RunSetting) -> None:
    """The output folder can take this run: it is (or can become) a folder, and the runs it already holds were
    made with the same model, input format, sampling and task settings (else their rows would mix)."""
    out = setting.out
    if out.exists() and not out.is_dir():
        raise PlanError([f"--out {out} is a file; pass a folder (a new one, or one this command wrote before)"])
    blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise PlanError([f"--out {out} cannot be created: {blocking} is a file; pass another folder"])
    try:
        manifest = records.read_manifest(out)
    except records.RunFolderError as error:
        raise PlanError([str(error)]) from None
    differences = records.identity_differences(manifest, run_identity(checked, setting))
    if differences:
        raise PlanError(
            [
                f"--out {out} holds records made with other settings, and rows would mix: "
                + "; ".join(differences)
                + f". Pass another --out for this run (nothing in {out} was changed)"
            ]
        )


def check_run(plan: RunPlan) -> CheckedRun:
    """Resolves the plan and looks for every reason it cannot run (task assets, model architecture and context,
    each method's own checks) before anything is loaded; raises them all at once as a PlanError."""
    try:  # under torchrun, each rank's own GPU (cuda:LOCAL_RANK)
        device = distributed.rank_device(resolve_device(plan.device), distributed.ranks_from_env())
    except distributed.DistributedError as error:
        raise PlanError([str(error)]) from None
    dtype = resolve_dtype(plan.dtype, device)
    methods = build_methods(plan.methods, plan.method_options)
    task_list, tasks = build_tasks(plan.task)

    reasons: list[str] = []
    for task in tasks.values():
        reasons += task.check_assets()
    source = models.resolve_model(plan.model)
    tokenizer_source, vocab_size = _tokenizer_source(plan, source)
    config = models.load_config(source, plan.rope_scaling, vocab_size)
    reasons += models.check_architecture(config)
    reasons += models.check_context(config, plan.ctx, source.name)
    batch_size = plan.batch_size or (8 if device.startswith("cuda") else 1)
    shape = RunShape.from_config(config, dtype, device, batch_size, plan.ctx, source.name)
    if plan.tensor_parallel:  # the model split over the torchrun processes (harness/tensor_parallel.py)
        world = distributed.ranks_from_env().world_size
        reasons += tensor_parallel.run_refusals(config, world)
        shape = dataclasses.replace(shape, tensor_parallel=world)
    for method in methods:
        reasons += method.check(shape)
    if reasons:
        raise PlanError(reasons)
    return CheckedRun(plan, device, dtype, batch_size, methods, task_list, tasks, source, tokenizer_source, config)


def run_setting(checked: CheckedRun) -> RunSetting:
    """Loads the tokenizer and settles the input format, the output folder and what the records say about the
    model and the machine."""
    plan, source = checked.plan, checked.source
    decode_exercise = plan.decode_exercise
    if decode_exercise is None:
        decode_exercise = any(getattr(m, "decode_only", False) for m in checked.methods)
    tokenizer = models.load_tokenizer(checked.tokenizer_source)
    formatter = InputFormatter(tokenizer, plan.chat_template, plan.exercise_chars if decode_exercise else 0)
    model_info = {**source.provenance(), "dtype": checked.dtype, "rope_scaling": plan.rope_scaling}
    if models.is_synthetic(source):
        model_info |= {"tokenizer": checked.tokenizer_source.provenance(), "weights": f"synthetic, seed {plan.seed}"}
    input_format = {
        "chat_template": formatter.use_chat_template,
        "tokenizer": formatter.fingerprint(),
        "decode_exercise": decode_exercise,
        "exercise_chars": plan.exercise_chars if decode_exercise else 0,
    }
    return RunSetting(
        tokenizer=tokenizer,
        formatter=formatter,
        out=plan.out or default_out(plan, checked.methods, source.name),
        provenance=provenance.collect(checked.device),
        model_info=model_info,
        input_format=input_format,
        generation=sampling_settings(plan, checked.tasks),
    )


DEFAULT_SAMPLES = 5
GREEDY = {"temperature": 0.0, "top_p": 1.0}


def sampling_settings(plan: RunPlan, tasks: dict[str, Any]) -> dict[str, float]:
    """Temperature and top-p: what the user gave, else the tasks' protocol (AIME: 0.6 / 0.95), else greedy.
    Tasks whose protocols differ cannot share a run unless the user sets both."""
    chosen = {"temperature": plan.temperature, "top_p": plan.top_p}
    protocols = {
        name: task.generation_defaults() for name, task in tasks.items() if hasattr(task, "generation_defaults")
    }
    for key, value in chosen.items():
        if value is not None:
            continue
        wanted = {protocol[key] for protocol in protocols.values() if key in protocol}
        others = [name for name in tasks if name not in protocols]
        if len(wanted) > 1 or (wanted and others):
            raise PlanError(
                [
                    f"the tasks {', '.join(tasks)} sample with different {key.replace('_', '-')}s by protocol; give "
                    f"--{key.replace('_', '-')} or run them separately"
                ]
            )
        chosen[key] = wanted.pop() if wanted else GREEDY[key]
    return chosen


def samples_for(plan: RunPlan, task: Any) -> int:
    """Samples per subtask: --samples, else the task's default (AIME: all 30 problems), else 5."""
    if plan.samples is not None:
        return plan.samples
    defaults = task.generation_defaults() if hasattr(task, "generation_defaults") else {}
    return int(defaults.get("samples", DEFAULT_SAMPLES))


def write_run_manifest(checked: CheckedRun, setting: RunSetting) -> None:
    """The folder's manifest: the plan, each method's description, the model, the input format, the machine."""
    records.write_manifest(
        setting.out,
        {
            "started": datetime.now(UTC).isoformat(),
            "plan": {**asdict(checked.plan), "out": str(setting.out)},
            "methods": {method.label: method.describe() for method in checked.methods},
            "model": setting.model_info,
            "input_format": setting.input_format,
            "identity": run_identity(checked, setting),
            "provenance": setting.provenance,
            "parallel": setting.parallel,  # not part of the identity: any world size may resume a folder
            "tags": list(checked.plan.tags),
        },
    )


def recorded_keys(out: Path) -> set[tuple[str, str, int]]:
    """(run key, subtask, sample index) of every sample the folder already records (records.jsonl and every rank's
    shard, of any world size): the work a resumed run skips."""
    return records.done_keys(records.read_run(out))


def build_samples(checked: CheckedRun, formatter: InputFormatter) -> list[tuple[str, str, list[Any]]]:
    """(task name, subtask, samples) for every subtask of the plan (from the sample cache when built before);
    a subtask that cannot fit the context is a PlanError naming the fix."""
    plan = checked.plan
    work = []
    for name, subtasks in checked.task_list:
        for subtask in subtasks:
            try:
                task = checked.tasks[name]
                samples = cached_samples(task, subtask, plan.ctx, samples_for(plan, task), plan.seed, formatter)
            except ValueError as error:
                fix = " Use a larger --ctx." if isinstance(error, ContextTooShortError) else ""
                raise PlanError([f"{name}/{subtask} cannot be built at --ctx {plan.ctx}: {error}.{fix}"]) from error
            work.append((name, subtask, samples))
    return work


def load_engine(checked: CheckedRun, setting: RunSetting, work: list[tuple[str, str, list[Any]]], log: Any) -> Engine:
    """Loads the model, prepares every method on it and checks that one row of the longest sample fits in memory
    (larger batches are split by the engine as memory allows); a row that cannot fit is a PlanError."""
    plan, source = checked.plan, checked.source
    log(f"loading {source.name} on {checked.device} ({checked.dtype}) ...")
    if plan.tensor_parallel and distributed.ranks_from_env().parallel:  # this rank's shard only
        parallel = tensor_parallel.init_from_env(checked.device)
        model = tensor_parallel.load_model(source, checked.config, checked.dtype, plan.seed, parallel)
    else:
        model = models.load_model(source, checked.config, checked.device, checked.dtype, seed=plan.seed)
    for method in checked.methods:
        method.prepare(model)
    engine = Engine(model, setting.tokenizer)
    longest = max(s.input_tokens or plan.ctx for _, _, samples in work for s in samples)
    try:
        engine.check_fits(longest, max(s.max_new_tokens for _, _, samples in work for s in samples))
    except MemoryPlanError as error:
        raise PlanError([str(error)]) from error
    return engine


def pending_samples(
    checked: CheckedRun,
    setting: RunSetting,
    work: list[tuple[str, str, list[Any]]],
    done: set[tuple[str, str, int]],
    progress: Any,
) -> list[PendingSample]:
    """Every (task, subtask, sample) some method still needs, in task order; what is already recorded under the
    same run key counts as progress. A batch may span subtasks (each row keeps its own limit of new tokens), so a
    large --batch-size fills its forwards."""
    methods = checked.methods
    pending: list[PendingSample] = []
    for name, subtask, samples in work:
        task = checked.tasks[name]
        run_keys = {method.label: _run_key(method, name, task, checked.plan, setting) for method in methods}
        for sample in samples:
            labels = {m.label for m in methods if (run_keys[m.label], subtask, sample.index) not in done}
            progress.update(len(methods) - len(labels))
            if labels:
                pending.append(PendingSample(task, sample, run_keys, labels))
    return pending


def formatter_for(setting: RunSetting, sample: Any) -> InputFormatter:
    """The run's formatter, or one without the chat template for a sample whose task says so (LongBench's
    few-shot and code datasets are fed raw, as the official code does)."""
    if sample.meta.get("chat_template") is False and setting.formatter.use_chat_template:
        return InputFormatter(setting.tokenizer, False, setting.formatter.exercise_chars)
    return setting.formatter


def input_format_for(setting: RunSetting, sample: Any) -> dict[str, Any]:
    if sample.meta.get("chat_template") is False:
        return {**setting.input_format, "chat_template": False}
    return setting.input_format


def execute(
    checked: CheckedRun,
    setting: RunSetting,
    engine: Engine,
    batches: list[list[PendingSample]],
    writer: records.RecordWriter,
    progress: Any,
) -> list[tuple[int, float]]:
    """Generates the batches (rank_batches), every method that still needs a batch's samples sharing its
    prefill, and records each (method, sample) as soon as its batch is done. Returns the records written and
    the seconds taken, per batch."""
    plan, batch_size = checked.plan, checked.batch_size
    timed = []
    for chunk in batches:
        clock, written = time.perf_counter(), 0
        active = [m for m in checked.methods if any(m.label in row.labels for row in chunk)]
        subtasks = dict.fromkeys(row.sample.subtask for row in chunk)
        progress.set_postfix_str(f"{', '.join(subtasks)} ({', '.join(m.label for m in active)})")
        inputs = [
            formatter_for(setting, row.sample).format(row.sample.prompt, row.sample.answer_prefix) for row in chunk
        ]
        limits = [row.sample.max_new_tokens for row in chunk]
        # A sample's own seed: its sampled tokens do not depend on which batch it lands in.
        seeds = [row_seed(plan.seed, row.sample.task, row.sample.subtask, row.sample.index) for row in chunk]
        settings = GenerationSettings(max_new_tokens=max(limits), seed=plan.seed, **setting.generation)
        outputs = engine.generate(inputs, settings, active, row_limits=limits, row_seeds=seeds)
        for method in active:
            for row, formatted, output in zip(chunk, inputs, outputs[method.label], strict=True):
                if method.label not in row.labels:
                    continue
                run_key = row.run_keys[method.label]
                writer.append(
                    _sample_record(method, row.task, row.sample, formatted, output, plan, checked.source, run_key)
                    | {
                        "batch": batch_size,
                        "forward_batch": output.forward_batch,
                        "input_format": input_format_for(setting, row.sample),
                    }
                    | _timing(output, len(active), engine.last_shared.get(method.label))
                    | {"code": setting.provenance["code"]}
                    | setting.rank_fields
                )
                written += 1
                progress.update(1)
        timed.append((written, time.perf_counter() - clock))
    return timed


def summarise(checked: CheckedRun, setting: RunSetting, writer: records.RecordWriter) -> list[dict[str, Any]]:
    """The summary rows of this plan's (method, task, subtask) at its context, over every sample the folder
    records (earlier runs' included); each is appended as a summary record and returned with its folder (`out`),
    from whose records the report makes each task's own tables (report/summaries.py)."""
    rows = records.summarize(records.read_run(setting.out))
    wanted = {(m.label, n, s) for m in checked.methods for n, subs in checked.task_list for s in subs}
    rows = [r for r in rows if (r["method"], r["task"], r["subtask"]) in wanted and r["ctx"] == checked.plan.ctx]
    for row in rows:
        summary = {"provenance": setting.provenance, "model_info": setting.model_info, "out": str(setting.out)}
        writer.append({"kind": "summary", **row, **summary})
        row["out"] = summary["out"]
    return rows


def _timing(output: Any, methods: int, shared_with: str | None) -> dict[str, Any]:
    """A sample's share of its batch's time, and how its method's decode ran (engine.Generation)."""
    prefill_share = output.prefill_seconds / methods  # one prefill serves every method of the batch
    timing = {
        "elapsed_s": round((prefill_share + output.decode_seconds) / output.forward_batch, 4),
        "prefill_s": round(output.prefill_seconds, 4),
        "decode_s": round(output.decode_seconds, 4),
        "decode_steps": output.decode_steps,
        # Steps after the warm-up (and capture): what one decode step costs; decode_s holds everything.
        "decode_ms_per_step": round(output.steady_ms_per_step, 3),
        "decode_mode": output.decode_mode,
    }
    if output.eager_reason:
        timing["eager_reason"] = output.eager_reason
    if output.peak_memory_bytes is not None:
        timing["peak_memory_gib"] = round(output.peak_memory_bytes / 2**30, 2)
    if shared_with:
        timing["same_decode_as"] = shared_with
    return timing


def _tokenizer_source(plan: RunPlan, source: Any) -> tuple[Any, int | None]:
    """Where the tokenizer comes from: the model itself, or for a synthetic shape (random weights, no files) the
    `--tokenizer` the run names, whose vocabulary then sizes the model's."""
    if not models.is_synthetic(source):
        if plan.tokenizer:
            raise PlanError([f"--tokenizer is for synthetic models only; {source.name} has its own tokenizer"])
        return source, None
    if not plan.tokenizer:
        raise PlanError(
            [
                f"{source.name} is a published shape with random weights and no tokenizer; give one with "
                f"--tokenizer (an embedded model name such as {models.DEFAULT_MODEL}, or a model folder)"
            ]
        )
    tokenizer_source = models.resolve_model(plan.tokenizer)
    return tokenizer_source, len(models.load_tokenizer(tokenizer_source))


def method_key(method: Method) -> dict[str, Any]:
    """The method as asked, for run keys: its recorded config with the `path` option (e.g. auto) in place of the
    path that ran (records keep that beside it), so a folder resumed on a machine with a GPU is not redone."""
    described = method.describe()
    described["path"] = described.pop("path_option", described["path"])
    return described


def _run_key(method: Method, task_name: str, task: Any, plan: RunPlan, setting: RunSetting) -> str:
    """Everything that decides a sample's result, and the label it is reported under, hashed: equal keys mean
    the work is already done."""
    key = {
        "method": method_key(method),
        "task": task_name,
        "task_config": task.config(),
        "ctx": plan.ctx,
        "seed": plan.seed,
        "model": setting.model_info,
        "input_format": setting.input_format,
        "generation": setting.generation,
    }
    if method.label != method.name:  # only variants: plain methods keep the keys of older run folders
        key["label"] = method.label
    return records.config_hash(key)


def _sample_record(method, task, sample, formatted, output, plan, source, run_key) -> dict[str, Any]:
    return {
        "kind": "sample",
        "run_key": run_key,
        "method": method.name,
        "label": method.label,
        "method_config": method.describe(),
        "path": method.path,
        "task": task.name,
        "subtask": sample.subtask,
        "ctx": plan.ctx,
        "model": source.name,
        "model_fingerprint": source.fingerprint,
        "seed": plan.seed,
        "index": sample.index,
        "metric": sample.metric,
        "value": task.score(sample, output.text),
        "prediction": output.text,
        "references": sample.references,
        "input_tokens": len(formatted.input_ids),
        "new_tokens": output.new_tokens,
        "stop_reason": output.stop_reason,
        "exercise_tokens": output.exercise_tokens,
        # What the task knows of the sample (RULER's depth, LongBench-E's length bucket, AIME's problem and draw):
        # per-bucket and per-problem tables are built from the records.
        "sample_meta": sample.meta,
        "time": datetime.now(UTC).isoformat(),
    }
