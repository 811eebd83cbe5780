"""One parametrised matrix over every registered method (the catalog and the `lychee_bench.methods` entry points),
so a method registered later is covered automatically, with no test code of its own.

For each method: (1) with a budget that holds the whole context it gives exactly full attention's greedy
tokens; (2) its decode step equals a deliberately naive attention (Python loops, float64) over the set its
class's naive model says it selects (`Method.naive_selection`); (3) describe() names it and its path; (4)
check() answers an unsupported architecture with reasons, not an exception; (5) its efficient path matches its
reference path. Each check is a plain function of the method's name, so tests/test_third_party_method.py runs
the same checks on a method registered through an entry point.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lychee_bench.harness.catalog import METHODS
from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import InputFormatter
from lychee_bench.methods.artifacts import kascade_to_json, write_json
from lychee_bench.methods.base import Method, RunShape
from lychee_bench.methods.full import FullAttention
from lychee_bench.methods.naive import real_positions
from lychee_bench.methods.state import DecodeState
from tests.conftest import tiny_config
from tests.conftest import tiny_model as conftest_tiny_model

ALL_METHODS = METHODS.names()
NUM_LAYERS = 6  # dense 0-1, tidal selects at 2, reuses at 3, re-selects at 4, reuses at 5
# Options that make each built-in method valid (and its selection visible) on a tiny model; `budget` is set per test.
# A method not named here is built from its defaults (plus `budget`, and `roles=all` where it has roles).
TINY_OPTIONS = {
    "lychee": {"roles": "uniform:4", "granularity": "token", "sink": 4, "recent": 8},
    "duo": {"roles": "uniform:4", "sink": 4},
    "streaming": {"sink": 4},
    "tidal": {"reselect_layer": 4},
    "quest": {"page_size": 4},
    "kascade": {},  # `anchors` is a file the fixture below writes
}
SCALING = 0.25
# Kascade on the tiny shape: anchors 0, 2, 4; reuse layers read another head's set where the map says so.
KASCADE_ANCHORS = [0, 2, 4]
KASCADE_HEAD_MAP = [[0, 1], [1, 0], [0, 1], [1, 1], [0, 1], [0, 0]]


@pytest.fixture(scope="module", autouse=True)
def kascade_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("kascade") / "tiny.json"
    write_json(path, kascade_to_json(KASCADE_ANCHORS, KASCADE_HEAD_MAP, {"name": "tiny", "fingerprint": "-"}, {}))
    TINY_OPTIONS["kascade"]["anchors"] = str(path)
    yield
    TINY_OPTIONS["kascade"].pop("anchors")


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def build(name: str, budget: int) -> Method:
    cls = method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    options = dict(TINY_OPTIONS.get(name, {}))
    if "budget" in fields:
        options["budget"] = budget
    if "roles" in fields:
        options.setdefault("roles", "all")
    return cls.from_options(options)


def tiny_model(arch: str, vocab_size: int) -> torch.nn.Module:
    """conftest's tiny model with NUM_LAYERS layers."""
    return conftest_tiny_model(arch, layers=NUM_LAYERS, vocab_size=vocab_size)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unlimited_budget_gives_full_tokens(name, arch, smol_tokenizer):
    check_unlimited_budget_gives_full_tokens(name, arch, smol_tokenizer)


def check_unlimited_budget_gives_full_tokens(name: str, arch: str, smol_tokenizer) -> None:
    model = tiny_model(arch, len(smol_tokenizer))
    formatter = InputFormatter(smol_tokenizer, exercise_chars=60)
    text = "The quick brown fox jumps over the lazy dog. " * 30 + "What does the fox jump over?"
    inputs = [formatter.format(text, " Answer:"), formatter.format(text[300:], " Answer:")]  # left-padded batch
    context = max(len(x.input_ids) for x in inputs) + 16
    method = build(name, budget=4096)
    assert context < 4096
    shape = RunShape.from_config(model.config, "float32", "cpu", 2, context, "tiny")
    assert method.check(shape) == []
    method.prepare(model)
    full = FullAttention()
    methods = [full] + ([method] if method.label != full.label else [])
    outputs = Engine(model, smol_tokenizer).generate(inputs, GenerationSettings(8), methods)
    assert [g.text for g in outputs[method.label]] == [g.text for g in outputs[full.label]]


