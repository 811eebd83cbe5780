"""The sample cache: a corrupt manifest or cached file is rebuilt (with a warning), never a misleading error."""

from __future__ import annotations

import json

import pytest

from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.harness.sample_cache import cached_samples
from lychee_bench.harness.task import Sample


class CountingTask:
    """A task whose samples are cheap and whose builds are counted."""

    name = "counting"

    def __init__(self):
        self.builds = 0

    def config(self) -> dict:
        return {"version": 1}

    def build_samples(self, subtask, ctx, num_samples, seed, count_tokens, tokenizer):
        self.builds += 1
        return [Sample(self.name, subtask, i, f"p {i}", "a:", [str(i)], 4, "exact") for i in range(num_samples)]


@pytest.fixture
def cache(smol_tokenizer, tmp_path, monkeypatch):  # the tokenizer first: it comes from the real cache
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path))
    return tmp_path / "samples" / "counting"


def _get(task, smol_tokenizer):
    return cached_samples(task, "s", 100, 2, 0, InputFormatter(smol_tokenizer, use_chat_template=False))


def test_cache_hit_then_corrupt_manifest_rebuilds(cache, smol_tokenizer):
    task = CountingTask()
    first = _get(task, smol_tokenizer)
    assert _get(task, smol_tokenizer) == first and task.builds == 1  # the second call is a cache hit
    (cache / "manifest.json").write_text("{not json")
    with pytest.warns(UserWarning, match="manifest .* is unreadable"):
        assert _get(task, smol_tokenizer) == first
    assert task.builds == 2 and json.loads((cache / "manifest.json").read_text())  # rewritten, readable


def test_corrupt_cached_file_rebuilds(cache, smol_tokenizer):
    task = CountingTask()
    first = _get(task, smol_tokenizer)
    [entry] = json.loads((cache / "manifest.json").read_text()).values()
    (cache / entry["file"]).write_text('{"task": "counting"}\n')  # a line missing fields
    with pytest.warns(UserWarning, match="are unreadable"):
        assert _get(task, smol_tokenizer) == first
    assert task.builds == 2
