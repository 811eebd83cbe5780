"""The smoke suite never deletes anything: it writes a fresh run folder, and rewrites only its own baseline."""

from __future__ import annotations

import json

from lychee_bench.regress import suite as suite_module
from lychee_bench.regress.suite import SMOKE, default_out, suite_command, update_baseline


def _messages():
    said: list[str] = []
    return said, said.append


def test_a_folder_holding_a_run_is_refused_and_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "records.jsonl").write_text('{"kind": "sample"}\n')
    (out / "notes.txt").write_text("my notes")
    said, echo = _messages()
    assert suite_command("smoke", out, None, False, [], 2.0, echo=echo, echo_err=echo) == 2
    assert "already holds a run" in said[-1] and "deletes nothing" in said[-1] and "--out" in said[-1]
    assert (out / "records.jsonl").read_text() == '{"kind": "sample"}\n' and (out / "notes.txt").exists()


def test_a_file_as_out_is_refused(tmp_path):
    out = tmp_path / "a-file"
    out.write_text("x")
    said, echo = _messages()
    assert suite_command("smoke", out, None, False, [], 2.0, echo=echo, echo_err=echo) == 2
    assert "is a file" in said[-1] and out.read_text() == "x"


def test_each_default_run_gets_its_own_folder():
    first = default_out("smoke")
    assert first.parent.name == "suite-smoke" and first.parent.parent.name == "runs"
    assert first.name[:8].isdigit() and first.name[8] == "-"


def test_update_baseline_refuses_a_folder_that_is_not_the_suites(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"kind": "run", "plan": {}}))
    (folder / "records.jsonl").write_text("{}\n")
    said, echo = _messages()
    assert suite_command("smoke", folder, None, True, [], 2.0, echo=echo, echo_err=echo) == 2
    assert "does not hold a `smoke` suite baseline" in said[-1]
    assert (folder / "records.jsonl").exists() and (folder / "manifest.json").exists()


def test_update_baseline_replaces_only_the_suites_own_files(tmp_path, monkeypatch):
    folder = tmp_path / "smoke"
    folder.mkdir()
    suite_run = {"kind": "lychee-bench-suite", "suite": "smoke"}  # as write_manifest keeps it: one of the runs
    (folder / "manifest.json").write_text(json.dumps({"kind": "lychee-bench-run", "runs": [{}, suite_run]}))
    (folder / "records.jsonl").write_text("old\n")
    (folder / "keep.md").write_text("mine")
    ran = []

    def fake_run(suite, out, log):  # the model run itself is covered by the smoke suite; here: the folder rules
        suite_module._check_fresh(out)  # the old run files are gone before the run starts
        ran.append(out)
        (out / "records.jsonl").write_text("new\n")
        return out

    monkeypatch.setattr(suite_module, "run_suite", fake_run)
    update_baseline(SMOKE, folder, log=lambda text: None)
    assert ran == [folder] and (folder / "records.jsonl").read_text() == "new\n"
    assert (folder / "keep.md").read_text() == "mine" and (folder / "README.md").exists()


def test_tol_without_compare_is_refused(tmp_path):
    said, echo = _messages()
    assert suite_command("smoke", tmp_path / "new", None, False, ["quality=2"], 2.0, echo=echo, echo_err=echo) == 2
    assert "--tol quality=2 only applies with --compare" in said[-1] and not (tmp_path / "new").exists()
