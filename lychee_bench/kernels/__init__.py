"""Attention kernels: each Triton kernel beside the plain-torch reference it must match.

- ``reference``     plain torch, CPU-capable, fp32: the definition of correct (LycheeDecode, arXiv 2602.04541)
- ``sparse_decode`` the position-list kernel the baselines share (and lychee's token granularity)
- ``token_logits``  q . k for every cache slot in one pass over K (tidal's, kascade's and quest's scoring)
- ``lychee_plan``   the balanced split-KV work list of one decode layer (host side, no Triton needed)
- ``lychee_triton`` the Triton path: ``lychee_decode_layer`` (one split-KV launch, LSE merge, top-k)
- ``bench_lychee``  GPU benchmark against torch SDPA (``python -m lychee_bench.tools.bench_lychee --out DIR``)

Nothing is imported here, so importing the package needs neither Triton nor a GPU.
"""
