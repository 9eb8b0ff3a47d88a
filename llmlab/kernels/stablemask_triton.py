"""StableMask as a fused causal FlashAttention kernel in Triton: forward and FlashAttention-2 style backward.

The pseudo-attention mass of row i is one virtual key of value 0 and logit tau_i (`llmlab.kernels.stablemask_sink`),
so the only change to FlashAttention is the online-softmax start: running max m_i = tau_i and running sum l_i = 1
instead of -inf and 0 (m_i = -inf, l_i = 0 where a row has no pseudo column). The saved log-sum-exp then includes the
sink and the standard backward applies unchanged: dS = P * (dO V^T - rowsum(dO * O)), P = exp(S - LSE).

Kernels: forward (one program per query block, keeps LSE), a row-sum preprocess, dK/dV (one program per key block,
looping over the query blocks that see it) and dQ (one program per query block). Scores live in log2 units
(scale * log2(e) folded in, exp2); key blocks above the diagonal are skipped and only blocks straddling it are masked.
tau is precomputed per (head, position) in fp64 and stored as fp32 (an O(heads * seq) table, no N x N mask): the
in-kernel fp32 closed form loses digits near the horizon, where 1 - exp(-(H-1-i)*gamma) is small.

Block sizes are constexprs autotuned on a GPU; under TRITON_INTERPRET=1 (CPU tests; the autotuner needs a GPU) one
fixed small configuration is used. Triton picks the interpreter when a `triton.jit` function is defined, its own
library included, so TRITON_INTERPRET=1 must be set before the first `import triton` of the process.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from llmlab.kernels.stablemask_sink import check_qkv, sink_logits_on

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
# False when TRITON_INTERPRET was set only after triton itself had been imported compiled: kernels cannot run then.
_LIB_INTERPRETED = type(tl.zeros).__name__ == "InterpretedFunction"
INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
LOG2E = 1.4426950408889634


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


FWD_CONFIGS = _configs(
    [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)]
)
DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3), (16, 128, 4, 2)])
DQ_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2), (128, 16, 4, 2)])
TUNE_KEY = ["N_Q", "N_K", "HEAD_DIM"]


def _tuned(configs: list[triton.Config]):
    """`triton.autotune` on a GPU, the plain kernel under the interpreter."""
    return (lambda kernel: kernel) if INTERPRET else triton.autotune(configs=configs, key=TUNE_KEY)


@triton.jit
def _fwd_block(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    start_n,
    offs_n,
    offs_d,
    pos_m,
    N_K,
    qk_scale,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    cols = start_n + offs_n
    if MASKED:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N_K, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=cols[:, None] < N_K, other=0.0)
    else:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None])
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :])
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    if MASKED:
        s = tl.where(pos_m[:, None] >= cols[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@_tuned(FWD_CONFIGS)
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    TAU,
    Out,
    LSE,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_tau,
    H,
    N_Q,
    N_K,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    ctx = N_K - N_Q  # query r sits at position r + ctx
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    pos_m = offs_m + ctx
    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    # The sink as the online-softmax start: (m, l) = (tau, 1), or (-inf, 0) without pseudo mass.
    m_i = tl.load(TAU + off_h * stride_tau + offs_m, mask=row_ok, other=float("-inf"))
    l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    # Key blocks every row of this query block sees in full, then the ones straddling the diagonal (or the end).
    full = (tl.minimum(start_m + ctx + 1, N_K) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M + ctx, N_K)
    for start_n in range(0, full, BLOCK_N):
        acc, m_i, l_i = _fwd_block(
            acc,
            m_i,
            l_i,
            q,
            k_base,
            v_base,
            stride_kn,
            stride_vn,
            start_n,
            offs_n,
            offs_d,
            pos_m,
            N_K,
            qk_scale,
            False,
            PRECISION,
        )
    for start_n in range(full, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_block(
            acc,
            m_i,
            l_i,
            q,
            k_base,
            v_base,
            stride_kn,
            stride_vn,
            start_n,
            offs_n,
            offs_d,
            pos_m,
            N_K,
            qk_scale,
            True,
            PRECISION,
        )
    acc = acc / l_i[:, None]
    tl.store(
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
        acc.to(Out.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _delta_kernel(
    Out, DO, DELTA, stride_ob, stride_oh, stride_om, H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr
):
    """DELTA = rowsum(dO * O) in fp32 (Out and dO share one layout)."""
    bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    off = (bh // H).to(tl.int64) * stride_ob + (bh % H).to(tl.int64) * stride_oh
    ptrs = off + offs_m[:, None] * stride_om + offs_d[None, :]
    row_ok = offs_m < N_Q
    o = tl.load(Out + ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_block(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    stride_qm,
    start_m,
    offs_m,
    offs_d,
    cols,
    ctx,
    N_Q,
    qk_scale,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = start_m + offs_m
    row_ok = rows < N_Q
    q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))  # padded rows: P = 0
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
    if MASKED:
        pt = tl.where(rows[None, :] + ctx >= cols[:, None], pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@_tuned(DKDV_CONFIGS)
@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    H,
    N_Q,
    N_K,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dK, dV for one key block. Q, dO share one layout; K, V, dK, dV another."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    ctx = N_K - N_Q
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < N_K
    kv_off = off_b * stride_kb + off_h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :]
    k = tl.load(K + kv_off, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + kv_off, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_qb + off_h * stride_qh
    lse_base = LSE + bh.to(tl.int64) * N_Q
    delta_base = DELTA + bh.to(tl.int64) * N_Q
    # First query block with a row at position >= start_n; from `full` on every row sees every key of the block.
    lo = (tl.maximum(start_n - ctx, 0) // BLOCK_M) * BLOCK_M
    full = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - ctx, 0), BLOCK_M) * BLOCK_M, N_Q)
    for start_m in range(lo, full, BLOCK_M):
        dk, dv = _dkdv_block(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            stride_qm,
            start_m,
            offs_m,
            offs_d,
            cols,
            ctx,
            N_Q,
            qk_scale,
            True,
            PRECISION,
        )
    for start_m in range(full, N_Q, BLOCK_M):
        dk, dv = _dkdv_block(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            stride_qm,
            start_m,
            offs_m,
            offs_d,
            cols,
            ctx,
            N_Q,
            qk_scale,
            False,
            PRECISION,
        )
    tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_block(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    stride_kn,
    start_n,
    offs_n,
    offs_d,
    pos_m,
    N_K,
    qk_scale,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    cols = start_n + offs_n
    if MASKED:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N_K, other=0.0)
        vt = tl.load(v_base + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N_K, other=0.0)
    else:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None])
        vt = tl.load(v_base + cols[None, :] * stride_kn + offs_d[:, None])
    p = tl.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(pos_m[:, None] >= cols[None, :], p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    return dq


@_tuned(DQ_CONFIGS)
@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    H,
    N_Q,
    N_K,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ for one query block. Q, dO, dQ share one layout; K, V another."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    ctx = N_K - N_Q
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    pos_m = offs_m + ctx
    q_off = off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_off, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_kb + off_h * stride_kh
    full = (tl.minimum(start_m + ctx + 1, N_K) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M + ctx, N_K)
    for start_n in range(0, full, BLOCK_N):
        dq = _dq_block(
            dq,
            q,
            do,
            lse,
            delta,
            k_base,
            v_base,
            stride_kn,
            start_n,
            offs_n,
            offs_d,
            pos_m,
            N_K,
            qk_scale,
            False,
            PRECISION,
        )
    for start_n in range(full, hi, BLOCK_N):
        dq = _dq_block(
            dq,
            q,
            do,
            lse,
            delta,
            k_base,
            v_base,
            stride_kn,
            start_n,
            offs_n,
            offs_d,
            pos_m,
            N_K,
            qk_scale,
            True,
            PRECISION,
        )
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _blocks() -> dict:
    return dict(INTERPRET_BLOCKS) if INTERPRET else {}


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 inputs: no TF32 rounding; ignored for 16-bit inputs


class _StableMaskAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, tau2, sm_scale):
        b, h, n_q, d = q.shape
        n_k = k.shape[2]
        o = torch.empty_like(q)
        lse = torch.empty(b, h, n_q, device=q.device, dtype=torch.float32)
        qk_scale = sm_scale * LOG2E
        grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), b * h)  # noqa: E731
        _fwd_kernel[grid](
            q,
            k,
            v,
            tau2,
            o,
            lse,
            *q.stride()[:3],
            *k.stride()[:3],
            *v.stride()[:3],
            *o.stride()[:3],
            tau2.stride(0),
            h,
            n_q,
            n_k,
            qk_scale,
            HEAD_DIM=d,
            PRECISION=_precision(q.dtype),
            **_blocks(),
        )
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        b, h, n_q, d = q.shape
        n_k = k.shape[2]
        do = do.contiguous()
        delta = torch.empty_like(lse)
        _delta_kernel[(triton.cdiv(n_q, 64), b * h)](o, do, delta, *o.stride()[:3], h, n_q, HEAD_DIM=d, BLOCK_M=64)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        args = dict(HEAD_DIM=d, PRECISION=_precision(q.dtype), **_blocks())
        qk_scale = ctx.sm_scale * LOG2E
        grid_kv = lambda meta: (triton.cdiv(n_k, meta["BLOCK_N"]), b * h)  # noqa: E731
        _dkdv_kernel[grid_kv](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dk,
            dv,
            *q.stride()[:3],
            *k.stride()[:3],
            h,
            n_q,
            n_k,
            qk_scale,
            ctx.sm_scale,
            **args,
        )
        grid_q = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), b * h)  # noqa: E731
        _dq_kernel[grid_q](
            q, k, v, do, lse, delta, dq, *q.stride()[:3], *k.stride()[:3], h, n_q, n_k, qk_scale, ctx.sm_scale, **args
        )
        return dq, dk, dv, None, None


@torch.compiler.disable  # a deliberate graph break: compiled models run the kernel as in eager mode
def stablemask_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    horizon: int | float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """StableMask attention through the fused Triton kernel; same arguments and result as
    `llmlab.models.stablemask.stablemask_reference`. fp32/fp16/bf16 inputs (fp32 accumulation), head dims 16, 32,
    64, 128; queries may be a suffix of the keys (KV cache)."""
    check_qkv(q, k, v)
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"stablemask_attention: head_dim {d} not supported; use one of {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"stablemask_attention: dtype {q.dtype} not supported; use float32, float16 or bfloat16")
    if INTERPRET and not _LIB_INTERPRETED:
        raise RuntimeError("stablemask_attention: TRITON_INTERPRET=1 was set after `import triton`; set it before")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError("stablemask_attention: needs CUDA tensors (or TRITON_INTERPRET=1 set before import, on CPU)")
    n_q, n_k = q.shape[2], k.shape[2]
    tau2 = sink_logits_on(q, n_q, n_k, gamma, horizon, n_heads=q.shape[1]) * LOG2E
    sm_scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _StableMaskAttention.apply(q, k, v, tau2, sm_scale)
