"""Max errors of the Triton kernels against their PyTorch references, forward and backward, as one JSON line.

    python -m tests.gpu.kernel_errors     # CUDA, bf16, the shapes below; TRITON_INTERPRET must be unset

tests/gpu/test_kernels.py runs this in a subprocess (the pytest session imported Triton interpreted) and asserts on
the numbers; tests/unit/test_kernel_errors.py calls `kernel_errors` on the CPU under the interpreter with tiny
shapes and fp32 (the interpreter's bf16 `tl.dot` is wrong), so only the device and the dtype differ between the two.

- StableMask (`stablemask_attention` vs `stablemask_reference`, fp32 maths on the same inputs, ALiBi-slope gamma):
  `fwd_abs` max |O - O_ref|; `grad_rel` max over q, k, v of max |dX - dX_ref| / max |dX_ref| (the metrics of
  `llmlab.bench.stablemask_gpu`).
- WKV (`wkv_triton` vs `wkv_sequential`, time_decay / time_first in fp32 as in a model, k and v in `dtype`): `fwd_rel`,
  `state_rel` (the final aa, bb, pp) and `grad_rel` over time_decay, time_first, k, v, each max error / max |ref|.
"""

from __future__ import annotations

import json

import torch

from llmlab.kernels import stablemask_triton
from llmlab.kernels.stablemask_triton import stablemask_attention
from llmlab.kernels.wkv_triton import wkv_triton
from llmlab.models.stablemask import alibi_slopes, stablemask_reference
from llmlab.models.wkv import wkv_sequential

# (batch, heads, queries, keys, head_dim): a length that is no multiple of any block size; a KV-cache suffix
STABLEMASK_SHAPES = ((2, 4, 1000, 1000, 64), (1, 2, 100, 300, 64))  # one head dim: one set of autotuned compiles
# (batch, T, channels): several channel blocks; a partial block
WKV_SHAPES = ((2, 512, 768), (1, 64, 100))


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def stablemask_errors(shape: tuple, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    b, h, n_q, n_k, d = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (
        torch.randn(b, h, n, d, generator=gen, device=device).to(dtype).requires_grad_() for n in (n_q, n_k, n_k)
    )
    gamma = alibi_slopes(h)
    out = stablemask_attention(q, k, v, gamma)
    ref = stablemask_reference(q, k, v, gamma)
    grad = torch.randn(out.shape, generator=gen, device=device).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    return {
        "shape": list(shape),
        "fwd_abs": (out.float() - ref.float()).abs().max().item(),
        "grad_rel": max(rel(a, r) for a, r in zip(grads, ref_grads)),
    }


def wkv_errors(shape: tuple, device: str, dtype: torch.dtype, seed: int = 0, key_scale: float = 3.0) -> dict:
    b, t, c = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    time_decay, time_first = (torch.randn(c, generator=gen, device=device).requires_grad_() for _ in range(2))
    k = (torch.randn(b, t, c, generator=gen, device=device) * key_scale).to(dtype).requires_grad_()
    v = torch.randn(b, t, c, generator=gen, device=device).to(dtype).requires_grad_()
    args = (time_decay, time_first, k, v)
    y, state = wkv_triton(*args)
    ref, ref_state = wkv_sequential(*args)
    grad = torch.randn(y.shape, generator=gen, device=device).to(dtype)
    grads = torch.autograd.grad(y, args, grad)
    ref_grads = torch.autograd.grad(ref, args, grad)
    return {
        "shape": list(shape),
        "fwd_rel": rel(y, ref),
        "state_rel": max(rel(s, r) for s, r in zip(state, ref_state)),
        "grad_rel": max(rel(a, r) for a, r in zip(grads, ref_grads)),
    }


def kernel_errors(
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    stablemask_shapes: tuple = STABLEMASK_SHAPES,
    wkv_shapes: tuple = WKV_SHAPES,
) -> dict:
    """Both kernels' errors at every shape, and whether the kernels ran interpreted."""
    return {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "interpreted": stablemask_triton.INTERPRET,
        "stablemask": [stablemask_errors(s, device, dtype) for s in stablemask_shapes],
        "wkv": [wkv_errors(s, device, dtype) for s in wkv_shapes],
    }


if __name__ == "__main__":
    print(json.dumps(kernel_errors()))