# --- (2) the naive reference: each method's own naive model of which positions it attends to
# (Method.naive_selection, plain Python sets in float64), against its decode step ---


def naive_attention(query, key, value, sets, scaling) -> torch.Tensor:
    batch, num_heads, _, dim = query.shape
    group = num_heads // key.shape[1]
    out = torch.zeros(batch, num_heads, 1, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(num_heads):
            idx = torch.tensor(sorted(sets[b][h]))
            k, v = key[b, h // group, idx].double(), value[b, h // group, idx].double()
            weights = torch.softmax(k @ query[b, h, 0].double() * scaling, dim=0)
            out[b, h, 0] = weights @ v
    return out


@pytest.mark.parametrize("name", ALL_METHODS)
def test_reference_decode_equals_naive_masked_attention(name):
    check_decode_equals_naive_masked_attention(name)


def check_decode_equals_naive_masked_attention(name: str) -> None:
    """The method's decode step (its reference path) against naive float64 attention over the positions its class's
    naive model (`naive_selection`) says it attends to; the mask it records, where it records one, is that set."""
    batch, num_heads, num_kv, dim, length = 2, 6, 2, 16, 70
    method = build(name, budget=20)
    shape = RunShape("llama", NUM_LAYERS, num_heads, num_kv, dim, "float32", "cpu", batch, length, "tiny")
    assert method.check(shape) == []
    torch.manual_seed(1)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :11] = False  # left padding
    state = DecodeState(method=method, phase="decode")
    state.begin_step("decode")
    memory: dict = {}
    bites = False
    for layer in range(NUM_LAYERS):
        query = torch.randn(batch, num_heads, 1, dim)
        key, value = torch.randn(batch, num_kv, length, dim), torch.randn(batch, num_kv, length, dim)
        sets = method.naive_selection(layer, query, key, valid, SCALING, memory)
        if sets is None:
            pytest.fail(
                f"{type(method).__name__} ({name!r}) has no naive model of what it selects: give its class a "
                "`naive_selection` (see Method.naive_selection in lychee_bench/methods/base.py)"
            )
        bites |= any(len(sets[b][h]) < int(valid[b].sum()) for b in range(batch) for h in range(num_heads))
        out = method.decode_attention(layer, query, key, value, valid, SCALING, state)
        expected = naive_attention(query, key, value, sets, SCALING)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        recorded = state.layer_data.get(("keep", layer))
        if recorded is not None:  # the mask the method says it used is the naive set
            recorded = recorded.repeat_interleave(num_heads // recorded.shape[1], dim=1)
            assert [[set(real_positions(recorded[b, h])) for h in range(num_heads)] for b in range(batch)] == sets
    dense = method_class(name).is_dense_baseline
    assert bites or dense, "the budget must drop positions somewhere, or the check proves little"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_describe_names_method_and_path(name):
    check_describe_names_method_and_path(name)


def check_describe_names_method_and_path(name: str) -> None:
    described = build(name, budget=64).describe()
    assert described["name"] == name
    assert isinstance(described["path"], str) and described["path"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unsupported_architecture_gives_reasons(name):
    check_unsupported_architecture_gives_reasons(name)


def check_unsupported_architecture_gives_reasons(name: str) -> None:
    shape = RunShape("gpt2", 12, 12, 12, 64, "float32", "cpu", 1, 1024, "gpt2")
    for method in (build(name, budget=64), method_class(name)()):
        reasons = method.check(shape)
        assert isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
        assert any("gpt2" in r for r in reasons)


# Variants whose efficient paths differ (lychee: its fused block kernel, or the shared kernel for tokens).
EFFICIENT_VARIANTS = {
    "lychee": [
        {"granularity": "block", "block_size": 64, "budget": 64},
        {"granularity": "token"},
        {"granularity": "token", "budget_ratio": 0.3},  # a budget per sequence
    ],
    "tidal": [{}, {"per_kv_head": True}],
    "kascade": [{}, {"budget": None, "min_budget": 16, "budget_ratio": 0.2}],  # k per sequence from its length
}


@pytest.mark.parametrize(
    "name, variant",
    [(name, variant) for name in ALL_METHODS for variant in EFFICIENT_VARIANTS.get(name, [{}])],
    ids=lambda value: value if isinstance(value, str) else ";".join(f"{k}={v}" for k, v in value.items()),
)
def test_efficient_path_matches_the_reference(name, variant):
    check_efficient_path_matches_the_reference(name, variant)


def check_efficient_path_matches_the_reference(name: str, variant: dict | None = None) -> None:
    """The Triton path (interpreter) against the same method's reference path: odd sizes, batch 3 with left
    padding, fresh random inputs, a budget that drops positions."""
    variant = variant or {}
    cls = method_class(name)
    if "path" not in {f.name for f in dataclasses.fields(cls.Config)}:
        if cls.is_dense_baseline:  # its only path may be the dense reference itself: nothing to compare
            return
        pytest.fail(f"{name} has no `path` option, so no efficient path to test; give it one (methods/efficient.py)")
    batch, num_heads, num_kv, dim, length = 3, 8, 2, 64, 157
    shape = RunShape("llama", NUM_LAYERS, num_heads, num_kv, dim, "float32", "cpu", batch, length, "tiny")
    paths = {}
    for path in ("reference", "triton"):
        method = build(name, budget=40)
        method.config.path = path
        for option, value in variant.items():
            setattr(method.config, option, value)
        assert method.check(shape) == [], path
        assert method.path == path
        paths[path] = method
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :23] = False  # left padding
    valid[2, :120] = False  # shorter than some windows and budgets
    lengths = valid.sum(-1).tolist()
    states = {path: DecodeState(method=m, phase="decode") for path, m in paths.items()}
    for state in states.values():
        state.begin_step("decode", lengths)
    for layer in range(NUM_LAYERS):
        query = torch.randn(batch, num_heads, 1, dim, generator=generator)
        key = torch.randn(batch, num_kv, length, dim, generator=generator)
        value = torch.randn(batch, num_kv, length, dim, generator=generator)
        outs = {}
        for path, method in paths.items():
            outs[path] = method.decode_attention(layer, query, key, value, valid, SCALING, states[path])
        torch.testing.assert_close(outs["triton"], outs["reference"], atol=2e-4, rtol=2e-4, msg=f"layer {layer}")
    totals = {path: state.totals().get("kv_tokens_read") for path, state in states.items()}
    assert totals["triton"] == totals["reference"], "both paths must count the K/V rows they read alike"


# Whole generations under the interpreter take ~20 s per method, so this runs where state outlives a layer or a
# step beyond what the per-layer test above sees: Quest keeps page bounds across steps; lychee's token path
# carries position lists from layer to layer. The per-layer test covers every method.
GENERATION_CHECKS = ("quest", "lychee")


@pytest.mark.parametrize("name", GENERATION_CHECKS)
def test_efficient_path_generates_the_reference_tokens(name, smol_tokenizer):
    """Whole generations through the engine (left-padded batch, decode exercise, several steps): the Triton path
    (interpreter) gives the reference path's greedy tokens."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(
        "llama", vocab_size=len(smol_tokenizer), num_heads=4, num_kv_heads=2, head_dim=64, layers=NUM_LAYERS
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "proj" in param_name and param.dim() == 2:
                param.mul_(4.0)
    formatter = InputFormatter(smol_tokenizer, exercise_chars=6)
    text = "The quick brown fox jumps over the lazy dog. " * 6 + "What does the fox jump over?"
    inputs = [formatter.format(text, " Answer:"), formatter.format(text[100:], " Answer:")]
    shape = RunShape.from_config(model.config, "float32", "cpu", 2, 512, "tiny")
    texts = {}
    for path in ("reference", "triton"):
        method = build(name, budget=24)
        method.config.path = path
        assert method.check(shape) == [] and method.path == path
        method.prepare(model)
        outputs = Engine(model, smol_tokenizer).generate(inputs, GenerationSettings(3), [method])
        texts[path] = [g.text for g in outputs[name]]
    assert texts["triton"] == texts["reference"]
