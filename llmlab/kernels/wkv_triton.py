"""The RWKV-4 WKV operator as a Triton kernel: the stable recurrence forward and a reverse-scan backward.

One program per (batch row, block of channels) walks the sequence in order, as the official CUDA kernel does (the
operator is sequential in T; parallelism is batch x channels). The forward writes wkv and the state (aa, bb, pp)
*before* every step (3 x B x T x C fp32, the memory price of a backward without recomputation); the backward walks
the sequence in reverse with the gradients of aa and bb as its carry:

    y = (e1 aa + e2 v) / (e1 bb + e2),       e1 = exp(pp - q),     e2 = exp(u + k - q),  q = max(pp, u + k)
    aa' = f1 aa + f2 v,  bb' = f1 bb + f2,   f1 = exp(pp - w - q2), f2 = exp(k - q2),    pp' = q2 = max(pp - w, k)

The max-exponents q, q2 (and so pp) are held constant in the backward: every output is invariant to them (they only
rescale aa, bb), so the derivative with them fixed is the true one. Every factor then stays in [0, 1] or is a ratio
of normalised sums: no overflow in either direction. The gradient of w = exp(time_decay) is multiplied by w; the
gradients of w and u are summed over the batch in PyTorch. The initial state gets no gradient and the final state is
returned without one (training starts from the empty state).

Inputs are cast to fp32 (half-precision models keep the operator and its state in fp32, spec 3.3). Offsets are int32:
B x T x C (x 3 for the saved states) must stay below 2^31, else a clear error. Under TRITON_INTERPRET=1 (set before
the first `import triton` of the process) the kernels run on the CPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
_LIB_INTERPRETED = type(tl.zeros).__name__ == "InterpretedFunction"
INT32_LIMIT = 2**31
EMPTY_PP = -1e38
_EMPTY_PP = tl.constexpr(EMPTY_PP)  # kernels may only read constexpr globals


@triton.jit
def _wkv_fwd_kernel(W, U, K, V, S0, Y, SAVED, S_OUT, T, C, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    w = tl.load(W + cs, mask=mask, other=0.0)
    u = tl.load(U + cs, mask=mask, other=0.0)
    aa = tl.load(S0 + b * 3 * C + cs, mask=mask, other=0.0)
    bb = tl.load(S0 + b * 3 * C + C + cs, mask=mask, other=0.0)
    pp = tl.load(S0 + b * 3 * C + 2 * C + cs, mask=mask, other=_EMPTY_PP)
    for t in range(T):
        off = (b * T + t) * C + cs
        saved = (b * T + t) * 3 * C + cs
        tl.store(SAVED + saved, aa, mask=mask)
        tl.store(SAVED + saved + C, bb, mask=mask)
        tl.store(SAVED + saved + 2 * C, pp, mask=mask)
        kt = tl.load(K + off, mask=mask, other=0.0).to(tl.float32)
        vt = tl.load(V + off, mask=mask, other=0.0).to(tl.float32)
        q = tl.maximum(pp, u + kt)
        e1 = tl.exp(pp - q)
        e2 = tl.exp(u + kt - q)
        tl.store(Y + off, (e1 * aa + e2 * vt) / (e1 * bb + e2), mask=mask)
        q2 = tl.maximum(pp - w, kt)
        f1 = tl.exp(pp - w - q2)
        f2 = tl.exp(kt - q2)
        aa = f1 * aa + f2 * vt
        bb = f1 * bb + f2
        pp = q2
    tl.store(S_OUT + b * 3 * C + cs, aa, mask=mask)
    tl.store(S_OUT + b * 3 * C + C + cs, bb, mask=mask)
    tl.store(S_OUT + b * 3 * C + 2 * C + cs, pp, mask=mask)


@triton.jit
def _wkv_bwd_kernel(W, U, K, V, SAVED, GY, GK, GV, GW, GU, T, C, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    w = tl.load(W + cs, mask=mask, other=0.0)
    u = tl.load(U + cs, mask=mask, other=0.0)
    gaa = tl.zeros([BLOCK_C], dtype=tl.float32)  # dLoss/d(aa, bb) of the state after step t
    gbb = tl.zeros([BLOCK_C], dtype=tl.float32)
    gw = tl.zeros([BLOCK_C], dtype=tl.float32)
    gu = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        off = (b * T + t) * C + cs
        saved = (b * T + t) * 3 * C + cs
        aa = tl.load(SAVED + saved, mask=mask, other=0.0)
        bb = tl.load(SAVED + saved + C, mask=mask, other=0.0)
        pp = tl.load(SAVED + saved + 2 * C, mask=mask, other=0.0)
        kt = tl.load(K + off, mask=mask, other=0.0).to(tl.float32)
        vt = tl.load(V + off, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(GY + off, mask=mask, other=0.0).to(tl.float32)
        # output of step t
        q = tl.maximum(pp, u + kt)
        e1 = tl.exp(pp - q)
        e2 = tl.exp(u + kt - q)
        den = e1 * bb + e2
        y = (e1 * aa + e2 * vt) / den
        gnum = gy / den
        gden = -gy * y / den
        ge2 = (gnum * vt + gden) * e2
        gk = ge2
        gv = gnum * e2
        gu += ge2
        # state update of step t
        q2 = tl.maximum(pp - w, kt)
        f1 = tl.exp(pp - w - q2)
        f2 = tl.exp(kt - q2)
        gw -= (gaa * aa + gbb * bb) * f1
        gk += (gaa * vt + gbb) * f2
        gv += gaa * f2
        tl.store(GK + off, gk, mask=mask)
        tl.store(GV + off, gv, mask=mask)
        gaa = gnum * e1 + gaa * f1
        gbb = gden * e1 + gbb * f1
    tl.store(GW + b * C + cs, gw * w, mask=mask)
    tl.store(GU + b * C + cs, gu, mask=mask)


BLOCK_C_MAX = 64  # channels per program on a GPU (one thread each); the benchmark sweeps it


def _launch(c: int) -> tuple[int, int]:
    """(channels per program, warps per program): one channel per thread, so a block of 32 is one warp."""
    block = min(32 if INTERPRET else BLOCK_C_MAX, triton.next_power_of_2(c))
    return block, max(1, block // 32)


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, time_decay, time_first, k, v, state0):
        b, t, c = k.shape
        w = torch.exp(time_decay.float()).contiguous()
        u = time_first.float().contiguous()
        kf, vf = k.float().contiguous(), v.float().contiguous()
        y = torch.empty(b, t, c, device=k.device, dtype=torch.float32)
        saved = torch.empty(b, t, 3, c, device=k.device, dtype=torch.float32)
        s_out = torch.empty(b, 3, c, device=k.device, dtype=torch.float32)
        block, warps = _launch(c)
        grid = (b, triton.cdiv(c, block))
        _wkv_fwd_kernel[grid](w, u, kf, vf, state0, y, saved, s_out, t, c, BLOCK_C=block, num_warps=warps)
        ctx.save_for_backward(w, u, kf, vf, saved)
        ctx.in_dtype = k.dtype
        ctx.mark_non_differentiable(s_out)
        return y.to(k.dtype), s_out

    @staticmethod
    def backward(ctx, gy, _gs):
        w, u, k, v, saved = ctx.saved_tensors
        b, t, c = k.shape
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        gw = torch.empty(b, c, device=k.device, dtype=torch.float32)
        gu = torch.empty_like(gw)
        block, warps = _launch(c)
        _wkv_bwd_kernel[(b, triton.cdiv(c, block))](
            w, u, k, v, saved, gy.float().contiguous(), gk, gv, gw, gu, t, c, BLOCK_C=block, num_warps=warps
        )
        return gw.sum(0), gu.sum(0), gk.to(ctx.in_dtype), gv.to(ctx.in_dtype), None


def check_inputs(k: torch.Tensor, v: torch.Tensor) -> None:
    """Shape, dtype and size limits, checked before any device work (meta tensors welcome)."""
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"wkv_triton: k and v must be (batch, T, C) of one shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if k.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"wkv_triton: dtype {k.dtype} not supported; use float32, float16 or bfloat16")
    b, t, c = k.shape
    if 3 * b * t * c >= INT32_LIMIT:
        raise ValueError(
            f"wkv_triton: context of {t} tokens is too long for batch {b} x {c} channels: the kernel "
            f"saves 3 x B x T x C states with int32 offsets (< 2^31); use a shorter context, a smaller "
            "batch or wkv_impl=chunked"
        )


@torch.compiler.disable  # a deliberate graph break: compiled models run the kernel as in eager mode
def wkv_triton(time_decay, time_first, k, v, state=None):
    """WKV (batch, T, C) and the final state (aa, bb, pp), each (batch, C) fp32; gradients for time_decay,
    time_first, k and v."""
    check_inputs(k, v)
    if INTERPRET and not _LIB_INTERPRETED:
        raise RuntimeError("wkv_triton: TRITON_INTERPRET=1 was set after `import triton`; set it before")
    if not INTERPRET and k.device.type != "cuda":
        raise ValueError("wkv_triton: needs CUDA tensors (or TRITON_INTERPRET=1 set before import, on CPU)")
    b, _, c = k.shape
    if state is None:
        state0 = torch.zeros(b, 3, c, device=k.device, dtype=torch.float32)
        state0[:, 2] = EMPTY_PP
    else:
        state0 = torch.stack([s.detach().float() for s in state], 1).contiguous()
    y, s_out = _WKV.apply(time_decay, time_first, k, v, state0)
    return y, (s_out[:, 0], s_out[:, 1], s_out[:, 2])
