"""Input formatting (one BOS, decode exercise) and batched generation, on a tiny model with the real tokenizer."""

from __future__ import annotations

from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.streaming import StreamingAttention, StreamingConfig
from tests.conftest import tiny_model

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


def test_batched_generation_equals_one_at_a_time(smol_tokenizer):
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer, exercise_chars=40)
    inputs = [formatter.format(PROMPT[i * 37 :], PREFIX) for i in range(3)]
    assert len({len(x.input_ids) for x in inputs}) == 3  # different lengths -> left padding
    settings = GenerationSettings(max_new_tokens=6)
    methods = [FullAttention(), StreamingAttention(StreamingConfig(sink=4, recent=32))]
    engine = Engine(model, smol_tokenizer)
    shared = engine.generate(inputs, settings, methods)  # one prefill, two methods
    for method in methods:
        batched = engine.generate(inputs, settings, [method])[method.name]
        single = [engine.generate([x], settings, [method])[method.name][0] for x in inputs]
        assert [g.text for g in batched] == [g.text for g in single] == [g.text for g in shared[method.name]]
        assert all(g.exercise_tokens > 0 for g in batched)
    assert [g.text for g in shared["full"]] != [g.text for g in shared["streaming"]]


def test_sampling_is_reproducible_with_a_seed(smol_tokenizer):
    model = tiny_model("qwen2", vocab_size=len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer)
    inputs = [formatter.format("Tell me a story.", "")]
    engine = Engine(model, smol_tokenizer)
    method = [FullAttention()]
    first = engine.generate(inputs, GenerationSettings(8, temperature=1.0, top_p=0.9, seed=3), method)["full"]
    second = engine.generate(inputs, GenerationSettings(8, temperature=1.0, top_p=0.9, seed=3), method)["full"]
    other = engine.generate(inputs, GenerationSettings(8, temperature=1.0, top_p=0.9, seed=4), method)["full"]
    assert first[0].text == second[0].text
    assert first[0].text != other[0].text
