"""The engine's layer stack computes the transformers model's own logits (llama, qwen2 with QKV biases, qwen3
with head norms), and fusing the projections leaves the transformers model's outputs unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lychee_bench.harness.forward import LayerStack, unsupported_reasons
from tests.conftest import tiny_model


def _stack_logits(stack: LayerStack, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1])[None].expand(tokens.shape[0], -1)
    hidden = stack.embed(tokens)
    cos, sin = stack.rotary_tables(hidden, positions)

    def attend(index, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=stack.scaling, enable_gqa=True)

    for index in range(stack.num_layers):
        hidden = stack.layer(index, hidden, cos, sin, attend)
    return stack.logits(hidden.reshape(-1, hidden.shape[-1])).view(*tokens.shape, -1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_layer_stack_gives_the_model_logits(arch):
    model = tiny_model(arch)
    if arch == "qwen2":  # make the QKV biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    tokens = torch.randint(0, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=tokens).logits.float()
        stack = LayerStack(model)
        got = _stack_logits(stack, tokens)
        after_fusion = model(input_ids=tokens).logits.float()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after_fusion, expected, rtol=0, atol=0)
    attn = model.model.layers[1].self_attn
    storage = stack.layers[1].qkv.untyped_storage().data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == storage  # views of the fused tensor: no second copy
    assert LayerStack(model).layers[1].qkv is stack.layers[1].qkv  # fused once


def test_unsupported_architecture_is_named():
    class Config:
        model_type = "gpt2"

    assert "gpt2" in unsupported_reasons(Config())[0]
