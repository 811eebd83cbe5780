"""The token-logits kernel (kernels/token_logits.py) against torch on left-padded caches, under
TRITON_INTERPRET=1 on CPU: per query head and group means, odd cache sizes, GQA groups 1 and 4."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    from lychee_bench.kernels.token_logits import token_logits
except ImportError as error:  # a missing Triton must fail loudly, never skip
    token_logits = None
    IMPORT_ERROR = f"the logits kernel cannot be imported ({error}); install Triton: pip install triton"


@pytest.mark.parametrize(
    "group, mean, dtype",
    [(4, False, torch.float32), (4, True, torch.float32), (1, False, torch.bfloat16), (2, True, torch.bfloat16)],
)
def test_logits_match_torch_with_padding_masked(group, mean, dtype):
    if token_logits is None:
        pytest.fail(IMPORT_ERROR)
    batch, hkv, slots, dim = 3, 2, 301, 64
    q = torch.randn(batch, hkv * group, dim).to(dtype)
    k = torch.randn(batch, hkv, slots, dim).to(dtype)
    lengths = torch.tensor([301, 170, 5], dtype=torch.int32)
    starts = (slots - lengths).to(torch.int32)
    out = token_logits(q, k, lengths, starts, mean=mean)
    grouped = q.float().view(batch, hkv, group, dim)
    if mean:
        expected = torch.einsum("bhd,bhsd->bhs", grouped.mean(dim=2), k.float())
    else:
        expected = torch.einsum("bhgd,bhsd->bhgs", grouped, k.float()).reshape(batch, hkv * group, slots)
    padding = torch.arange(slots)[None, :] < starts[:, None]
    expected = expected.masked_fill(padding[:, None, :], float("-inf"))
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert torch.equal(torch.isinf(out), torch.isinf(expected))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


def test_bad_shapes_are_refused():
    if token_logits is None:
        pytest.fail(IMPORT_ERROR)
    lengths = torch.tensor([4], dtype=torch.int32)
    with pytest.raises(ValueError, match="does not match"):
        token_logits(torch.randn(1, 3, 64), torch.randn(1, 2, 4, 64), lengths, lengths * 0)
    with pytest.raises(ValueError, match="head dim"):
        token_logits(torch.randn(1, 2, 48), torch.randn(1, 2, 4, 48), lengths, lengths * 0)
