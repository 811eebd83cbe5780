"""Bad input: exit code 2, the closest names, the limit and the fix; nothing is loaded before the checks."""

from __future__ import annotations

from tests.conftest import cli, read_jsonl


def test_list_shows_methods_tasks_models():
    result = cli("list")
    assert result.exit_code == 0
    for word in ("full", "streaming", "ruler", "smollm2-135m"):
        assert word in result.output


def test_unknown_method_exits_2_with_suggestion():
    result = cli("run", "--method", "streamin", "--task", "ruler/vt", "--ctx", "1024")
    assert result.exit_code == 2
    assert "Did you mean 'streaming'" in result.output


def test_unknown_task_and_subtask_exit_2():
    result = cli("run", "--task", "rulr", "--ctx", "1024")
    assert result.exit_code == 2 and "'ruler'" in result.output
    result = cli("run", "--task", "ruler/niah_single1", "--ctx", "1024")
    assert result.exit_code == 2 and "niah_single_1" in result.output


def test_unknown_model_exits_2():
    result = cli("run", "--task", "ruler/vt", "--ctx", "1024", "--model", "smollm3")
    assert result.exit_code == 2 and "smollm2-135m" in result.output


def test_context_beyond_the_model_names_limit_and_fix(tmp_path):
    result = cli("run", "--task", "ruler/vt", "--ctx", "16384", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "8192" in result.output and "--rope-scaling yarn:2" in result.output
    assert not (tmp_path / "x").exists(), "nothing may be written when the plan is refused"


def test_bad_method_option_exits_2():
    result = cli("run", "--method", "streaming", "--task", "ruler/vt", "--ctx", "1024", "-o", "window=3")
    assert result.exit_code == 2 and "sink" in result.output
    result = cli("run", "--method", "streaming", "--task", "ruler/vt", "--ctx", "1024", "--budget", "100")
    assert result.exit_code == 2 and "budget" in result.output


def test_report_on_missing_path_exits_2(tmp_path):
    result = cli("report", str(tmp_path / "nothing"))
    assert result.exit_code == 2


def test_report_markdown_puts_methods_down_with_the_average_last():
    result = cli("report", "results/ruler/smollm2-135m_ctx4096_h200", "--format", "markdown")
    assert result.exit_code == 0, result.output
    header, rule, *rows = [line for line in result.output.splitlines() if line.startswith("|")]
    assert header.split("|")[1].strip() == "method" and header.rstrip(" |").endswith("average (n=325)")
    assert rule.count("---") == 15 and len(rows) == 14
    assert any(row.startswith("| `full` | 6.0 ± 1.4 |") and row.endswith("| 35.1 ± 1.5 |") for row in rows)


def test_report_on_a_bench_folder_prints_the_latency_table():
    result = cli("report", "results/latency/h200-compile")
    assert result.exit_code == 0, result.output
    assert "time/floor" in result.output and "lychee" in result.output and "(no results)" not in result.output


def test_committed_run_folders_keep_their_method_keys():
    """A run key holds the method as asked (its `path` option), not the path that ran, so the committed folders'
    lychee entries resume instead of being redone on a machine with a GPU. (`full` gained a path option with the
    static-cache engine, so its committed records, decoded by the old engine, are redone.)"""
    from lychee_bench.harness.runner import build_methods, method_key
    from lychee_bench.methods.base import RunShape

    committed = {}
    for record in read_jsonl("results/ruler/smollm2-135m_ctx4096_h200/records.jsonl.gz", kind="sample"):
        config = dict(record["method_config"])
        if "path_option" in config:  # newer records keep the path that ran beside the option asked for
            config["path"] = config.pop("path_option")
        committed.setdefault(record["label"], config)
    entries = ["lychee[granularity=block]", "lychee[roles=uniform:11;granularity=token]"]
    for device in ("cuda", "cpu"):
        shape = RunShape("llama", 30, 9, 3, 64, "bfloat16", device, 65, 4096, "smollm2-135m")
        for method in build_methods(entries, {"budget": "512"}):
            assert method.check(shape) == []
            assert method_key(method) == committed[method.label], (device, method.label)
