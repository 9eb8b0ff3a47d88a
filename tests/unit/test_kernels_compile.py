"""The Triton kernels compile for a Hopper GPU (sm_90) without one: Triton's own ptxas builds them ahead of time.

The interpreter (TRITON_INTERPRET=1, the numerical tests) accepts code the compiler rejects, e.g. a kernel reading a
plain Python global; this catches that on the CPU. Runs in a subprocess: the kernels must be imported compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import inspect
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner
    from llmlab.kernels import stablemask_triton as sm, wkv_triton as wk

    TARGET = GPUTarget("cuda", 90, 32)
    FLOATS = {"qk_scale", "sm_scale"}
    INTS = {"H", "N_Q", "N_K", "T", "C"}
    FP32_POINTERS = {"TAU", "LSE", "DELTA"}

    def build(fn, ptr, constexprs, num_warps):
        jit = fn.fn if isinstance(fn, Autotuner) else fn
        params = inspect.signature(jit.fn).parameters
        sig = {}
        for name in jit.arg_names:
            if "constexpr" in str(params[name].annotation):
                sig[name] = "constexpr"
            elif name in FLOATS:
                sig[name] = "fp32"
            elif name in INTS or name.startswith("stride"):
                sig[name] = "i32"
            else:
                sig[name] = "*fp32" if name in FP32_POINTERS else f"*{ptr}"
        consts = {(jit.arg_names.index(k),): v for k, v in constexprs.items()}
        triton.compile(ASTSource(fn=jit, signature=sig, constexprs=consts), target=TARGET,
                       options={"num_warps": num_warps})
        print("compiled", jit.__name__, ptr, constexprs)

    for name in ("_fwd_kernel", "_dkdv_kernel", "_dq_kernel"):
        cfg = getattr(sm, name).configs[0]
        build(getattr(sm, name), "bf16", {**cfg.kwargs, "HEAD_DIM": 64, "PRECISION": "tf32"}, cfg.num_warps)
    build(sm._delta_kernel, "bf16", {"HEAD_DIM": 64, "BLOCK_M": 64}, 4)
    for name in ("_wkv_fwd_kernel", "_wkv_bwd_kernel"):
        build(getattr(wk, name), "fp32", {"BLOCK_C": 64}, 2)
    """
)


def test_kernels_compile_for_sm90():
    import triton.backends.nvidia as nvidia

    if not os.path.exists(os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")):
        pytest.skip("this Triton build ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 6
