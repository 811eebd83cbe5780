"""Input formatting (one BOS, decode exercise) and the engine: the reference's greedy tokens (left padding, rows
stopping at different steps, methods sharing one prefill, cache correction), batch-independent sampling,
eager reasons, memory planning, and a prefill that never builds a context-squared mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lychee_bench.harness import memory
from lychee_bench.harness.engine import DecodeLoop, Engine, GenerationSettings
from lychee_bench.harness.inputs import FormattedInput, InputFormatter
from lychee_bench.harness.kv_cache import StaticKVCache
from lychee_bench.harness.memory import MemoryPlanError
from lychee_bench.methods.full import FullAttention, FullConfig
from lychee_bench.methods.lychee import LycheeConfig, LycheeDecode
from lychee_bench.methods.quest import QuestAttention, QuestConfig
from lychee_bench.methods.streaming import StreamingAttention, StreamingConfig
from lychee_bench.methods.tidal import TidalConfig, TidalDecode
from tests.conftest import NoHostReads, tiny_model
from tests.reference_generate import reference_generate

SLOW = pytest.mark.slow
PROMPT = "Some text about the city. " * 30 + "What is the special magic number for the quiet valley mentioned above?"
PREFIX = " The special magic number for the quiet valley mentioned in the provided text is"


def test_chat_input_has_exactly_one_bos(smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer)
    assert formatter.use_chat_template
    ids = formatter.format(PROMPT, PREFIX).input_ids
    canonical = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True
    )
    canonical = canonical["input_ids"] if isinstance(canonical, dict) or hasattr(canonical, "keys") else canonical
    prefix_ids = smol_tokenizer(PREFIX, add_special_tokens=False).input_ids
    assert ids == list(canonical) + prefix_ids
    bos = smol_tokenizer.bos_token_id
    leading = next(i for i, t in enumerate(ids) if t != bos)
    assert leading == (1 if ids[0] == bos else 0), "the input starts with more than one BOS"
    assert formatter.count_tokens(PROMPT, PREFIX) == len(ids)


def test_plain_input_gets_special_tokens_once(smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer, use_chat_template=False)
    ids = formatter.format(PROMPT, PREFIX).input_ids
    assert ids == smol_tokenizer(PROMPT + PREFIX).input_ids


def test_decode_exercise_covers_the_question_tail(smol_tokenizer):
    formatter = InputFormatter(smol_tokenizer, exercise_chars=100)
    formatted = formatter.format(PROMPT, PREFIX)
    tail_text = smol_tokenizer.decode(formatted.input_ids[-formatted.exercise_tokens :])
    assert PROMPT[-90:] in tail_text and tail_text.endswith(PREFIX)
    assert PROMPT[-200:-120] not in tail_text
    assert formatted.input_ids == formatter.__class__(smol_tokenizer).format(PROMPT, PREFIX).input_ids


def _tokenizer(eos: int) -> SimpleNamespace:
    """A stand-in tokenizer: token ids as text, `eos` the end of sequence."""
    return SimpleNamespace(
        pad_token_id=0, eos_token_id=eos, decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids))
    )


def _random_inputs(lengths_and_exercise: list[tuple[int, int]], seed: int = 0) -> list[FormattedInput]:
    generator = torch.Generator().manual_seed(seed)
    return [
        FormattedInput(torch.randint(1, 256, (n,), generator=generator).tolist(), e) for n, e in lengths_and_exercise
    ]


def _methods(model) -> list:
    methods = [
        FullAttention(),
        StreamingAttention(StreamingConfig(sink=4, recent=12)),
        LycheeDecode(LycheeConfig(roles="uniform:3", budget=16, granularity="token", sink=2, recent=4)),
        LycheeDecode(LycheeConfig(roles="uniform:3", budget=64, granularity="block", correction_period=5)),
        TidalDecode(TidalConfig(budget=12, selection_layer=1, reselect_layer=2)),
        QuestAttention(QuestConfig(budget=16, page_size=4, dense_layers=1)),
    ]
    methods[3].label = "lychee[correction]"
    for method in methods:
        method.prepare(model)
    return methods


# Whole generations against the reference loop: llama stays in the fast run, the other two are slow.
@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=SLOW), pytest.param("qwen3", marks=SLOW)])
def test_engine_gives_the_reference_greedy_tokens(arch):
    """Left padding (three prompt lengths), decode-exercise tokens, per-row limits, rows stopping at their own
    end-of-sequence, six methods from one shared prefill (one with cache correction): token for token what
    transformers' own forward with the attention hook gives (tests/reference_generate.py)."""
    model = tiny_model(arch)
    inputs = _random_inputs([(40, 3), (57, 0), (31, 6)])
    limits = [9, 14, 6]
    methods = _methods(model)
    # An end-of-sequence token that full attention emits mid-way through some row: rows then stop apart.
    probe = reference_generate(model, inputs, methods[0], limits, set(), 0)
    eos = probe[1][4]
    engine = Engine(model, _tokenizer(eos))
    outputs = engine.generate(inputs, GenerationSettings(20), methods, row_limits=limits)
    stopped = set()
    for method in methods:
        expected = reference_generate(model, inputs, method, limits, {eos}, 0)
        got = outputs[method.label]
        assert [g.token_ids for g in got] == expected, method.label
        assert all(g.decode_mode == "eager" and g.eager_reason for g in got)
        stopped |= {(row, g.stop_reason) for row, g in enumerate(got)}
    assert ("eos" in {reason for _, reason in stopped}) and ("length" in {reason for _, reason in stopped})
    assert engine.last_prefill_seconds > 0


