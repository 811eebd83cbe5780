"""LongBench v1 (THUDM's bilingual long-context benchmark) from the official data files, scored as eval.py does."""

from lychee_bench.tasks.longbench.task import LongBenchTask

__all__ = ["LongBenchTask"]
