"""LongBench v1: official prompts and lengths, metrics against hand-worked cases (official quirks included),
middle truncation, first-line and no-chat-template datasets, samples from fixture files, the missing-data error.

Expected metric values were worked by hand and agree with THUDM/LongBench's metrics.py run with rouge 1.0.1,
fuzzywuzzy 0.18 and jieba 0.42.1 (the packages LongBench's requirements install); they are not needed here.
"""

from __future__ import annotations

import math
import sys
import zipfile
from pathlib import Path

import pytest

from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.tasks.longbench import LongBenchTask, data, metrics, prompts, segment
from lychee_bench.tasks.longbench.lengths import length_breakdown, length_bucket
from lychee_bench.tasks.longbench.rouge import rouge_l_f
from lychee_bench.tasks.longbench.task import dataset_of
from lychee_bench.tasks.longbench.truncate import truncate_middle

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"
# sha256 of the 21 templates + generation lengths as in THUDM/LongBench config/ (commit c5ea10bc).
OFFICIAL_TEMPLATES_SHA256 = "09c79d9f6b3e34c60cb065cec4ce6e62ffbed439bd88cc8aedeea85d0583b4eb"


@pytest.fixture
def task(monkeypatch) -> LongBenchTask:
    monkeypatch.delenv(segment.ZH_TOKENIZER_ENV, raising=False)
    return LongBenchTask(data_dir=FIXTURES, zh_tokenizer="char")


@pytest.fixture
def fake_jieba(monkeypatch):
    """A stand-in jieba whose cut splits on a tiny dictionary, to test the jieba path's plumbing."""
    words = ("北京", "首都", "今天", "天气", "不错")

    class FakeJieba:
        @staticmethod
        def cut(text: str, cut_all: bool = False):
            assert cut_all is False
            position = 0
            while position < len(text):
                word = next((w for w in words if text.startswith(w, position)), text[position])
                yield word
                position += len(word)

    monkeypatch.setitem(sys.modules, "jieba", FakeJieba)
    monkeypatch.setattr(segment, "jieba_version", lambda: "fake")


# --- what the benchmark defines ---------------------------------------------------------------------------------


def test_templates_and_lengths_are_the_official_ones():
    assert prompts.templates_sha256() == OFFICIAL_TEMPLATES_SHA256
    assert len(prompts.DATASETS) == 21 and set(prompts.TEMPLATES) == set(prompts.DATASETS) == set(prompts.METRIC)
    assert "asconcisely" in prompts.TEMPLATES["narrativeqa"]  # the official typo is part of the benchmark
    assert "\n\n Answer the question based on the above article" in prompts.TEMPLATES["qasper"]
    assert prompts.TEMPLATES["lcc"] == "Please complete the code given below. \n{context}Next line of code:\n"
    assert prompts.TEMPLATES["passage_count"].endswith("The final answer is: ")
    assert prompts.MAX_NEW_TOKENS["gov_report"] == 512 and prompts.MAX_NEW_TOKENS["hotpotqa"] == 32
    assert prompts.NO_CHAT_TEMPLATE == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    assert prompts.FIRST_LINE_ONLY == {"trec", "triviaqa", "samsum", "lsht"}


def test_subtasks_defaults_and_longbench_e():
    task = LongBenchTask(data_dir=FIXTURES)
    assert task.default_subtasks() == [
        "narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum",
        "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
    ]  # fmt: skip
    subtasks = task.subtasks()
    assert len(subtasks) == 21 + 13 and "qasper_e" in subtasks and "lsht_e" not in subtasks
    assert dataset_of("qasper_e") == "qasper" and dataset_of("repobench-p_e") == "repobench-p"
    with pytest.raises(ValueError, match="unknown LongBench subtask 'nq'.*narrativeqa"):
        dataset_of("nq")


# --- metrics ----------------------------------------------------------------------------------------------------


