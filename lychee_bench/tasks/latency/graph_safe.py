"""Graph-safe variants of the methods: the same attention, with no device-to-host reads inside a decode step.

Methods that declare `graph_safe` (their step takes the host lengths the static decoder gives) run as they are.
LycheeDecode's Triton path builds plans and scratch buffers per step, which a captured graph cannot repeat, so the
bench wraps it here: the same attention, with plans, buffers and the slot table built once during the eager
warm-up and reused by the captured step.
"""

from __future__ import annotations

import torch

from lychee_bench.harness.attention import DecodeState
from lychee_bench.methods.base import Method
from lychee_bench.methods.lychee import LycheeDecode


class GraphSafeLychee(LycheeDecode):
    """LycheeDecode's Triton path with lengths from ``state.static`` and plans/buffers/slots kept across steps."""

    def _decode_triton(self, layer_idx, query, key, value, valid, scaling, state: DecodeState) -> torch.Tensor:
        from lychee_bench.kernels.lychee_plan import plan_decode_work
        from lychee_bench.kernels.lychee_triton import DecodeBuffers, lychee_decode_layer

        static = getattr(state, "static", None)
        if static is None:
            return super()._decode_triton(layer_idx, query, key, value, valid, scaling, state)
        entry = static.method_cache.get("lychee")
        if entry is None:
            budget_blocks = self.config.host_budget_blocks(max(static.lengths_host))
            entry = {"budget_blocks": budget_blocks, "plans": {}, "buffers": {}}
            static.method_cache["lychee"] = entry
        roles = self.roles.retrieval[layer_idx]
        pattern = tuple(roles.tolist())  # a CPU tensor: no device read
        q = query[:, :, 0]
        if pattern not in entry["plans"]:
            plan = plan_decode_work(static.lengths_host, roles, key.shape[2], entry["budget_blocks"], key.device)
            entry["plans"][pattern] = plan
            entry["buffers"][pattern] = DecodeBuffers.allocate(plan, q)
            if "slots" not in entry:
                entry["slots"] = torch.full(
                    (plan.batch, plan.num_kv_heads, plan.slot_width), -1, dtype=torch.int32, device=key.device
                )
        out, _ = lychee_decode_layer(
            q,
            key,
            value,
            static.lengths,
            roles,
            entry["slots"],
            entry["budget_blocks"],
            scaling,
            plan=entry["plans"][pattern],
            buffers=entry["buffers"][pattern],
            starts=static.starts,
            inplace_slots=True,
        )
        return out[:, :, None, :]


def make_graph_safe(method: Method) -> tuple[Method, bool]:
    """The graph-safe variant of ``method`` (same config and roles) and whether one exists.

    A method without a variant is returned as it is; the bench still tries to capture it and records the
    failure (with the reason) if it reads the device back inside the step."""
    if getattr(method, "graph_safe", False):  # a method that declares itself safe (the proposed hook)
        return method, True
    if type(method) is LycheeDecode:
        safe = GraphSafeLychee(method.config)
        safe.roles, safe._path = method.roles, method._path
    else:
        return method, False
    safe.label = method.label
    return safe, True
