"""Bad input, as a new user types it: exit 2, a message that names the input and the fix, no traceback, and
nothing left behind. One table over the commands' inputs; each row is (arguments, words the message must hold)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lychee_bench.cli import app

SMOKE = str(Path(__file__).resolve().parents[1] / "results" / "smoke")
RUN = ["run", "--task", "ruler/vt", "--ctx", "1024", "--samples", "1", "--device", "cpu"]

CASES = [
    (["compare", "nope", SMOKE], ["nope does not exist", "run folder"]),
    (["compare", SMOKE, "nope"], ["nope does not exist"]),
    (["compare", SMOKE, "a-file.txt"], ["a-file.txt holds no result records"]),
    (["compare", SMOKE, "bad.jsonl"], ["bad.jsonl holds no result records"]),
    (["compare", SMOKE, "empty"], ["empty holds no result records"]),
    (["compare", SMOKE, SMOKE, "--tol", "x"], ["bad --tol 'x'", "NAME=NUMBER"]),
    (["compare", SMOKE, SMOKE, "--tol", "quality=abc"], ["bad --tol 'quality=abc'"]),
    (["compare", SMOKE, SMOKE, "--format", "xml"], ["--format 'xml'", "table or json"]),
    (["compare", SMOKE, SMOKE, "--z", "-1"], ["'--z'", "greater than or equal to 0"]),
    (["report", "nope"], ["nope does not exist"]),
    (["report", "a-file.txt"], ["a-file.txt holds no result records"]),
    (["report", "bad.jsonl"], ["bad.jsonl holds no result records"]),
    (["report", "empty"], ["empty holds no result records"]),
    (["report", SMOKE, "--format", "xml"], ["--format 'xml'", "table, markdown or json"]),
    (["report", SMOKE, "--html", "a-file.txt/x.html"], ["--html a-file.txt/x.html cannot be written"]),
    (["report", SMOKE, "--html", "empty"], ["--html empty cannot be written"]),
    (["plot", "nope"], ["nope does not exist"]),
    (["plot", "empty"], ["no latency records under empty", "lychee-bench bench"]),
    (["plot", SMOKE], ["no latency records"]),
    (["suite", "nope"], ["unknown suite 'nope'", "smoke"]),
    (["suite", "smoke", "--out", "a-file.txt"], ["--out a-file.txt is a file"]),
    (["suite", "smoke", "--compare", "nope"], ["baseline nope does not exist", "--update-baseline"]),
    (["suite", "smoke", "--update-baseline", "--compare", SMOKE], ["not both"]),
    (["suite", "smoke", "--tol", "quality=1"], ["only applies with --compare"]),
    (["bench", "--ctx", "0"], ["contexts must be >= 2"]),
    (["bench", "--batch", "0"], ["batches >= 1"]),
    (["bench", "--ctx", "abc"], ["--ctx and --batch take comma lists of integers", "'abc'"]),
    (["bench", "--methods", "full"], ["needs a CUDA GPU"]),
    (["list", "nope"], ["nope"]),
    ([*RUN, "--method", "nope"], ["unknown method 'nope'", "Known methods"]),
    ([*RUN, "--method", "lychee[budget=-5]"], ["lychee budget -5 must be a positive number"]),
    ([*RUN, "--method", "lychee[roles=]"], ["option roles is empty"]),
    ([*RUN, "--method", "lychee[nope=1]"], ["lychee has no option nope", "its options"]),
    ([*RUN, "--method", "lychee[roles=no-such-file.json]"], ["no-such-file.json"]),
    ([*RUN, "--method", "full", "-o", "x"], ["bad --option 'x'", "key=value"]),
    ([*RUN, "--method", "full", "--task", "nope"], ["unknown task 'nope'", "Known tasks"]),
    ([*RUN, "--method", "full", "--task", "ruler/nope"], ["unknown ruler subtask 'nope'"]),
    ([*RUN, "--method", "full", "--task", "aime24[k=2]"], ["k >= 8"]),
    ([*RUN, "--method", "full", "--task", "ruler[colour=red]"], ["ruler[colour=red]", "it takes"]),
    ([*RUN, "--method", "full", "--ctx", "0"], ["--ctx 0"]),
    ([*RUN, "--method", "full", "--model", "nope"], ["unknown model 'nope'"]),
    ([*RUN, "--method", "full", "--exercise-chars", "-5"], ["'--exercise-chars'"]),
    ([*RUN, "--method", "full", "--dtype", "nope"], ["unknown dtype 'nope'"]),
    ([*RUN, "--method", "full", "--device", "nope"], ["unknown device 'nope'"]),
    ([*RUN, "--method", "full", "--rope-scaling", "bad"], ["bad --rope-scaling 'bad'"]),
    ([*RUN, "--method", "full", "--out", "a-file.txt"], ["--out a-file.txt is a file"]),
    ([*RUN, "--method", "full", "--out", "a-file.txt/run"], ["cannot be created"]),
    (["calibrate", "--method", "nope"], ["kascade or tidal", "'nope'"]),
    (["calibrate", "--method", "kascade", "--ctx", "0"], ["--ctx 0 is too short"]),
    (["train-heads", "--gate", "nope"], ["--gate 'nope' is not a gate", "exactly one of --retrieval-heads"]),
    (["train-heads", "--retrieval-heads", "11", "--ctx-min", "500", "--ctx-max", "100"], ["need 0 < ctx-min"]),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with the inputs the cases name: a plain file, a bad records file, an empty folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file.txt").write_text("x")
    (tmp_path / "bad.jsonl").write_text("{bad\n" + json.dumps([1, 2]) + "\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_refused_cleanly(workdir, args, words):
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, f"{word!r} not in:\n{result.output}"
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, "files were left behind"
