"""RULER (NVIDIA's synthetic long-context benchmark), generated offline from installed assets."""

from lychee_bench.tasks.ruler.task import RulerTask

__all__ = ["RulerTask"]