def test_methods_share_one_prefill_and_one_decode_changes_nothing_for_the_next():
    """Each method writes only the decode tail of the shared cache: decoding another method first does not
    change a method's tokens."""
    model = tiny_model("llama")
    inputs = _random_inputs([(33, 2), (45, 0)], seed=4)
    methods = _methods(model)
    engine = Engine(model, _tokenizer(eos=-1))
    together = engine.generate(inputs, GenerationSettings(10), methods)
    for method in methods:
        alone = engine.generate(inputs, GenerationSettings(10), [method])[method.label]
        assert [g.token_ids for g in alone] == [g.token_ids for g in together[method.label]], method.label


def test_sampling_is_reproducible_and_independent_of_batch_mates():
    model = tiny_model("qwen2")
    inputs = _random_inputs([(20, 0), (35, 0), (28, 0)], seed=2)
    engine = Engine(model, _tokenizer(eos=-1))
    settings = GenerationSettings(12, temperature=1.0, top_p=0.9, seed=3)
    seeds = [11, 22, 33]
    method = [FullAttention()]
    batch = engine.generate(inputs, settings, method, row_seeds=seeds)["full"]
    again = engine.generate(inputs, settings, method, row_seeds=seeds)["full"]
    alone = engine.generate(inputs[1:2], settings, method, row_seeds=seeds[1:2])["full"]
    reordered = engine.generate(inputs[::-1], settings, method, row_seeds=seeds[::-1])["full"]
    assert [g.token_ids for g in batch] == [g.token_ids for g in again]
    assert batch[1].token_ids == alone[0].token_ids == reordered[1].token_ids
    other = engine.generate(inputs, settings, method, row_seeds=[12, 22, 33])["full"]
    assert other[0].token_ids != batch[0].token_ids and other[1].token_ids == batch[1].token_ids
    greedy = engine.generate(inputs, GenerationSettings(12), method)["full"]
    assert [g.token_ids for g in greedy] != [g.token_ids for g in batch]


def test_a_method_that_cannot_be_captured_records_why():
    model = tiny_model("llama")
    ratio = LycheeDecode(LycheeConfig(roles="uniform:3", budget_ratio=0.5))
    ratio.prepare(model)
    assert "budget_ratio" in ratio.graph_refusal()
    reference = TidalDecode(TidalConfig(budget=12, selection_layer=1, reselect_layer=2, path="reference"))
    reference.prepare(model)
    assert "reference path" in reference.graph_refusal()
    assert FullAttention(FullConfig(path="triton")).graph_refusal() is None
    assert "reference path" in FullAttention(FullConfig(path="reference")).graph_refusal()
    outputs = Engine(model, _tokenizer(eos=-1)).generate(_random_inputs([(30, 0)]), GenerationSettings(4), [ratio])
    assert outputs["lychee"][0].decode_mode == "eager" and "budget_ratio" in outputs["lychee"][0].eager_reason


