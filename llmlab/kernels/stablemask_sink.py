"""StableMask's sink logits and the input checks that its implementations (`llmlab.models.stablemask`, the Triton
kernel) share; torch only.

A row's pseudo-attention mass is one virtual key of value 0 and logit tau_i = log sum_{j>i}^{H-1} exp(-j*gamma)
(`llmlab.models.stablemask` explains the identity and the horizon H: None, an int, or `math.inf`).
"""

from __future__ import annotations

import functools
import math

import torch


def gamma_per_head(gamma: float | torch.Tensor, n_heads: int) -> torch.Tensor:
    """`gamma` as a float64 CPU tensor of shape (n_heads,); every value must be finite and > 0."""
    g = torch.as_tensor(gamma, dtype=torch.float64).detach().cpu()
    if g.dim() == 0:
        g = g.expand(n_heads)
    if g.shape != (n_heads,):
        raise ValueError(f"stablemask: gamma must be a float or have shape ({n_heads},), got {tuple(g.shape)}")
    if not (torch.isfinite(g).all() and (g > 0).all()):
        raise ValueError("stablemask: gamma must be finite and > 0")
    return g.clone()


def check_horizon(horizon: int | float | None) -> None:
    if horizon is None or horizon == math.inf:
        return
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"stablemask: horizon must be None, an int >= 1 or math.inf, got {horizon!r}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One-line ValueErrors for shapes the three implementations do not support."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        dims = f"{q.dim()}/{k.dim()}/{v.dim()}"
        raise ValueError(f"stablemask: q, k, v must be (batch, heads, seq, head_dim), got {dims}-D tensors")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"stablemask: batch/heads differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-1] != v.shape[-1]:
        raise ValueError(f"stablemask: head dims differ: q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"stablemask: k has {k.shape[2]} positions but v has {v.shape[2]}")
    if q.shape[2] > k.shape[2] or q.shape[2] == 0:
        raise ValueError(f"stablemask: need 1 <= query length <= key length, got {q.shape[2]} and {k.shape[2]}")
    if q.dtype != k.dtype or k.dtype != v.dtype:
        raise ValueError(f"stablemask: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


def sink_logits(
    n_q: int, n_k: int, gamma: float | torch.Tensor, horizon: int | float | None = None, n_heads: int | None = None
) -> torch.Tensor:
    """tau[h, r] = log sum_{j=i+1}^{H-1} exp(-j*gamma_h) for query r at position i = n_k - n_q + r: a float64 CPU
    tensor of shape (heads, n_q), -inf where a row has no pseudo column; heads = 1 for a float gamma unless given."""
    check_horizon(horizon)
    heads = n_heads or (1 if torch.as_tensor(gamma).dim() == 0 else len(gamma))
    g = gamma_per_head(gamma, heads)[:, None]
    pos = torch.arange(n_k - n_q, n_k, dtype=torch.float64)[None, :]
    # sum_{j=i+1}^{H-1} e^{-j g} = e^{-(i+1) g} (1 - e^{-(H-1-i) g}) / (1 - e^{-g}); -expm1 keeps small g g accurate.
    tau = -(pos + 1) * g - torch.log(-torch.expm1(-g))
    h = n_k if horizon is None else horizon
    if h != math.inf:
        remaining = (h - 1 - pos).clamp(min=0)
        tau = tau + torch.log(-torch.expm1(-remaining * g))
    return tau


def sink_logits_on(
    like: torch.Tensor,
    n_q: int,
    n_k: int,
    gamma: float | torch.Tensor,
    horizon: int | float | None = None,
    n_heads: int | None = None,
) -> torch.Tensor:
    """`sink_logits` on the device of `like`, fp64 for fp64 inputs and fp32 otherwise, cached per shape: copying a
    fresh CPU tensor to a GPU would make the host wait for the GPU at every attention call. Do not modify the
    result in place."""
    g = torch.as_tensor(gamma, dtype=torch.float64)
    key = float(g) if g.dim() == 0 else tuple(g.detach().cpu().flatten().tolist())
    dtype = torch.promote_types(like.dtype, torch.float32)
    return _sink_logits_cached(like.device, dtype, n_q, n_k, key, horizon, n_heads)


@functools.lru_cache(maxsize=64)
def _sink_logits_cached(device, dtype, n_q, n_k, gamma_key, horizon, n_heads) -> torch.Tensor:
    gamma = torch.tensor(gamma_key, dtype=torch.float64) if isinstance(gamma_key, tuple) else gamma_key
    return sink_logits(n_q, n_k, gamma, horizon, n_heads=n_heads).to(device=device, dtype=dtype)
