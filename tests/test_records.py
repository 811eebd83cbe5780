from __future__ import annotations

import json
import warnings

from lychee_bench.harness.records import (
    RecordWriter,
    average_rows,
    done_keys,
    read_records,
    summarize,
    write_manifest,
)
from tests.conftest import sample_record


def test_append_read_and_summarize(tmp_path):
    writer = RecordWriter(tmp_path)
    for i, v in enumerate([100.0, 0.0, 50.0]):
        writer.append(sample_record(i, v))
    writer.append(sample_record(0, 100.0, "cwe"))
    records = read_records(tmp_path)
    assert all(r["schema"] == 1 for r in records)
    rows = {r["subtask"]: r for r in summarize(records)}
    assert rows["vt"]["value"] == 50.0 and rows["vt"]["samples"] == 3
    assert abs(rows["vt"]["stderr"] - 28.8675) < 1e-3
    average = average_rows(list(rows.values()))
    assert average[0]["subtask"] == "average" and average[0]["value"] == 75.0


def test_corrupt_line_is_reported_with_its_number_and_the_rest_is_used(tmp_path):
    writer = RecordWriter(tmp_path)
    writer.append(sample_record(0, 100.0))
    with open(tmp_path / "records.jsonl", "a") as handle:
        handle.write("{not json\n")
    writer.append(sample_record(1, 0.0))
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_records(tmp_path, problems)
    assert len(records) == 2
    assert problems[0].line == 2 and "records.jsonl:2" in str(caught[0].message)


def test_partial_last_line_is_repaired_before_appending(tmp_path):
    writer = RecordWriter(tmp_path)
    writer.append(sample_record(0, 100.0))
    with open(tmp_path / "records.jsonl", "a") as handle:
        handle.write('{"kind": "sample", "run_key": "k1", "subt')  # a crash mid-write
    resumed = RecordWriter(tmp_path)
    resumed.append(sample_record(1, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_records(tmp_path)
    assert [r["index"] for r in records] == [0, 1]
    assert done_keys(records) == {("k1", "vt", 0), ("k1", "vt", 1)}


def test_manifest_keeps_history(tmp_path):
    write_manifest(tmp_path, {"plan": 1})
    write_manifest(tmp_path, {"plan": 2})
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["plan"] for r in data["runs"]] == [1, 2] and data["schema"] == 1


def test_compressed_records_of_a_committed_run_read_as_the_plain_file(tmp_path):
    import gzip

    from lychee_bench.harness.records import read_run
    from lychee_bench.regress.sources import load_results

    plain = tmp_path / "plain"
    writer = RecordWriter(plain)
    for index in range(3):
        writer.append(sample_record(index, float(index)))
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "records.jsonl.gz").write_bytes(gzip.compress((plain / "records.jsonl").read_bytes()))
    assert read_run(packed) == read_run(plain) and len(read_run(packed)) == 3
    assert read_records(packed) == read_records(plain)
    assert len(load_results(packed)) == 1
