"""The GPU tier's kernel comparison (tests/gpu/kernel_errors.py) on the CPU: the same function, interpreted Triton,
tiny shapes, fp32 (the interpreter's bf16 `tl.dot` is wrong). Its errors are small for the real kernels and large for
a kernel with a known fault, so the bf16 assertions of tests/gpu/test_kernels.py test the kernels, not the script."""

from __future__ import annotations

import math

import torch

from tests.unit.test_stablemask_attention import needs_triton

try:
    from tests.gpu import kernel_errors
except ImportError:  # triton is optional
    kernel_errors = None

STABLEMASK_SHAPES = [(1, 2, 21, 37, 16), (2, 2, 45, 45, 32)]  # a KV-cache suffix; several blocks
WKV_SHAPES = [(2, 12, 40)]


@needs_triton
def test_kernel_errors_are_small_for_the_kernels():
    errors = kernel_errors.kernel_errors("cpu", torch.float32, STABLEMASK_SHAPES, WKV_SHAPES)
    assert (errors["device"], errors["dtype"], errors["interpreted"]) == ("cpu", "float32", True)
    assert [r["shape"] for r in errors["stablemask"]] == [list(s) for s in STABLEMASK_SHAPES]
    for row in errors["stablemask"]:
        assert row["fwd_abs"] <= 1e-5 and row["grad_rel"] <= 1e-4, row
    (wkv,) = errors["wkv"]
    assert wkv["fwd_rel"] <= 1e-5 and wkv["state_rel"] <= 1e-5 and wkv["grad_rel"] <= 1e-4, wkv


@needs_triton
def test_kernel_errors_expose_a_faulty_kernel(monkeypatch):
    attention, wkv_kernel = kernel_errors.stablemask_attention, kernel_errors.wkv_triton

    def no_sink(q, k, v, gamma):  # plain causal attention: the pseudo mass dropped
        return attention(q, k, v, gamma, horizon=1)

    def no_bonus(time_decay, time_first, k, v):  # the current token's bonus u ignored
        return wkv_kernel(time_decay, time_first * 0, k, v)

    monkeypatch.setattr(kernel_errors, "stablemask_attention", no_sink)
    monkeypatch.setattr(kernel_errors, "wkv_triton", no_bonus)
    errors = kernel_errors.kernel_errors("cpu", torch.float32, STABLEMASK_SHAPES[:1], WKV_SHAPES)
    (sm,), (wkv,) = errors["stablemask"], errors["wkv"]
    assert sm["fwd_abs"] > 0.1 and wkv["fwd_rel"] > 0.1 and math.isfinite(wkv["grad_rel"])