def test_qa_f1_official_normalisation():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert metrics.normalize_answer("banana an apple") == "banana apple"  # articles only as whole words
    assert metrics.normalize_answer("don't") == "dont"
    assert metrics.normalize_answer("it’s") == "it’s"  # only ASCII punctuation goes
    assert metrics.qa_f1("The Cat!", "cat") == 1.0
    assert metrics.qa_f1("a cat sat", "the cat") == pytest.approx(2 / 3)
    assert metrics.qa_f1("cat cat", "cat") == pytest.approx(2 / 3)  # multiset overlap: P = 1/2, R = 1
    assert metrics.qa_f1("the", "a") == 0.0  # both empty after normalising: 0, not SQuAD's 1
    assert metrics.qa_f1("it’s", "its") == 0.0


def test_qa_f1_zh_char_and_jieba(fake_jieba):
    assert metrics.normalize_zh_answer("《红楼梦》 A！") == "《红楼梦a"  # "《" is not in the official list
    # chars: [北 京 是 首 都] (。dropped) vs [北 京]: P = 2/5, R = 1
    assert metrics.qa_f1_zh("北京是首都。", "北京", "char") == pytest.approx(2 * 0.4 / 1.4)
    # words: [北京 是 首都] vs [北京]: P = 1/3, R = 1 (what LongBench's jieba gives too)
    assert metrics.qa_f1_zh("北京是首都。", "北京", "jieba") == pytest.approx(0.5)


