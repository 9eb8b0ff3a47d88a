"""StableMask attention (Yin et al., ICML 2024): causal attention whose masked upper triangle holds pseudo logits.

Row i (0-based) of the paper's mask gets the data-independent value -j*gamma in every masked column j > i; the softmax
runs over the whole row and the pseudo probabilities are dropped afterwards, so a row keeps only 1 - r_i of its mass and
the share it gives away shrinks with i (absolute position). Shapes are (batch, heads, seq, head_dim); `gamma` is a float
or one value per head (`alibi_slopes`).

Because the pseudo logits do not depend on the data, a row's whole pseudo mass folds into one virtual "sink" key with
value 0 and logit tau_i = log sum_{j>i} exp(-j*gamma) ("sink-logit identity"), computed in closed form by
`llmlab.kernels.stablemask_sink`, which the Triton kernel shares.

Horizon (the last pseudo column is at H - 1):
- `None`: H = number of keys, the paper's formula for the sequence at hand (training);
- an int: a fixed horizon, e.g. the training length. Queries at i >= H - 1 get plain softmax. Decoding token by token
  with a KV cache then reproduces the training outputs exactly (the newest query would otherwise see no pseudo mass);
- `math.inf`: the geometric series to infinity, independent of any length.
Use the same horizon in training and inference. Queries may be a suffix of the keys (KV cache): query r sits at
absolute position n_k - n_q + r.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab.kernels.stablemask_sink import check_horizon, check_qkv, gamma_per_head, sink_logits_on

# Stand-in for tau = -inf on the SDPA path: the logit is carried through a q channel, where -inf * 0 would give NaN.
_NO_SINK = -1e3


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's geometric slopes 2^(-8k/n) for n a power of two; otherwise the power-of-two set below n plus every
    other slope of the next power of two (Press et al.). fp32, shape (n_heads,)."""
    if n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be >= 1, got {n_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (k + 1) / n) for k in range(n)]

    low = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(low) + geometric(2 * low)[0::2][: n_heads - low]
    return torch.tensor(slopes, dtype=torch.float32)


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def stablemask_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    horizon: int | float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The paper's formula, dense: O = (softmax_row(A*C + P) * C) V, A = q k^T * scale, C the causal 0/1 mask and
    P[i, j] = -j*gamma for masked columns j > i inside the horizon, 0 on and below the diagonal.

    The score matrix has max(n_k, H) columns: pseudo columns past the last key (H > n_k) are materialised as such, and
    masked columns at or beyond H get -inf. An infinite horizon cannot be materialised: its columns from n_k on are one
    extra column holding their (row-independent) log-sum-exp. O(n_q * n_k) memory; for tests. Maths in fp32 (fp64 for
    fp64 inputs); the result has q's dtype.
    """
    check_qkv(q, k, v)
    check_horizon(horizon)
    n_q, n_k, heads = q.shape[2], k.shape[2], q.shape[1]
    g = gamma_per_head(gamma, heads)
    dtype = torch.promote_types(q.dtype, torch.float32)
    a = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * _scale(q, scale)
    h = n_k if horizon is None else horizon
    width = n_k if h == math.inf else max(n_k, h)
    pos = torch.arange(n_k - n_q, n_k, device=q.device)[:, None]
    col = torch.arange(width, device=q.device)[None, :]
    causal = (col <= pos).to(dtype)
    g_dev = g.to(device=q.device, dtype=dtype)[:, None, None]
    pseudo = torch.where(col <= pos, 0.0, torch.where(col < h, -col.to(dtype) * g_dev, -math.inf))  # (heads, n_q, W)
    if h == math.inf:  # the columns j >= n_k, summed: e^{-n_k g} / (1 - e^{-g}) for every row
        tail = -n_k * g - torch.log(-torch.expm1(-g))
        pseudo = torch.cat([pseudo, tail.to(device=q.device, dtype=dtype)[:, None, None].expand(heads, n_q, 1)], -1)
        causal = torch.cat([causal, causal.new_zeros(n_q, 1)], -1)
    a = F.pad(a, (0, causal.shape[-1] - n_k))  # real scores sit in the first n_k columns
    scores = a * causal + pseudo
    att = torch.softmax(scores, dim=-1) * causal
    return (att[..., :n_k] @ v.to(dtype)).to(q.dtype)


def stablemask_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    horizon: int | float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """StableMask through `F.scaled_dot_product_attention` with one extra sink key of value 0 and logit tau_i.

    The per-row logit rides in an extra q channel (tau_i / scale) that only the sink key reads (its k channel is 1,
    the real keys' 0), so no float mask is needed. For n_q == n_k a dummy query is prepended next to the sink key and
    the square `is_causal=True` mask does the rest (the flash backend stays usable); a KV-cache suffix uses a boolean
    mask instead. The channel dimension is padded to a multiple of 8 for the fused backends.
    """
    check_qkv(q, k, v)
    b, heads, n_q, d = q.shape
    n_k = k.shape[2]
    s = _scale(q, scale)
    tau = sink_logits_on(q, n_q, n_k, gamma, horizon, n_heads=heads)
    sink_q = (tau.clamp(min=_NO_SINK) / s).to(q.dtype)[None, :, :, None].expand(b, heads, n_q, 1)
    pad = 8 - (d + 1) % 8 if (d + 1) % 8 else 0
    qx = torch.cat([q, sink_q, q.new_zeros(b, heads, n_q, pad)], -1)
    kx = torch.cat([k, k.new_zeros(b, heads, n_k, 1 + pad)], -1)
    vx = torch.cat([v, v.new_zeros(b, heads, n_k, 1 + pad)], -1)
    sink_k = torch.zeros_like(kx[:, :, :1])
    sink_k[..., d] = 1.0
    kx = torch.cat([sink_k, kx], 2)
    vx = torch.cat([torch.zeros_like(vx[:, :, :1]), vx], 2)
    if n_q == n_k:
        qx = torch.cat([torch.zeros_like(qx[:, :, :1]), qx], 2)
        out = F.scaled_dot_product_attention(qx, kx, vx, is_causal=True, scale=s)[:, :, 1:]
    else:
        pos = torch.arange(n_k - n_q, n_k, device=q.device)[:, None]
        mask = torch.arange(-1, n_k, device=q.device)[None, :] <= pos  # column 0 is the sink: always visible
        out = F.scaled_dot_product_attention(qx, kx, vx, attn_mask=mask, scale=s)
    return out[..., :d]
