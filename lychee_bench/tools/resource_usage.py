"""Registers, spills and shared memory of the Triton decode kernels for a GPU architecture, on any machine.

Triton compiles ahead of time with its bundled ptxas, so this needs no GPU: it shows what a launch knob does to
the kernel's resources (registers per thread bound how many programs an SM holds; a stack means spills), and
that the GPU build compiles at all::

    python -m lychee_bench.tools.resource_usage --arch 90 --step 1 2 --warps 4 8 --finish 0 2
    python -m lychee_bench.tools.resource_usage --kernel sparse   # the baselines' shared kernel
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lychee_bench.kernels import lychee_triton as lt
from lychee_bench.kernels import sparse_decode as sd
from lychee_bench.kernels.lychee_plan import plan_decode_work

CONTEXT, BUDGET_BLOCKS = 131072, 64  # one 128K sequence, 8 KV heads (one retrieval), 4096-token budget

POINTER_TYPES = {
    "q_ptr": "*bf16",
    "k_ptr": "*bf16",
    "v_ptr": "*bf16",
    "out_ptr": "*bf16",
    "part_acc_ptr": "*fp32",
    "part_m_ptr": "*fp32",
    "part_l_ptr": "*fp32",
    "group_acc_ptr": "*fp32",
    "group_m_ptr": "*fp32",
    "group_l_ptr": "*fp32",
    "scores_ptr": "*fp32",
    "scale_log2e": "fp32",
}  # every other pointer is int32; every other runtime argument an int32 scalar


def kernel_resources(
    *, arch: int, finish: int, step: int, warps: int, stages: int, group: int = 4, head_dim: int = 128
) -> dict[str, Any]:
    """Compile the fused layer kernel (bf16, 128K context, 64-block budget) with the launch's own compile-time
    arguments and read its resource usage."""
    plan = plan_decode_work([CONTEXT], [True] + [False] * 7, CONTEXT, BUDGET_BLOCKS, "cpu", target_programs=264)
    constants = {**lt.layer_constants(plan, group, head_dim, finish, dot_in_fp32=False), "STEP": step}
    names = inspect.signature(lt._decode_layer_kernel.fn).parameters
    signature = {
        n: "constexpr" if n in constants else POINTER_TYPES.get(n, "*i32" if n.endswith("_ptr") else "i32")
        for n in names
    }
    return _compile_usage(lt._decode_layer_kernel, signature, constants, arch, warps, stages)


def sparse_kernel_resources(
    *, arch: int, rows_per_kv: int, unit: int, warps: int, stages: int, group: int = 4, head_dim: int = 128
) -> dict[str, Any]:
    """Compile the shared position-list kernel (bf16): one row per KV head (`rows_per_kv` 1) or per query head
    (`rows_per_kv` = group), tokens (`unit` 1) or pages (16)."""
    rows_group = group // rows_per_kv
    constants = dict(
        HS=8 * rows_per_kv,
        ROWS_PER_KV=rows_per_kv,
        GS=rows_group,
        G_PAD=max(16, triton.next_power_of_2(rows_group)),
        D=head_dim,
        UNIT=unit,
        TILE=sd.TILE,
        DOT_IN_FP32=False,
        INPUT_PRECISION="tf32",
    )
    names = inspect.signature(sd._sparse_partials_kernel.fn).parameters
    signature = {
        n: "constexpr" if n in constants else POINTER_TYPES.get(n, "*i32" if n.endswith("_ptr") else "i32")
        for n in names
    }
    return _compile_usage(sd._sparse_partials_kernel, signature, constants, arch, warps, stages)


def _compile_usage(kernel: Any, signature: dict, constants: dict, arch: int, warps: int, stages: int) -> dict:
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages)
    )
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    field = lambda name: int(re.search(rf"{name}:(\d+)", usage).group(1))  # noqa: E731
    return dict(registers=field("REG"), stack_bytes=field("STACK"), shared_bytes=compiled.metadata.shared)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--finish", type=int, nargs="+", default=[0, 2], help="0 attention only, 1 +merge, 2 +top-k")
    parser.add_argument("--step", type=int, nargs="+", default=[lt.STEP_BLOCKS], help="blocks per loop step")
    parser.add_argument("--warps", type=int, nargs="+", default=[lt.ATTENTION_WARPS])
    parser.add_argument("--stages", type=int, nargs="+", default=[lt.ATTENTION_STAGES])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--kernel", choices=("lychee", "sparse"), default="lychee", help="which kernel to compile")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("TRITON_INTERPRET=1 replaces the compiler with the interpreter; run with TRITON_INTERPRET=0")
    if args.kernel == "sparse":
        for rows_per_kv, unit, warps in itertools.product((1, 4), (1, 16), args.warps):
            usage = sparse_kernel_resources(
                arch=args.arch, rows_per_kv=rows_per_kv, unit=unit, warps=warps, stages=sd.STAGES
            )
            knobs = dict(rows_per_kv=rows_per_kv, unit=unit, warps=warps)
            print(json.dumps({**knobs, **usage}) if args.json else f"{knobs}: {usage}", flush=True)
        return
    for finish, step, warps, stages in itertools.product(args.finish, args.step, args.warps, args.stages):
        usage = kernel_resources(arch=args.arch, finish=finish, step=step, warps=warps, stages=stages)
        knobs = dict(finish=finish, step=step, warps=warps, stages=stages)
        print(json.dumps({**knobs, **usage}) if args.json else f"{knobs}: {usage}", flush=True)


if __name__ == "__main__":
    main()
