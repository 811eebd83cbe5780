"""The embedded model's converted folder: two processes converting at once both end with a usable folder."""

from __future__ import annotations

import pytest

from lychee_bench.harness.models import publish_folder


def _converted(folder, marker: str):
    folder.mkdir()
    (folder / "lychee_bench_source.json").write_text(marker)
    return folder


def test_first_conversion_moves_into_place(tmp_path):
    target = tmp_path / "model"
    publish_folder(_converted(tmp_path / ".staging", "mine"), target)
    assert (target / "lychee_bench_source.json").read_text() == "mine"


def test_a_conversion_finished_by_another_process_is_kept(tmp_path):
    target = _converted(tmp_path / "model", "theirs")
    (target / "config.json").write_text("{}")  # a non-empty folder: os.replace refuses to overwrite it
    publish_folder(_converted(tmp_path / ".staging", "mine"), target)
    assert (target / "lychee_bench_source.json").read_text() == "theirs"


def test_an_unfinished_folder_in_the_way_is_an_error(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "partial.bin").write_text("x")
    with pytest.raises(OSError):
        publish_folder(_converted(tmp_path / ".staging", "mine"), target)
