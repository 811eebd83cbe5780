"""The built-in methods and tasks. Third-party methods join through the `lychee_bench.methods` entry points.

A method is registered by name and "module:Class" only (imported on first use); its one-line description, and
everything else the harness needs, is declared on the class (methods/base.py).
"""

from __future__ import annotations

from lychee_bench.harness.registry import Registry

METHODS = Registry("method", entry_point_group="lychee_bench.methods")
METHODS.register("full", "lychee_bench.methods.full:FullAttention", aliases=("dense",))
METHODS.register("streaming", "lychee_bench.methods.streaming:StreamingAttention", aliases=("streamingllm",))
METHODS.register("lychee", "lychee_bench.methods.lychee:LycheeDecode", aliases=("lycheedecode",))
METHODS.register("tidal", "lychee_bench.methods.tidal:TidalDecode", aliases=("tidaldecode",))
METHODS.register("kascade", "lychee_bench.methods.kascade:Kascade")
METHODS.register("quest", "lychee_bench.methods.quest:QuestAttention")
METHODS.register("duo", "lychee_bench.methods.duo:DuoAttention", aliases=("duoattention",))

TASKS = Registry("task", entry_point_group="lychee_bench.tasks")
TASKS.register(
    "ruler",
    "lychee_bench.tasks.ruler:RulerTask",
    "RULER (NVIDIA): 13 synthetic long-context subtasks, generated offline",
)
# A task's one-line description is its class's `description` (as for methods).
TASKS.register("longbench", "lychee_bench.tasks.longbench:LongBenchTask")
TASKS.register("aime24", "lychee_bench.tasks.aime:AimeTask", aliases=("aime2024",))