def test_rouge_l_as_the_rouge_package():
    # one sentence; distinct words 5 and 5, LCS words {the, cat, on, mat}
    assert rouge_l_f("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8, abs=1e-7)
    assert rouge_l_f("a a a", "a") == pytest.approx(1.0, abs=1e-7)  # counts are of distinct words
    # sentences split on ".": LCS words {x} and {z}; R = 2/2, P = 2/3
    assert rouge_l_f("x y. z", "x z") == pytest.approx(0.8, abs=1e-7)
    # the package's backtrack picks "b" for ("a b", "b a"): union {b} over 2 distinct words each side -> 0.5
    assert rouge_l_f("b a", "a b. b") == pytest.approx(0.5, abs=1e-7)
    assert rouge_l_f("a b. b", "b a") == pytest.approx(1.0, abs=1e-7)
    assert rouge_l_f("", "a") == 0.0 and rouge_l_f("...", "a") == 0.0 and rouge_l_f("a", "") == 0.0
    assert metrics.rouge("The cat.", "the cat") == pytest.approx(0.5, abs=1e-7)  # case kept: only "cat" shared


def test_rouge_zh(fake_jieba):
    # chars: hyp distinct {今 天 气 好}, ref distinct {今 天 气 不 错}, LCS {今 天 气}: P = 3/4, R = 3/5
    assert metrics.rouge_zh("今天天气好", "今天天气不错", "char") == pytest.approx(2 / 3, abs=1e-7)
    # words (fake dictionary): [今天 天气 好] vs [今天 天气 不错]: P = R = 2/3
    assert metrics.rouge_zh("今天天气好", "今天天气不错", "jieba") == pytest.approx(2 / 3, abs=1e-7)


def test_jieba_missing_names_the_install(monkeypatch):
    monkeypatch.setattr(segment, "jieba_version", lambda: None)
    with pytest.raises(RuntimeError, match="pip install jieba==0.42.1.*LYCHEE_BENCH_LONGBENCH_ZH_TOKENIZER=char"):
        metrics.qa_f1_zh("北京", "北京", "jieba")
    with pytest.raises(ValueError, match="unknown Chinese tokenizer 'words'.*jieba, char"):
        segment.resolve_zh_tokenizer("words")


def test_classification_score():
    classes = ["Location", "Entity", "Description"]
    assert metrics.classification("Type: Entity", "Entity", classes) == 1.0
    assert metrics.classification("Entity or Location", "Entity", classes) == 0.5
    assert metrics.classification("Nothing", "Entity", classes) == 0.0
    assert metrics.classification("category", "category", ["cat", "category"]) == 1.0  # sub-string class dropped
    # the official loop removes while iterating: "a" goes, "ab" is then skipped and stays -> 1/2, not 1
    assert metrics.classification("abc", "abc", ["a", "ab", "abc"]) == 0.5


def test_count_and_retrieval_scores():
    assert metrics.count("There are 7 unique paragraphs", "7") == 1.0
    assert metrics.count("7 or 8", "7") == 0.5
    assert metrics.count("seven", "7") == 0.0
    assert metrics.retrieval("Paragraph 3", "Paragraph 3") == 1.0
    assert metrics.retrieval("Paragraph 3 or Paragraph 30", "Paragraph 3") == 0.5
    assert metrics.retrieval("no idea", "Paragraph 3") == 0.0
    assert metrics.retrieval_zh("答案是段落5", "段落5") == 1.0
    assert metrics.retrieval_zh("段落15", "段落5") == 0.0
    with pytest.raises(ValueError, match="does not match"):
        metrics.retrieval("Paragraph 3", "3")


def test_code_sim_and_fuzz_ratio():
    assert metrics.fuzz_ratio("abcd", "abce") == 75  # difflib: 2 * 3 / 8
    assert metrics.fuzz_ratio("abcdefgh", "aXXXXXXX") == 12  # 12.5 rounds half to even
    assert metrics.fuzz_ratio("abcdefgh", "abcXXXXX") == 38  # 37.5 too
    assert metrics.fuzz_ratio("", "") == 100 and metrics.fuzz_ratio("", "a") == 0
    prediction = "\n# a comment\n```python\n    x = foo(1)\nmore"
    assert metrics.code_sim(prediction, "    x = foo(1)") == 1.0  # first line without `, # or //
    assert metrics.code_sim("// only\n# comments", "x") == 0.0
    # a blank line is a line (official; lm-eval's v6 skips it): "  " against the answer, 2 * 2 / 16
    assert metrics.code_sim("  \n    x = foo(1)", "    x = foo(1)") == 0.25


def test_first_line_and_best_answer():
    assert metrics.first_line("\n\nLocation\nEntity") == "Location"
    classes = ["Location", "Entity"]
    assert metrics.score_prediction("trec", "\nEntity\nLocation", ["Entity"], classes) == 100.0
    assert metrics.score_prediction("narrativeqa", "cat\ndog", ["cat"]) == pytest.approx(100 * 2 / 3)
    assert metrics.score_prediction("triviaqa", "Paris\nLondon", ["London", "Paris"]) == 100.0
    assert metrics.score_prediction("narrativeqa", None, ["cat"]) == 0.0
    with pytest.raises(ValueError, match="unknown LongBench dataset 'nq'"):
        metrics.score_prediction("nq", "x", ["x"])
    with pytest.raises(ValueError, match="all_classes"):
        metrics.score_prediction("trec", "x", ["x"], None)


def test_length_buckets():
    assert [length_bucket(n) for n in (0, 3999, 4000, 7999, 8000)] == ["0-4k", "0-4k", "4-8k", "4-8k", "8k+"]
    breakdown = length_breakdown([(100, 50.0), (200, 100.0), (9000, 0.0)])
    assert breakdown["0-4k"] == {"value": 75.0, "samples": 2}
    assert math.isnan(breakdown["4-8k"]["value"]) and breakdown["8k+"]["samples"] == 1


# --- truncation and samples -------------------------------------------------------------------------------------


def test_truncate_middle_keeps_both_ends(smol_tokenizer):
    prompt = "START " + " ".join(f"word{i}" for i in range(2000)) + " END"

    def count(text):
        return len(smol_tokenizer(text, add_special_tokens=False).input_ids) + 7  # 7 tokens of "template"

    cut, info = truncate_middle(prompt, 300, count, smol_tokenizer)
    assert info["truncated"] and info["prompt_tokens"] == count(prompt) > 300
    assert 290 <= count(cut) <= 300
    assert cut.startswith("START word0 word1") and cut.endswith("word1999 END") and "word1000 " not in cut
    ids = smol_tokenizer(prompt, add_special_tokens=False).input_ids
    half = (300 - 7) // 2
    assert cut == smol_tokenizer.decode(ids[:half]) + smol_tokenizer.decode(ids[-half:])
    assert truncate_middle("short", 300, count, smol_tokenizer) == ("short", {"truncated": False, "prompt_tokens": 8})
    with pytest.raises(ValueError, match="raise --ctx"):
        truncate_middle(prompt, 8, count, smol_tokenizer)


def test_samples_from_fixtures(task, smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    samples = task.build_samples("narrativeqa", 32768, 2, 0, formatter.count_tokens, smol_tokenizer)
    assert [s.meta["id"] for s in samples] == ["nqa-fixture-1", "nqa-fixture-2"]  # the first N, in order
    first = samples[0]
    example = data.read_jsonl(FIXTURES / "narrativeqa.jsonl", 1)[0]
    assert first.prompt == prompts.TEMPLATES["narrativeqa"].format(context=example["context"], input=example["input"])
    assert first.answer_prefix == "" and first.references == ["Maren", "the keeper Maren"]
    assert first.max_new_tokens == 128 and first.metric == "qa_f1" and "chat_template" not in first.meta
    assert first.input_tokens == formatter.count_tokens(first.prompt, "") and not first.meta["truncated"]
    assert task.score(first, "Maren.") == 100.0


def test_samples_are_cut_to_the_context(task, smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    full = task.build_samples("narrativeqa", 32768, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
    ctx = 1024
    cut = task.build_samples("narrativeqa", ctx, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
    assert full.input_tokens > ctx and cut.meta["truncated"]
    assert ctx - 128 - 10 <= cut.input_tokens <= ctx - 128
    assert cut.prompt.startswith("You are given a story") and "BEGINNING-MARKER" in cut.prompt
    assert cut.prompt.endswith("Question: Who keeps the lighthouse?\n\nAnswer:") and "ENDING-MARKER" in cut.prompt
    assert "Chapter 60." not in cut.prompt


def test_no_chat_template_datasets_are_marked(task, smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    for subtask in ("trec", "samsum", "lcc", "lsht"):
        sample = task.build_samples(subtask, 4096, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
        assert sample.meta["chat_template"] is False, subtask
    trec = task.build_samples("trec", 4096, 2, 0, formatter.count_tokens, smol_tokenizer)
    assert trec[0].prompt.endswith("Type: Expression abbreviated\nQuestion: Who wrote Hamlet?\nType:")
    assert trec[0].metric == "classification" and trec[0].max_new_tokens == 64
    assert task.score(trec[0], "Individual\nQuestion: Where?\nType: Location") == 100.0  # first line only
    assert task.score(trec[1], "Distance, linear measure") == 100.0
    samsum = task.build_samples("samsum", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
    assert samsum.meta["stop_strings"] == ["\n"] and samsum.meta["min_new_tokens"] == 1
    chat = task.build_samples("passage_count", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
    assert "chat_template" not in chat.meta and task.score(chat, "2") == 100.0


def test_every_metric_family_scores_from_fixtures(task, smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    expected = {
        "gov_report": ("The agency found three programs over cost.", 100.0),
        "passage_retrieval_en": ("Paragraph 1", 100.0),
        "passage_retrieval_zh": ("段落1", 100.0),
        "lcc": ("    print(total)\n", 100.0),
        "lsht": ("财经", 100.0),
        "multifieldqa_zh": ("北京", 100.0),
        "dureader": ("今天天气不错", 100.0),
    }
    for subtask, (prediction, score) in expected.items():
        sample = task.build_samples(subtask, 4096, 1, 0, formatter.count_tokens, smol_tokenizer)[0]
        assert sample.metric == prompts.METRIC[subtask]
        assert task.score(sample, prediction) == pytest.approx(score), subtask
        assert task.score(sample, "zzz") < score, subtask


def test_longbench_e_samples_carry_length_buckets(task, smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    samples = task.build_samples("qasper_e", 4096, 5, 0, formatter.count_tokens, smol_tokenizer)
    assert [s.meta["length_bucket"] for s in samples] == ["0-4k", "4-8k", "8k+"]  # all 3 when 5 are asked
    assert all(s.meta["dataset"] == "qasper" and s.max_new_tokens == 128 for s in samples)
    scores = [
        (s.meta["length"], task.score(s, answer)) for s, answer in zip(samples, ["10k", "no", "English"], strict=True)
    ]
    assert {k: v["value"] for k, v in length_breakdown(scores).items()} == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}


def test_chinese_subtask_without_jieba_fails_before_generating(monkeypatch, smol_tokenizer):
    monkeypatch.setattr(segment, "jieba_version", lambda: None)
    task = LongBenchTask(data_dir=FIXTURES, zh_tokenizer="jieba")
    formatter = InputFormatter(smol_tokenizer)
    with pytest.raises(RuntimeError, match="pip install jieba"):
        task.build_samples("dureader", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)
    assert task.build_samples("lsht", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)  # no segmentation


# --- data source --------------------------------------------------------------------------------------------------


def test_missing_data_says_what_to_fetch_and_where(tmp_path, monkeypatch, smol_tokenizer):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed, whatever this machine has
    monkeypatch.setattr(data, "_datasets_version", lambda: None)
    task = LongBenchTask()
    assert task.data_dir is None
    (reason,) = task.check_assets()
    for needed in ("data.zip", data.DATA_ZIP_URL, "LYCHEE_BENCH_LONGBENCH_DIR", "narrativeqa.jsonl", "_id", "datasets"):
        assert needed in reason
    formatter = InputFormatter(smol_tokenizer)
    with pytest.raises(data.LongBenchDataError, match="data.zip.*LYCHEE_BENCH_LONGBENCH_DIR=DIR.*qasper.jsonl"):
        task.build_samples("qasper", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(empty))
    task = LongBenchTask()
    assert task.data_dir == empty
    assert "lacks narrativeqa.jsonl" in task.check_assets()[0]
    assert "does not exist" in LongBenchTask(data_dir=tmp_path / "nope").check_assets()[0]
    with pytest.raises(data.LongBenchDataError, match=r"hotpotqa.jsonl is not in the LongBench .*data\.zip"):
        LongBenchTask(data_dir=FIXTURES).build_samples("hotpotqa", 4096, 1, 0, formatter.count_tokens, smol_tokenizer)


def test_data_folder_forms_and_bad_files(tmp_path):
    nested = tmp_path / "data"
    nested.mkdir()
    (nested / "trec.jsonl").write_text((FIXTURES / "trec.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert len(data.load_examples("trec", tmp_path)) == 2  # the zip's data/ folder, one level down
    (tmp_path / "qasper.jsonl").write_text('{"input": "q", "context": "c"}\n', encoding="utf-8")
    with pytest.raises(data.LongBenchDataError, match="qasper.jsonl:1 lacks the field.*answers"):
        data.load_examples("qasper", tmp_path)


def test_config_records_templates_and_data(task):
    config = task.config()
    assert config["templates_sha256"] == OFFICIAL_TEMPLATES_SHA256 and config["zh_tokenizer"] == "char"
    assert set(config["data"]["files_sha256"]) >= {"narrativeqa", "trec", "qasper_e"}
    assert "dir" not in config["data"]  # moving the folder keeps run keys


# --- data through `datasets` (the hub route) ----------------------------------------------------------------------


def official_features():
    """The features THUDM/LongBench's loading script declares for every config."""
    from datasets import Features, Sequence, Value

    text = Value("string")
    return Features(
        {
            "input": text,
            "context": text,
            "answers": Sequence(text),
            "length": Value("int32"),
            "dataset": text,
            "language": text,
            "all_classes": Sequence(text),
            "_id": text,
        }
    )


def fixture_dataset(config: str):
    """A `datasets.Dataset` of a fixture file, typed as the hub dataset is."""
    from datasets import Dataset

    return Dataset.from_list(data.read_jsonl(FIXTURES / f"{config}.jsonl"), features=official_features())


@pytest.mark.parametrize("config", ["trec", "narrativeqa", "qasper_e"])  # class lists, a null all_classes, -E
def test_hub_rows_are_the_jsonl_lines(config):
    lines = data.read_jsonl(FIXTURES / f"{config}.jsonl")
    assert data.examples_from_dataset(fixture_dataset(config), config) == lines
    assert data.examples_from_dataset(fixture_dataset(config), config, limit=1) == lines[:1]


def test_hub_dataset_of_another_schema_is_refused():
    """lm-eval's Xnhyacinth/LongBench renames input to question (and pre-templates context): not the official rows."""
    renamed = fixture_dataset("trec").rename_column("input", "question")
    with pytest.raises(data.LongBenchDataError, match=r"no column\(s\) input .*question.*data\.zip"):
        data.examples_from_dataset(renamed, "trec")


def test_hub_route_reads_load_dataset_or_the_repository_zip(tmp_path, monkeypatch, smol_tokenizer):
    """No folder: `datasets.load_dataset(THUDM/LongBench, config, split=test)`; where `datasets` refuses the loading
    script (4.x and later), the config's file out of the repository's data.zip. Only the network is stood in for."""
    import datasets
    import huggingface_hub

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path / "cache"))
    asked = []

    def hub(path, name, split, **kwargs):
        asked.append((path, name, split))
        return fixture_dataset(name)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    task = LongBenchTask()
    assert task.data_dir is None and task.check_assets() == []
    samples = task.build_samples("trec", 4096, 2, 0, InputFormatter(smol_tokenizer).count_tokens, smol_tokenizer)
    assert asked == [(data.HUB_DATASET, "trec", "test")]
    assert [s.meta["id"] for s in samples] == ["trec-fixture-1", "trec-fixture-2"]
    assert task.config()["data"]["hub"] == data.HUB_DATASET

    def refuses_scripts(path, name, split, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found LongBench.py")

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for config in ("trec", "qasper_e"):
            bundle.write(FIXTURES / f"{config}.jsonl", f"data/{config}.jsonl")
    downloads = []

    def download(repo_id, filename, repo_type):
        downloads.append((repo_id, filename, repo_type))
        return str(archive)

    monkeypatch.setattr(datasets, "load_dataset", refuses_scripts)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert data.load_examples("qasper_e", None) == data.read_jsonl(FIXTURES / "qasper_e.jsonl")
    assert data.load_examples("trec", None, limit=1) == data.read_jsonl(FIXTURES / "trec.jsonl", 1)
    assert downloads[0] == (data.HUB_DATASET, data.HUB_ARCHIVE, "dataset")
    with pytest.raises(data.LongBenchDataError, match=r"data\.zip holds no hotpotqa\.jsonl.*LONGBENCH_DIR"):
        data.load_examples("hotpotqa", None)


def test_offline_hub_error_says_what_to_download_and_where(tmp_path, monkeypatch):
    """The real `datasets` call with the hub unreachable (HF offline mode: what this machine is, without the wait)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.LongBenchDataError) as raised:
        data.load_examples("qasper", LongBenchTask().data_dir, 1)
    message = str(raised.value)
    for needed in (data.HUB_DATASET, "qasper", data.DATA_ZIP_URL, "LYCHEE_BENCH_LONGBENCH_DIR=DIR", "qasper.jsonl"):
        assert needed in message
    assert "data_dir=DIR" in message
