"""The built-in methods and tasks. Third-party methods join through the `lychee_bench.methods` entry points."""

from __future__ import annotations

from lychee_bench.harness.registry import Registry

METHODS = Registry("method", entry_point_group="lychee_bench.methods")
METHODS.register(
    "full",
    "lychee_bench.methods.full:FullAttention",
    "dense attention over the whole cache (SDPA); the baseline",
    aliases=("dense",),
)
METHODS.register(
    "streaming",
    "lychee_bench.methods.streaming:StreamingAttention",
    "StreamingLLM: every head sees 128 sink + 256 recent tokens only",
    aliases=("streamingllm",),
)

METHODS.register(
    "lychee",
    "lychee_bench.methods.lychee:LycheeDecode",
    "LycheeDecode: retrieval heads pick top-k tokens, sparse heads reuse them (SPEC §2)",
    aliases=("lycheedecode",),
)

TASKS = Registry("task", entry_point_group="lychee_bench.tasks")
TASKS.register(
    "ruler",
    "lychee_bench.tasks.ruler:RulerTask",
    "RULER (NVIDIA): 13 synthetic long-context subtasks, generated offline",
)
