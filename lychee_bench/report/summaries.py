"""The tasks' own summary tables (AIME's pass@1 and per-problem table, LongBench's averages and length buckets),
beside the generic subtasks-by-methods table, for `run`, `report` (text, markdown, json) and the HTML page.

A task declares its tables with a `summary_tables(records, config)` hook on its class (harness/task.py); this
module only finds the records and the config, calls the hook and lays the tables out, so it knows no task.
Sample records are grouped by (task, ctx, model) and by the task config their run folder recorded (so runs of
another protocol never share a table). Where a task made tables for a group they replace that group's generic
table in text and HTML; JSON keeps the generic rows (which `compare` reads) and adds the tables' rows, each with
a `summary` field naming its table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lychee_bench.harness.catalog import TASKS
from lychee_bench.harness.records import config_hash, label_of
from lychee_bench.harness.tables import score_markdown, score_table
from lychee_bench.harness.task import SummaryTable, summary_hook
from lychee_bench.regress.sources import ResultsError, ResultSet, load_results

GroupKey = tuple[str, Any, str]  # (task, ctx, model)


@dataclass
class TaskBlock:
    """The tables one task made of one (task, ctx, model, task config) group of sample records."""

    task: str
    ctx: Any
    model: str
    tables: list[SummaryTable]
    sources: list[str] = field(default_factory=list)  # labels of the result sets the records came from
    problem: str = ""  # why the task made no tables, when it raised

    @property
    def key(self) -> GroupKey:
        return (self.task, self.ctx, self.model)

    @property
    def heading(self) -> str:
        return f"{self.task} · ctx {self.ctx} · {self.model}"


def task_config(manifest: Mapping[str, Any] | None, task: str) -> dict[str, Any]:
    """The task's config as the run folder's manifest recorded it (the latest run that names it), else {}."""
    for run in reversed((manifest or {}).get("runs", [])):
        config = ((run or {}).get("identity") or {}).get("tasks", {}).get(task) if isinstance(run, dict) else None
        if isinstance(config, dict):
            return config
    return {}


def task_blocks(sets: Iterable[ResultSet], keep: Callable[[dict[str, Any]], bool] | None = None) -> list[TaskBlock]:
    """Every group of sample records whose task has a summary hook, with the tables it made."""
    groups: dict[tuple, tuple[dict[str, Any], list[dict[str, Any]], list[str]]] = {}
    hooks: dict[str, Any] = {}
    for result_set in sets:
        if result_set.kind != "run":
            continue
        for record in result_set.samples:
            if keep is not None and not keep(record):
                continue
            task = str(record.get("task"))
            if task not in hooks:
                hooks[task] = _hook(task)
            if hooks[task] is None:
                continue
            config = task_config(result_set.manifest, task)
            key = (task, record.get("ctx"), str(record.get("model")), config_hash(config))
            _, members, sources = groups.setdefault(key, (config, [], []))
            members.append(record)
            if result_set.label not in sources:
                sources.append(result_set.label)
    blocks = []
    for (task, ctx, model, _), (config, members, sources) in sorted(groups.items(), key=lambda kv: str(kv[0])):
        try:
            tables = hooks[task](members, config)
            problem = ""
        except (ValueError, KeyError, TypeError) as error:
            tables, problem = [], f"{task} · ctx {ctx} · {model}: no {task} tables ({error})"
        blocks.append(TaskBlock(task, ctx, model, list(tables), sources, problem))
    return blocks


def _hook(task: str) -> Any:
    if task not in TASKS:  # e.g. the latency sweep's records, or a plugin that is not installed here
        return None
    try:
        return summary_hook(TASKS.get(task))
    except Exception:  # a broken plugin must not stop a report of the other tasks
        return None


def blocks_of(path: Path) -> list[TaskBlock]:
    """The task tables of every run folder under `path` (none when it holds no readable run)."""
    try:
        return task_blocks(load_results(path))
    except ResultsError:
        return []


def covered(blocks: Iterable[TaskBlock]) -> set[GroupKey]:
    """(task, ctx, model) groups whose tables replace the generic table: every block of the group made some."""
    blocks = list(blocks)
    made = {b.key for b in blocks if b.tables}
    return made - {b.key for b in blocks if not b.tables}


def table_text(table: SummaryTable, heading: str = "") -> str:
    """Plain text: the first column (what a row is) left-aligned, the numbers right-aligned, notes under it."""
    lines = [table.columns, *([str(cell) for cell in line] for line in table.cells)]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(table.columns))]
    body = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    title = f"{heading} · {table.title}" if heading else table.title
    return "\n".join([title, *body, *(f"  {note}" for note in table.notes)])


def table_markdown(table: SummaryTable, heading: str = "") -> str:
    title = f"{heading} · {table.title}" if heading else table.title
    lines = [f"**{title}**", "", "| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in table.cells]
    if table.notes:
        lines += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(lines)


def score_text(rows: list[dict[str, Any]], blocks: list[TaskBlock], markdown: bool = False) -> str:
    """The generic table of the rows no task table covers, then each task's tables; averages as before."""
    from lychee_bench.harness.records import average_rows

    skip = covered(blocks)
    plain = [r for r in rows if (r.get("task"), r.get("ctx"), r.get("model")) not in skip]
    parts = []
    if plain or not blocks:
        render = score_markdown if markdown else score_table
        parts.append(render(plain + average_rows(plain)))
    for block in blocks:
        if block.problem:
            parts.append(f"note: {block.problem}")
        for table in block.tables:
            parts.append((table_markdown if markdown else table_text)(table, block.heading))
    return "\n\n".join(parts)


def json_rows(blocks: Iterable[TaskBlock]) -> list[dict[str, Any]]:
    """The tables' rows for `report --format json`: task, ctx, model and the table's name filled in, NaN as None."""
    found = []
    for block in blocks:
        for table in block.tables:
            for row in table.rows:
                full = {"summary": table.name, "task": block.task, "ctx": block.ctx, "model": block.model, **row}
                found.append({key: _clean(value) for key, value in full.items()})
    return found


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_summary(rows: list[dict[str, Any]]) -> str:
    """What `run` prints: the scores of this run's (method, task, subtask, ctx), each task's own tables included.
    The rows name their run folder (`out`), whose records the tables are made from."""
    wanted = {(r.get("method"), r.get("task"), r.get("subtask"), r.get("ctx")) for r in rows}
    folders = sorted({str(r["out"]) for r in rows if r.get("out")})
    sets: list[ResultSet] = []
    for folder in folders:
        try:
            sets += load_results(Path(folder), first_label=len(sets) + 1)
        except ResultsError:
            continue

    def keep(record: dict[str, Any]) -> bool:
        return (label_of(record), record.get("task"), record.get("subtask"), record.get("ctx")) in wanted

    return score_text(rows, task_blocks(sets, keep))
