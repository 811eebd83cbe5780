"""Several configurations of one method in one run: `--method "full,lychee[roles=...],lychee[...]"`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lychee_bench.cli import app
from lychee_bench.harness.records import label_of, summarize
from lychee_bench.harness.runner import (
    PlanError,
    RunPlan,
    build_methods,
    default_out,
    parse_method_entry,
    split_methods,
)
from tests.conftest import tiny_model

runner = CliRunner()

# Tiny llama: 3 layers x 2 KV heads; uniform:2 = layer 0's heads only, every later head sparse. Token granularity
# is lychee's default; block is asked for.
BLOCK = "lychee[roles=uniform:2;granularity=block]"
TOKEN = "lychee[roles=uniform:2;sink=16;recent=32]"


def test_split_and_parse_entries():
    spec = "full, lychee[roles=uniform:11],lychee[roles=uniform:11;granularity=token],lychee[roles=path/to/r.json]"
    assert split_methods(spec) == [
        "full",
        "lychee[roles=uniform:11]",
        "lychee[roles=uniform:11;granularity=token]",
        "lychee[roles=path/to/r.json]",
    ]
    assert parse_method_entry("full") == ("full", {})
    assert parse_method_entry("lychee[]") == ("lychee", {})
    # A value is everything after the first '='; keys are read like -o keys; a trailing ';' is fine.
    name, options = parse_method_entry("lychee[ roles = a=b:c/d.json ; correction-period=32;]")
    assert name == "lychee" and options == {"roles": "a=b:c/d.json", "correction_period": "32"}
    assert list(options) == ["roles", "correction_period"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("full,lychee[roles=all", "unbalanced brackets"),
        ("full,lychee]", "a ']' closes nothing"),
        ("lychee[roles=all]x", "bad --method entry 'lychee[roles=all]x'"),
        ("lychee[[roles=all]]", "bad --method entry"),
        ("lychee[=all]", "the key before '=' is empty"),
        ("lychee[roles]", "write key=value"),
        ("lychee[roles=all,budget=64]", "separate the options inside brackets with ';'"),
        ("lychee[roles=all;roles=uniform:2]", "option 'roles' is given twice"),
        (" , ", "no method given"),
    ],
)
def test_bad_syntax_is_refused(spec, message):
    with pytest.raises(PlanError) as caught:
        for entry in split_methods(spec):
            parse_method_entry(entry)
    assert message in str(caught.value)


def test_labels_options_and_overrides():
    methods = build_methods(
        split_methods(f"full,lycheedecode[roles=uniform:2;granularity=block],{TOKEN}"), {"budget": "128"}
    )
    assert [m.label for m in methods] == ["full", BLOCK, TOKEN]
    block, token = methods[1].config, methods[2].config
    assert (block.roles, block.budget, block.granularity) == ("uniform:2", 128, "block")
    assert (token.budget, token.granularity, token.sink) == (128, "token", 16)
    # An entry's own options override the shared ones.
    [own] = build_methods(["lychee[budget=1024]"], {"budget": "512", "roles": "all"})
    assert own.config.budget == 1024 and own.config.roles == "all"


def test_unknown_and_duplicate_entries_are_refused_together():
    entries = ["full", "lychee[roles=all;budget=512]", "lychee[roles=all]", "lychee[bogus=1]", "streaming[x=1]"]
    with pytest.raises(PlanError) as caught:
        build_methods(entries, {"budget": "512"})
    reasons = caught.value.reasons
    assert len(reasons) == 3
    assert "'lychee[roles=all]' repeats 'lychee[roles=all;budget=512]'" in reasons[0]
    assert "lychee has no option bogus; its options: roles, budget" in reasons[1]
    assert "streaming has no option x; its options: sink, recent, budget" in reasons[2]
    with pytest.raises(PlanError, match="window: no method here has it"):
        build_methods(["full", "lychee"], {"window": "3", "roles": "all"})


def test_default_out_is_a_plain_file_name():
    plan = RunPlan(methods=["full", BLOCK, TOKEN], task="ruler/vt", ctx=1024)
    out = default_out(plan, build_methods(plan.methods, {}), "models/tiny")
    name = out.name
    assert name.startswith("full+lychee-") and name.endswith("_ruler-vt_1024_tiny_s42")
    assert not set(name) & set("[];=:/, ")
    again = default_out(plan, build_methods(plan.methods, {}), "models/tiny")
    assert again == out, "the same command must find the same folder (resume)"


def test_records_without_a_label_keep_the_method_name():
    old = {"kind": "sample", "run_key": "k", "method": "full", "task": "ruler", "subtask": "vt", "ctx": 1024,
           "batch": 1, "model": "m", "metric": "string_match_all", "index": 0, "value": 100.0}  # fmt: skip
    new = {**old, "run_key": "k2", "method": "lychee", "label": BLOCK, "value": 0.0}
    assert label_of(old) == "full" and label_of(new) == BLOCK
    assert {row["method"]: row["value"] for row in summarize([old, new])} == {"full": 100.0, BLOCK: 0.0}


def test_cli_refuses_duplicates_and_unknown_options_before_loading(tmp_path):
    out = tmp_path / "x"
    common = ["--task", "ruler/vt", "--ctx", "1024", "--model", str(tmp_path / "absent"), "--out", str(out)]
    result = runner.invoke(app, ["run", "--method", "full,lychee[roles=all],lychee", "--roles", "all", *common])
    assert result.exit_code == 2
    assert "'lychee' repeats 'lychee[roles=all]'" in result.output
    result = runner.invoke(app, ["run", "--method", "lychee[roles=all;granularty=token]", *common])
    assert result.exit_code == 2
    assert "lychee has no option granularty; its options: roles, budget" in result.output
    result = runner.invoke(app, ["run", "--method", "full,lychee[roles=all", *common])
    assert result.exit_code == 2 and "unbalanced brackets" in result.output
    assert not out.exists(), "nothing may be written when the plan is refused"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smol_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def _run(folder, methods: str, out, *extra: str) -> list[dict]:
    task = "ruler[sizing=tight]/vt"  # NVIDIA's sizing needs more than 768 tokens for vt's smallest haystack
    args = ["run", "--model", str(folder), "--method", methods, *extra, "--task", task, "--ctx", "768"]
    result = runner.invoke(app, [*args, "--samples", "1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = (out / "records.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "sample"]


def test_variants_share_a_run_and_resume(tiny_folder, tmp_path):
    alone = _run(tiny_folder, "full", tmp_path / "alone", "--decode-exercise")  # as with lychee beside it
    out = tmp_path / "variants"
    samples = _run(tiny_folder, f"full,{BLOCK},{TOKEN}", out, "--budget", "128")
    by_label = {}
    for record in samples:
        by_label.setdefault(record["label"], []).append(record)
    assert set(by_label) == {"full", BLOCK, TOKEN} and all(len(v) == 1 for v in by_label.values())
    assert {r["method"] for r in by_label[TOKEN]} == {"lychee"}
    assert by_label[TOKEN][0]["method_config"]["granularity"] == "token"
    assert by_label[BLOCK][0]["method_config"]["granularity"] == "block"
    assert by_label[BLOCK][0]["run_key"] != by_label[TOKEN][0]["run_key"]
    # Full attention decodes the same tokens with or without variants beside it (the prefill is shared).
    assert [(r["prediction"], r["new_tokens"]) for r in by_label["full"]] == [
        (r["prediction"], r["new_tokens"]) for r in alone
    ]
    assert by_label["full"][0]["run_key"] == alone[0]["run_key"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["runs"][-1]["methods"]) == ["full", BLOCK, TOKEN]

    # The same command again: every (label, sample) is done, nothing is rerun; a new variant runs alone.
    assert len(_run(tiny_folder, f"full,{BLOCK},{TOKEN}", out, "--budget", "128")) == 3
    added = "lychee[roles=all;granularity=block]"
    grown = _run(tiny_folder, f"full,{BLOCK},{TOKEN},{added}", out, "--budget", "128")
    assert [r["label"] for r in grown[3:]] == [added]

    report = runner.invoke(app, ["report", str(out), "--format", "json"])
    assert report.exit_code == 0, report.output
    rows = {r["method"]: r for r in json.loads(report.output)}
    assert set(rows) == {"full", BLOCK, TOKEN, added} and all(r["samples"] == 1 for r in rows.values())
    table = runner.invoke(app, ["report", str(out)])
    assert BLOCK in table.output and TOKEN in table.output
    compared = runner.invoke(app, ["compare", str(out), str(out), "--format", "json"])
    assert compared.exit_code == 0, compared.output
    assert {r["method"] for r in json.loads(compared.output)["rows"]} == set(rows)


def test_batches_span_subtasks_and_keep_each_rows_limit(tiny_folder, tmp_path):
    """A batch larger than a subtask takes rows of the next one; each row stops at its own subtask's limit of new
    tokens, so the records equal those of a run one sample at a time."""

    def run(batch: int) -> dict[tuple[str, int], tuple[str, int]]:
        out = tmp_path / f"batch{batch}"
        task = "ruler[sizing=tight]/vt,ruler[sizing=tight]/niah_single_1"  # vt's NVIDIA sizing needs > 768 tokens
        args = ["run", "--model", str(tiny_folder), "--method", "full", "--task", task]
        args += ["--ctx", "768", "--samples", "2", "--device", "cpu", "--batch-size", str(batch), "--out", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        samples = [
            r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines()) if r["kind"] == "sample"
        ]
        return {(r["subtask"], r["index"]): (r["prediction"], r["new_tokens"], r["forward_batch"]) for r in samples}

    together, alone = run(3), run(1)
    assert sorted(together) == sorted(alone) and len(together) == 4
    assert together[("niah_single_1", 0)][2] == 3  # the batch took vt's two samples and this one
    assert {k: v[:2] for k, v in together.items()} == {k: v[:2] for k, v in alone.items()}
    limits = {subtask: max(v[1] for k, v in together.items() if k[0] == subtask) for subtask in ("vt", "niah_single_1")}
    assert limits["vt"] != limits["niah_single_1"], "the tiny model should run each subtask to its own limit"