@pytest.mark.slow  # six methods' Triton decode steps in the interpreter (tens of seconds on the CPU)
def test_every_graph_safe_decode_step_reads_nothing_back():
    """A whole engine step (token choice, cache write, every layer with the method, advance) reads no device
    value back for the graph-safe methods: the CPU stand-in for a CUDA-graph capture."""
    model = tiny_model("llama", head_dim=64)
    inputs = _random_inputs([(70, 2), (90, 0)], seed=5)
    engine = Engine(model, _tokenizer(eos=-1))
    prompts = [x.input_ids[: len(x.input_ids) - x.exercise_tokens] for x in inputs]
    forced = [x.input_ids[len(x.input_ids) - x.exercise_tokens :] for x in inputs]
    width = max(map(len, prompts))
    cache = StaticKVCache.for_config(model.config, 2, width + 12, torch.float32, "cpu")
    logits = engine.prefill(cache, prompts, width)
    methods = [
        FullAttention(FullConfig(path="triton")),
        LycheeDecode(LycheeConfig(roles="uniform:3", budget=128, granularity="block", path="triton")),
        LycheeDecode(LycheeConfig(roles="uniform:3", budget=32, granularity="token", sink=4, recent=8, path="triton")),
        TidalDecode(TidalConfig(budget=12, selection_layer=1, reselect_layer=2, path="triton")),
        QuestAttention(QuestConfig(budget=16, page_size=4, dense_layers=1, path="triton")),
        StreamingAttention(StreamingConfig(sink=4, recent=12, path="triton")),
    ]
    for method in methods:
        method.prepare(model)
        assert method.graph_refusal() is None, method.name
        loop = DecodeLoop(engine, cache, method, prompts, forced, [8, 8], [1, 2], GenerationSettings(8), logits)
        loop.state.geometry = loop.horizon
        loop.step()  # the first step builds what later steps keep (plans, page bounds)
        with NoHostReads():
            loop.step()
        assert bool(torch.isfinite(loop.logits).all()), method.name


def _largest_allocation(run) -> int:
    """The largest single allocation (bytes) while `run` runs, from the profiler's memory records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return max(max(e.cpu_memory_usage, e.self_cpu_memory_usage) for e in prof.events())


@pytest.mark.slow  # an 8192-token prefill under the profiler
def test_prefill_never_builds_a_context_squared_tensor():
    """At 8192 tokens a boolean mask of context x context takes 64 MiB; the chunked prefill's largest allocation
    is bounded by chunk x context (the CPU's causal bias and scores of one chunk) and the cache."""
    model = tiny_model("llama")
    context, chunk = 8192, 256
    engine = Engine(model, _tokenizer(eos=-1), prefill_chunk=chunk)
    cache = StaticKVCache.for_config(model.config, 1, context, torch.float32, "cpu")
    tokens = torch.randint(1, 256, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        largest = _largest_allocation(lambda: engine.prefill(cache, [tokens], context))
        assert largest <= 16 * chunk * context  # linear in the context
        assert largest < context * context // 2
        # The measurement sees such a mask where one is built:
        assert _largest_allocation(lambda: torch.ones(context, context, dtype=torch.bool).tril()) >= context**2


def test_batches_split_to_fit_memory_and_one_row_too_large_is_refused(monkeypatch):
    model = tiny_model("llama")
    inputs = _random_inputs([(40, 0), (40, 0), (40, 0)], seed=7)
    engine = Engine(model, _tokenizer(eos=-1))
    whole = engine.generate(inputs, GenerationSettings(6), [FullAttention()])["full"]
    assert {g.forward_batch for g in whole} == {3}
    one_row, two_rows = (memory.batch_memory(model.config, torch.float32, b, 40 + 6 + 1, 40).total for b in (1, 2))
    monkeypatch.setattr("lychee_bench.harness.engine.available_bytes", lambda device: (one_row + two_rows) // 2)
    split = engine.generate(inputs, GenerationSettings(6), [FullAttention()])["full"]
    assert [g.forward_batch for g in split] == [1, 1, 1]
    assert [g.token_ids for g in split] == [g.token_ids for g in whole]
    monkeypatch.setattr("lychee_bench.harness.engine.available_bytes", lambda device: one_row // 2)
    with pytest.raises(MemoryPlanError, match="GiB"):
        engine.generate(inputs, GenerationSettings(6), [FullAttention()])
