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

METHODS.register(
    "tidal",
    "lychee_bench.methods.tidal:TidalDecode",
    "TidalDecode: layer 2 and one re-selection layer pick top-k tokens, the others reuse them (SPEC §4)",
    aliases=("tidaldecode",),
)
METHODS.register(
    "kascade",
    "lychee_bench.methods.kascade:Kascade",
    "Kascade: anchor layers pick top-k by post-softmax mass, the others reuse it via a head map (SPEC §4)",
)
METHODS.register(
    "quest",
    "lychee_bench.methods.quest:QuestAttention",
    "Quest: 16-token pages ranked by a min/max key bound, top pages per query head (SPEC §4)",
)
METHODS.register(
    "duo",
    "lychee_bench.methods.duo:DuoAttention",
    "DuoAttention: retrieval heads full, streaming heads 128 sink + 256 recent (SPEC §4)",
    aliases=("duoattention",),
)

TASKS = Registry("task", entry_point_group="lychee_bench.tasks")
TASKS.register(
    "ruler",
    "lychee_bench.tasks.ruler:RulerTask",
    "RULER (NVIDIA): 13 synthetic long-context subtasks, generated offline",
)
