"""lychee-bench as an lm-eval model (integrations/lm_eval_model.py), against lm-eval's own `hf` model (HFLM).

A tiny random Llama with the default model's real tokenizer, saved as a model folder, runs on the CPU. With
method=full the generations must be the `hf` model's strings, and the log-likelihoods its values; lm-eval's own
evaluator runs two local tasks (no hub) through both. A sparse method generates; bad arguments are refused before
any weights load.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from lychee_bench.integrations import lm_eval_model
from lychee_bench.integrations.lm_eval_model import (
    LycheeBenchArgumentError,
    LycheeBenchLM,
    exercise_tokens,
    generation_settings,
)
from tests.conftest import cli, tiny_config

ROOT = Path(__file__).parents[1]
PROMPTS = [
    "The capital of France is",
    "Question: What is 2+2?\nAnswer:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "A",
]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, smol_tokenizer) -> str:
    """A 2-layer random Llama (GQA 6/2, head dim 16) with the default model's tokenizer, as a model folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=len(smol_tokenizer), layers=2)
    config.bos_token_id, config.eos_token_id = smol_tokenizer.bos_token_id, smol_tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():  # peaky attention, so a wrong key set would change the output
        for name, param in model.named_parameters():
            if "proj" in name and param.dim() == 2:
                param.mul_(4.0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hf(model_folder) -> HFLM:
    return HFLM(pretrained=model_folder, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def full(model_folder) -> LycheeBenchLM:
    return LycheeBenchLM(pretrained=model_folder, method="full", device="cpu", batch_size=4)


def generation_requests(stop: str | None = None) -> list[Instance]:
    kinds = [
        {"until": ["\n\n"], "max_gen_toks": 10, "do_sample": False},
        {"until": [stop] if stop else [], "max_gen_toks": 12},
        {"until": [], "max_gen_toks": 5, "temperature": 0.0},
    ]
    return [
        Instance("generate_until", {}, (prompt, dict(kinds[i % len(kinds)])), i) for i, prompt in enumerate(PROMPTS)
    ]


def test_full_generates_the_hf_models_strings(full, hf):
    requests = generation_requests()
    ours = full.generate_until(requests)
    assert ours == hf.generate_until(requests)
    assert all(isinstance(text, str) for text in ours) and all(ours)
    # A stop string the model does emit: both cut the text before its first occurrence.
    stop = " " + ours[1].split()[2]
    stopped = full.generate_until(generation_requests(stop))
    assert stopped == hf.generate_until(generation_requests(stop))
    assert stop not in stopped[1] and ours[1].startswith(stopped[1]) and len(stopped[1]) < len(ours[1])
    info = full.get_model_info()["lychee_bench"]
    assert info["method"]["name"] == "full" and info["exercise_chars"] == 0
    assert info["loglikelihood"].startswith("dense") and sum(info["decode_modes"].values()) == 2 * len(PROMPTS)


def test_loglikelihoods_equal_the_hf_models(full, hf):
    pairs = [("The capital of France is", " Paris"), ("2+2=", "4"), ("", "hello world"), ("Answer: ", "yes")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    ours, theirs = full.loglikelihood(requests), hf.loglikelihood(requests)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert [value for value, _ in ours] == pytest.approx([value for value, _ in theirs], rel=1e-6, abs=1e-6)
    rolling = [Instance("loglikelihood_rolling", {}, ("The quick brown fox jumps over the lazy dog. " * 3,), 0)]
    assert full.loglikelihood_rolling(rolling) == pytest.approx(hf.loglikelihood_rolling(rolling), rel=1e-6)
    chat = [{"role": "user", "content": "Hi"}]
    assert full.apply_chat_template(chat) == hf.apply_chat_template(chat)


def write_local_tasks(folder: Path) -> list[str]:
    """Two lm-eval tasks over a local JSON-lines file (lm-eval reads it through `datasets`' json builder)."""
    docs = [
        {"question": "Q: What is the capital of France?\nA:", "answer": " Paris", "choices": [" Paris", " Rome"]},
        {"question": "Q: How many legs has a cat?\nA:", "answer": " four", "choices": [" three", " four"]},
        {"question": "Q: Is water wet?\nA:", "answer": " yes", "choices": [" yes", " no"]},
    ]
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "lychee_local_gen.yaml").write_text(
        "task: lychee_local_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    (folder / "lychee_local_mc.yaml").write_text(
        "task: lychee_local_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{choices.index(answer)}}'\nmetric_list:\n  - metric: acc\n"
    )
    return ["lychee_local_gen", "lychee_local_mc"]


@pytest.mark.slow
def test_lm_evals_evaluator_gives_the_hf_models_responses(full, hf, tmp_path):
    """lm-eval's own simple_evaluate, one generative and one log-likelihood task, on local data."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = write_local_tasks(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    runs = [simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True) for lm in (full, hf)]
    ours, theirs = ({t: [s["resps"] for s in run["samples"][t]] for t in tasks} for run in runs)
    assert ours == theirs and len(ours["lychee_local_gen"]) == 3
    assert runs[0]["results"] == runs[1]["results"]
    assert runs[0]["config"]["lychee_bench"]["loglikelihood"].startswith("dense")


@pytest.mark.slow
def test_a_sparse_method_generates_with_its_decode_path(model_folder):
    lm = LycheeBenchLM(pretrained=model_folder, method="streaming[sink=4;recent=8]", device="cpu", batch_size=2)
    texts = lm.generate_until(generation_requests()[:3])
    assert all(isinstance(text, str) for text in texts) and any(texts)
    info = lm.get_model_info()["lychee_bench"]
    assert info["method"]["name"] == "streaming" and info["method"]["recent"] == 8
    assert info["exercise_chars"] == 100  # decode-only methods decode the input's tail, as `run` does
    lychee = LycheeBenchLM(
        pretrained=model_folder, method="lychee", roles="uniform:2", budget=64, granularity="block", device="cpu"
    )
    assert lychee.lychee_method.config.budget == 64
    assert isinstance(lychee.generate_until(generation_requests()[:1])[0], str)


@pytest.mark.slow
def test_sampled_repeats_differ_and_reproduce(model_folder):
    sampled = {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0, "top_p": 0.9}
    requests = [Instance("generate_until", {}, ("Tell me a story:", dict(sampled)), i) for i in range(2)]
    first = LycheeBenchLM(pretrained=model_folder, method="full", device="cpu", seed=3).generate_until(requests)
    again = LycheeBenchLM(pretrained=model_folder, method="full", device="cpu", seed=3).generate_until(requests)
    assert first == again and first[0] != first[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"method": "nosuch"}, "nosuch"),
        ({"method": "lychee", "budget": 0}, "budget 0 must be a positive"),
        ({"method": "full", "budget": 64}, "budget: neither an option of method full"),
        ({"method": "lychee", "frobnicate": 1}, "frobnicate: neither an option of method lychee"),
        ({"method": "full", "peft": "adapter"}, "peft: lychee-bench decodes one unmodified"),
        ({"method": "full", "device": "cuda:0"}, "no CUDA GPU is visible; pass --device cpu"),
        ({"method": "full", "rope_scaling": "yarn:0.5"}, "bad --rope-scaling 'yarn:0.5'"),
        ({"method": "full", "exercise_chars": -1}, "exercise_chars=-1"),
    ],
)
def test_bad_model_args_are_refused_before_loading(model_folder, monkeypatch, args, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(HFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(LycheeBenchArgumentError, match=expected.replace("(", r"\(").replace("+", r"\+")):
        LycheeBenchLM(pretrained=model_folder, **args)


def test_every_bad_argument_is_reported_at_once(monkeypatch):
    monkeypatch.setattr(HFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(LycheeBenchArgumentError) as raised:
        LycheeBenchLM(method="lychee", frobnicate=1, seed="x", exercise_chars=-2)
    assert len(raised.value.reasons) == 4
    assert "pretrained=None: give a lychee-bench model name (smollm2-135m" in str(raised.value)
    with pytest.raises(LycheeBenchArgumentError, match="unknown model 'no-such-model'"):
        LycheeBenchLM(pretrained="no-such-model", device="cpu")


def test_generation_kwargs_as_hf_generate_reads_them(model_folder, full):
    model = full.model
    assert generation_settings({"do_sample": False, "temperature": 0.0}, 7, model).temperature == 0.0
    greedy = generation_settings({"do_sample": False, "temperature": 0.0, "top_k": 5}, 7, model)
    assert (greedy.max_new_tokens, greedy.temperature) == (7, 0.0)  # top_k means nothing without sampling
    sampled = generation_settings({"do_sample": True, "temperature": 0.6, "top_p": 0.95}, 9, model)
    assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens) == (0.6, 0.95, 9)
    assert generation_settings({"do_sample": True, "temperature": 0.6}, 9, model).top_p == 1.0  # the model's default
    for kwargs, message in [
        ({"num_beams": 4}, "cannot honour the generation argument.*num_beams"),
        ({"do_sample": True, "temperature": 0.0}, "needs a temperature > 0"),
        ({"do_sample": True, "temperature": 0.7, "top_k": 50}, "no top-k"),
        ({"do_sample": True, "temperature": 0.7, "top_p": 1.5}, r"top_p=1.5: must be in \(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            generation_settings(kwargs, 9, model)


def test_exercise_tokens_cover_the_last_characters(smol_tokenizer):
    ids = smol_tokenizer("The quick brown fox jumps over the lazy dog near the riverbank.").input_ids
    count = exercise_tokens(smol_tokenizer, ids, 20)
    assert len(smol_tokenizer.decode(ids[-count:])) >= 20 > len(smol_tokenizer.decode(ids[-count + 1 :]))
    assert exercise_tokens(smol_tokenizer, ids, 0) == 0
    assert exercise_tokens(smol_tokenizer, ids, 10_000) == len(ids) - 1  # one token always prefilled


def test_registered_with_lm_eval_and_declared_as_a_plugin():
    assert get_model("lychee-bench") is LycheeBenchLM
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["lm_eval.models"]["lychee-bench"]
    module, _, name = target.partition(":")
    assert (module, name) == (lm_eval_model.__name__, "LycheeBenchLM")
    dependencies = " ".join(project["dependencies"])
    assert "lm-eval" in dependencies and "datasets" in dependencies


@pytest.mark.slow
def test_lm_eval_command_line_with_the_model(model_folder, tmp_path, monkeypatch, capsys):
    """`lychee-bench lm-eval ...` / `python -m lychee_bench.integrations.lm_eval_cli ...`: lm-eval's own CLI."""
    from lychee_bench.integrations.lm_eval_cli import main

    tasks = write_local_tasks(tmp_path)
    out = tmp_path / "out"
    main(
        [
            "--model", "lychee-bench",
            "--model_args", f"pretrained={model_folder},method=lychee,roles=uniform:2,budget=64,granularity=token,"
            "sink=4,recent=8",
            "--tasks", ",".join(tasks),
            "--include_path", str(tmp_path),
            "--device", "cpu",
            "--output_path", str(out),
        ]
    )  # fmt: skip
    (result,) = out.rglob("results_*.json")
    saved = json.loads(result.read_text())
    assert set(saved["results"]) == set(tasks)
    assert saved["config"]["lychee_bench"]["method"]["granularity"] == "token"


def test_command_line_reports_bad_model_args_without_a_traceback(monkeypatch, capsys):
    """lm-eval's CLI builds the model from --model_args (stood in here, to skip indexing its task catalogue)."""
    import lm_eval.__main__

    from lychee_bench.integrations.lm_eval_cli import EXIT_BAD_INPUT, main

    def cli_evaluate():
        import sys

        arguments = sys.argv[sys.argv.index("--model_args") + 1]
        get_model(sys.argv[sys.argv.index("--model") + 1]).create_from_arg_string(arguments, {"device": "cpu"})

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", cli_evaluate)
    with pytest.raises(SystemExit) as raised:
        main(["--model", "lychee-bench", "--model_args", "pretrained=smollm2-135m,method=lychee,budgit=64"])
    assert raised.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith("error: lychee-bench model_args:") and "budgit: neither an option of method lychee" in error
    assert "Traceback" not in error
    result = cli("lm-eval", "--model", "lychee-bench", "--model_args", "pretrained=smollm2-135m,method=nosuch")
    assert result.exit_code == EXIT_BAD_INPUT and "method" in result.output and "nosuch" in result.output
