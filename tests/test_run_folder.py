"""A run folder holds one configuration's records, one writer at a time, and says so when it cannot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lychee_bench.harness import records
from lychee_bench.harness.records import FolderLock, RunFolderError, identity_differences, read_manifest
from tests.conftest import cli

IDENTITY = {
    "model": {"name": "smollm2-135m", "fingerprint": "abc", "dtype": "float32"},
    "input_format": {"chat_template": True, "decode_exercise": True},
    "sampling": {"temperature": 0.0, "top_p": 1.0},
}


def test_differences_name_each_changed_setting(tmp_path):
    records.write_manifest(tmp_path, {"plan": {}, "identity": IDENTITY})
    manifest = read_manifest(tmp_path)
    assert identity_differences(manifest, IDENTITY) == []
    changed = {**IDENTITY, "sampling": {"temperature": 1.5, "top_p": 1.0}, "model": {**IDENTITY["model"], "name": "x"}}
    assert identity_differences(manifest, changed) == [
        "model.name: 'smollm2-135m' in the folder, 'x' now",
        "sampling.temperature: 0.0 in the folder, 1.5 now",
    ]
    assert identity_differences(None, changed) == []  # a new folder
    assert identity_differences({"runs": [{"plan": {}}]}, changed) == []  # runs from before identities


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", '{"runs": 3}'])
def test_an_unreadable_manifest_is_named_and_kept(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(RunFolderError, match="manifest.json is unreadable .* pass another --out"):
        read_manifest(tmp_path)
    with pytest.raises(RunFolderError):
        records.write_manifest(tmp_path, {"plan": {}})
    assert (tmp_path / "manifest.json").read_text() == text


def _lock_in_child(folder, then: str = "") -> subprocess.CompletedProcess:
    code = "import os, pathlib\nfrom lychee_bench.harness.records import FolderLock\n"
    code += f"FolderLock(pathlib.Path({str(folder)!r})).__enter__()\n{then}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_second_writer_is_refused_and_a_dead_one_releases_the_lock(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(RunFolderError, match="is being written by pid"):
            FolderLock(tmp_path).__enter__()
        other = _lock_in_child(tmp_path)
        assert other.returncode != 0 and "is being written by" in other.stderr
    # A process that takes the lock and dies without releasing it: the next writer still gets the folder.
    assert _lock_in_child(tmp_path, "os._exit(9)").returncode == 9
    with FolderLock(tmp_path) as lock:
        assert lock.handle is not None


# ---- through `lychee-bench run` (refused before the model loads) ----

RUN = ("run", "--method", "full", "--task", "ruler/vt", "--ctx", "1024", "--samples", "1", "--device", "cpu")


def test_run_refuses_an_out_that_is_a_file_or_under_one(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    result = cli(*RUN, "--out", str(afile))
    assert result.exit_code == 2 and "is a file" in result.output and afile.read_text() == "x"
    result = cli(*RUN, "--out", str(afile / "run"))
    assert result.exit_code == 2 and "cannot be created" in result.output


def test_run_refuses_a_folder_of_other_settings_and_names_them(tmp_path):
    out = tmp_path / "run"
    other = {"model": {"name": "another-model"}, "sampling": {"temperature": 1.5, "top_p": 1.0}}
    records.write_manifest(out, {"plan": {}, "identity": other})
    before = (out / "manifest.json").read_text()
    result = cli(*RUN, "--out", str(out))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "holds records made with other settings" in text
    assert "sampling.temperature: 1.5 in the folder, 0.0 now" in text
    assert "model.name: 'another-model' in the folder" in text and "Pass another --out" in text
    assert (out / "manifest.json").read_text() == before and not (out / "records.jsonl").exists()


def test_run_refuses_a_folder_another_process_writes(tmp_path):
    out = tmp_path / "run"
    with FolderLock(out):
        result = cli(*RUN, "--out", str(out))
    assert result.exit_code == 2 and "is being written by pid" in " ".join(result.output.split())
