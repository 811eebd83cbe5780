"""torch.compile for the dense, shape-stable parts of a decode step: norms, MLPs and the rotary embedding.

A decode step at small batch is a long chain of tiny kernels. Inside a CUDA graph each still costs a few
microseconds, and the RMSNorms (six elementwise kernels each, eagerly), the rotary embedding and the MLP's
activation are most of them: on the H200 the Llama-3-8B-shape step at 128K spent ~6.8 ms outside attention
where its weights need ~3.5 ms (results/latency/h200-first). Compiling those pieces fuses each into one or two
kernels. Attention stays eager: it is the method under test, and its per-step host work (plans, slots) must
run as the method wrote it. Same-class modules share one compiled graph (dynamo inlines their parameters).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

COMPILED_MODULE_SUFFIXES = ("RMSNorm", "MLP", "RotaryEmbedding")
ROTARY_FUNCTION = "apply_rotary_pos_emb"


@contextmanager
def compiled_dense_blocks(model: torch.nn.Module) -> Iterator[list[str]]:
    """Within the block the model's norms, MLPs and rotary modules (and its modeling module's
    `apply_rotary_pos_emb`) run through torch.compile; yields what was compiled; restores everything after.

    Compilation happens on first use (a decode warm-up does it before a CUDA graph is captured).
    """
    compiled: set[str] = set()
    patched: list[torch.nn.Module] = []
    for module in model.modules():
        name = type(module).__name__
        if name.endswith(COMPILED_MODULE_SUFFIXES):
            module.forward = torch.compile(module.forward)  # an instance attribute over the class's method
            patched.append(module)
            compiled.add(name)
    modeling = sys.modules.get(type(model).__module__)
    rotary = getattr(modeling, ROTARY_FUNCTION, None)
    if rotary is not None:
        setattr(modeling, ROTARY_FUNCTION, torch.compile(rotary))
        compiled.add(ROTARY_FUNCTION)
    try:
        yield sorted(compiled)
    finally:
        for module in patched:
            del module.forward
        if rotary is not None:
            setattr(modeling, ROTARY_FUNCTION, rotary)
