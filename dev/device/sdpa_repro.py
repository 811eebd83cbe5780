"""Run-to-run: masked GQA SDPA decode step (1 query, left-padded rows) per backend, bf16, on this GPU."""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
B, HQ, HKV, S, D = 3, 32, 8, 3012, 128
q = torch.randn(B, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(B, HKV, S, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(B, HKV, S, D, device="cuda", dtype=torch.bfloat16)
starts = torch.tensor([0, 97, 194], device="cuda")
valid = torch.arange(S, device="cuda")[None, :] >= starts[:, None]
mask = valid[:, None, None, :]
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
for name, backend in [
    ("default", None),
    ("math", SDPBackend.MATH),
    ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ("cudnn", SDPBackend.CUDNN_ATTENTION),
]:
    outs = []
    try:
        for _ in range(20):
            if backend is None:
                outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
            else:
                with sdpa_kernel(backend):
                    outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
    except RuntimeError as error:
        print(f"{name:10s} refused: {str(error).splitlines()[0][:100]}")
        continue
    same = sum(bool(torch.equal(o, outs[0])) for o in outs)
    rows_differ = [int(r) for r in range(B) if any(not torch.equal(o[r], outs[0][r]) for o in outs)]
    err = max(float((o.float() - ref).abs().max() / ref.abs().max()) for o in outs)
    nan = any(bool(o.isnan().any()) for o in outs)
    print(f"{name:10s} identical {same}/20  rows differing {rows_differ}  max rel err vs fp32 {err:.4f}  nan {nan}")
