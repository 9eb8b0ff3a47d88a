"""The compiled Triton kernels (StableMask attention, RWKV-4 WKV) agree with their PyTorch references at bf16 on a
CUDA GPU, forward and backward. The comparison runs in a subprocess without TRITON_INTERPRET (this session imported
Triton interpreted, tests/conftest.py); the same code runs interpreted on the CPU in tests/unit/test_kernel_errors.py.

Tolerances (bf16 inputs, fp32 accumulation in every kernel and reference):
- StableMask: |O - O_ref| <= 2e-2 absolute, gradients <= 5e-2 of the reference's largest entry (the tolerances of
  `llmlab.bench.stablemask_gpu`'s check): the kernel rounds P to bf16 before P @ V and dS before its products. That
  check measured 7.8e-3 forward (one bf16 ulp near 1) and at most 7.4e-3 on gradients on an H100, at similar shapes
  (experiments/stablemask/h100/stablemask_gpu.json).
- WKV: kernel and reference compute in fp32 on the same inputs and only their bf16 outputs (y, dk, dv) are rounded,
  at most one bf16 ulp (2^-8 of the largest entry) apart: 1e-2; the final state is fp32 on both sides, but the GPU's
  exp differs from torch's by ulps at each of hundreds of steps: 1e-3. A real fault (a dropped bonus) gives > 0.1
  (tests/unit/test_kernel_errors.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from llmlab.bench.stablemask_gpu import BF16_FWD_TOL, BF16_GRAD_TOL
from tests.helpers import REPO

pytest.importorskip("triton")

WKV_TOL, WKV_STATE_TOL = 1e-2, 1e-3


def test_compiled_kernels_match_their_references_in_bf16():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu.kernel_errors"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert errors["device"] == "cuda" and errors["dtype"] == "bfloat16" and errors["interpreted"] is False
    values = [v for row in errors["stablemask"] + errors["wkv"] for k, v in row.items() if k != "shape"]
    assert len(errors["stablemask"]) == len(errors["wkv"]) == 2 and all(math.isfinite(v) for v in values), errors
    for row in errors["stablemask"]:
        assert row["fwd_abs"] <= BF16_FWD_TOL and row["grad_rel"] <= BF16_GRAD_TOL, errors
    for row in errors["wkv"]:
        assert row["fwd_rel"] <= WKV_TOL and row["grad_rel"] <= WKV_TOL and row["state_rel"] <= WKV_STATE_TOL, errors
