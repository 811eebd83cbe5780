"""How `run` builds tasks and their protocols: options in brackets, default subtasks, the sampling a task's
protocol asks for, per-task sample counts, and samples fed without the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.harness.runner import (
    PlanError,
    RunPlan,
    RunSetting,
    build_tasks,
    formatter_for,
    input_format_for,
    samples_for,
    sampling_settings,
)
from lychee_bench.harness.task import Sample


def _plan(task: str, **overrides) -> RunPlan:
    return RunPlan(methods=["full"], task=task, ctx=4096, **overrides)


def test_task_options_in_brackets_reach_the_task():
    task_list, tasks = build_tasks("aime24[k=16;max_new_tokens=512]")
    assert task_list == [("aime24", ["all"])]
    assert tasks["aime24"].generation_defaults()["k"] == 16
    assert tasks["aime24"].generation_defaults()["max_new_tokens"] == 512
    _, tasks = build_tasks("longbench[data_dir=/tmp/lb]/qasper,ruler/vt")
    assert Path(tasks["longbench"].data_dir) == Path("/tmp/lb") and set(tasks) == {"longbench", "ruler"}


def test_bad_task_options_name_what_the_task_takes():
    with pytest.raises(PlanError, match="k"):
        build_tasks("aime24[k=2]")
    with pytest.raises(PlanError, match="it takes"):
        build_tasks("ruler[colour=red]")


def test_longbench_alone_runs_its_english_and_code_datasets():
    [(name, subtasks)], _ = build_tasks("longbench")
    assert name == "longbench" and len(subtasks) == 16 and "qasper" in subtasks and "dureader" not in subtasks


def test_sampling_follows_the_task_protocol_unless_given():
    _, tasks = build_tasks("aime24")
    assert sampling_settings(_plan("aime24"), tasks) == {"temperature": 0.6, "top_p": 0.95}
    assert sampling_settings(_plan("aime24", temperature=0.0), tasks) == {"temperature": 0.0, "top_p": 0.95}
    _, ruler = build_tasks("ruler/vt")
    assert sampling_settings(_plan("ruler/vt"), ruler) == {"temperature": 0.0, "top_p": 1.0}
    _, mixed = build_tasks("aime24,ruler/vt")
    with pytest.raises(PlanError, match="--temperature"):
        sampling_settings(_plan("aime24,ruler/vt"), mixed)
    assert sampling_settings(_plan("aime24,ruler/vt", temperature=0.6, top_p=0.95), mixed)["top_p"] == 0.95


def test_samples_default_per_task():
    _, tasks = build_tasks("aime24,ruler/vt")
    assert samples_for(_plan("aime24"), tasks["aime24"]) == 30
    assert samples_for(_plan("ruler/vt"), tasks["ruler"]) == 5
    assert samples_for(_plan("aime24", samples=3), tasks["aime24"]) == 3


def test_a_sample_without_chat_template_is_formatted_raw(smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer, True)
    setting = RunSetting(smol_tokenizer, formatter, Path("x"), {}, {}, {"chat_template": True}, {})
    raw = Sample("longbench", "trec", 0, "Question: what?", "Type:", ["x"], 8, "classification", meta={})
    raw.meta["chat_template"] = False
    chat = Sample("longbench", "qasper", 0, "Question: what?", "Answer:", ["x"], 8, "qa_f1")
    assert formatter_for(setting, chat) is formatter
    plain = formatter_for(setting, raw)
    assert plain.use_chat_template is False
    assert len(plain.format(raw.prompt, raw.answer_prefix).input_ids) < len(formatter.format(raw.prompt, "").input_ids)
    assert input_format_for(setting, raw)["chat_template"] is False and input_format_for(setting, chat) == {
        "chat_template": True
    }


def test_a_sample_record_keeps_what_the_task_knows_of_the_sample():
    from types import SimpleNamespace

    from lychee_bench.harness.runner import _sample_record

    sample = Sample("aime24", "all", 9, "q", "", ["33"], 16, "exact", meta={"problem": "2024-II-4", "draw": 1})
    method = SimpleNamespace(name="full", label="full", path="reference", describe=lambda: {"name": "full"})
    task = SimpleNamespace(name="aime24", score=lambda sample, text: 100.0 * (text == "33"))
    output = SimpleNamespace(text="33", new_tokens=2, stop_reason="eos", exercise_tokens=0)
    source = SimpleNamespace(name="m", fingerprint="f")
    formatted = SimpleNamespace(input_ids=[1, 2])
    record = _sample_record(method, task, sample, formatted, output, _plan("aime24"), source, "k")
    assert record["sample_meta"] == {"problem": "2024-II-4", "draw": 1} and record["value"] == 100.0
