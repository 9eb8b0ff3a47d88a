"""The RWKV-4 WKV operator in pure PyTorch: a naive recurrence, the stable (max-tracking) recurrence and a chunked form.

Per channel, with decay w = exp(time_decay) > 0 and bonus u = time_first (RWKV spec 2.2):

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})

State: the history sums a, b kept divided by e^pp, i.e. (aa, bb, pp) with a = aa e^pp, b = bb e^pp, each (batch, C);
the empty history is aa = bb = 0, pp = -1e38. Every form takes an optional initial state and returns the final one.

- `wkv_naive`: the recurrence on a and b themselves; overflows once keys pass ~88 in fp32 (tests only).
- `wkv_sequential`: the stable recurrence of the official CUDA kernel, a loop over time; it also serves RNN mode and
  can freeze the state at padded positions (`active`).
- `wkv_chunked`: softmax form inside chunks of `chunk` tokens, all earlier tokens folded into one virtual key per
  channel (spec 2.5); O(T * chunk * C) work, batched over chunks, autograd-friendly. One chunk of length T is the
  O(T^2) per-channel causal softmax reference.

Half-precision inputs are computed in fp32 (fp64 stays fp64); the output has the input dtype, the state fp32/fp64.
"""

from __future__ import annotations

import torch

EMPTY_PP = -1e38  # log-scale of the empty history

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def empty_state(batch: int, channels: int, device, dtype=torch.float32) -> State:
    zeros = torch.zeros(batch, channels, device=device, dtype=dtype)
    return zeros, zeros.clone(), torch.full_like(zeros, EMPTY_PP)


def _prepare(time_decay, time_first, k, v, state):
    dt = compute_dtype(k)
    w = torch.exp(time_decay.to(dt))
    u = time_first.to(dt)
    if state is None:
        state = empty_state(k.shape[0], k.shape[2], k.device, dt)
    return w, u, k.to(dt), v.to(dt), tuple(s.to(dt) for s in state)


def wkv_naive(time_decay, time_first, k, v):
    """The unstabilised recurrence a_t = e^-w a_{t-1} + e^k_t v_t (overflows for large keys; a test reference)."""
    w, u, k, v, _ = _prepare(time_decay, time_first, k, v, None)
    a = torch.zeros_like(k[:, 0])
    b = torch.zeros_like(a)
    ys = []
    for t in range(k.shape[1]):
        cur = torch.exp(u + k[:, t])
        ys.append((a + cur * v[:, t]) / (b + cur))
        a = torch.exp(-w) * a + torch.exp(k[:, t]) * v[:, t]
        b = torch.exp(-w) * b + torch.exp(k[:, t])
    return torch.stack(ys, 1)


def wkv_sequential(
    time_decay, time_first, k, v, state: State | None = None, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, State]:
    """The stable recurrence over time. k, v: (batch, T, C); `active` (batch, T) bool: where False the state is kept
    unchanged (padding) and that position's output is meaningless. Returns (wkv (batch, T, C), final state)."""
    out_dtype = k.dtype
    w, u, k, v, (aa, bb, pp) = _prepare(time_decay, time_first, k, v, state)
    ys = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        q = torch.maximum(pp, u + kt).detach()  # the max-exponents cancel: no gradient through them
        e1, e2 = torch.exp(pp - q), torch.exp(u + kt - q)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        decayed = pp - w
        q = torch.maximum(decayed, kt).detach()
        e1, e2 = torch.exp(decayed - q), torch.exp(kt - q)
        new = (e1 * aa + e2 * vt, e1 * bb + e2, q)
        if active is not None:
            keep = active[:, t, None]
            new = tuple(torch.where(keep, n, o) for n, o in zip(new, (aa, bb, pp)))
        aa, bb, pp = new
    return torch.stack(ys, 1).to(out_dtype), (aa, bb, pp)


def wkv_chunked(time_decay, time_first, k, v, chunk: int = 8, state: State | None = None) -> tuple[torch.Tensor, State]:
    """The chunked parallel form (same result as `wkv_sequential`); full chunks in one batched pass, then the tail."""
    if chunk < 1:
        raise ValueError(f"wkv_chunked: chunk must be >= 1, got {chunk}")
    out_dtype = k.dtype
    w, u, k, v, state = _prepare(time_decay, time_first, k, v, state)
    b, t, c = k.shape
    n_full, tail = divmod(t, chunk)
    ys = []
    if n_full:
        cut = n_full * chunk
        y, state = _chunks(
            w, u, k[:, :cut].reshape(b, n_full, chunk, c), v[:, :cut].reshape(b, n_full, chunk, c), state
        )
        ys.append(y.reshape(b, cut, c))
    if tail:
        y, state = _chunks(w, u, k[:, t - tail :].unsqueeze(1), v[:, t - tail :].unsqueeze(1), state)
        ys.append(y.reshape(b, tail, c))
    return torch.cat(ys, 1).to(out_dtype), state


def _chunks(w, u, k, v, state: State) -> tuple[torch.Tensor, State]:
    """k, v: (batch, n_chunks, L, C). Inside a chunk, query j sees keys i < j with logit k_i - (j-1-i) w, itself with
    u + k_j, and the history before the chunk as one key of log-mass pp - j w + log bb and value aa / bb. Work is laid
    out (batch, n, C, j, i) so the sums over keys are contiguous. The max-exponents are detached: the result does not
    depend on them (they cancel), so their gradient is zero and skipping it is exact."""
    length = k.shape[2]
    pos = torch.arange(length, device=k.device)
    dist = (pos[:, None] - 1 - pos[None, :]).to(k.dtype)  # (query j, key i): j - 1 - i
    bias = torch.where(pos[:, None] == pos[None, :], u[:, None, None], -dist * w[:, None, None])  # (C, j, i)
    bias = bias.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    kt, vt = k.transpose(2, 3), v.transpose(2, 3)  # (batch, n, C, L)
    logits = kt[..., None, :] + bias
    m = logits.amax(-1, keepdim=True).detach()  # finite: the diagonal is always there
    p = torch.exp(logits - m)
    num = (p * vt[..., None, :]).sum(-1)
    den = p.sum(-1)
    m = m.squeeze(-1)

    # Each chunk's own contribution to the state at its end, then the states before every chunk, in order.
    end = kt - (length - 1 - pos).to(k.dtype) * w[:, None]
    m_end = end.amax(-1).detach()
    p_end = torch.exp(end - m_end[..., None])
    a_end, b_end = (p_end * vt).sum(-1), p_end.sum(-1)  # (batch, n, C)
    aa, bb, pp = state
    hist = []
    for i in range(k.shape[1]):
        hist.append((aa, bb, pp))
        decayed = pp - length * w
        q = torch.maximum(decayed, m_end[:, i]).detach()
        e1, e2 = torch.exp(decayed - q), torch.exp(m_end[:, i] - q)
        aa, bb, pp = e1 * aa + e2 * a_end[:, i], e1 * bb + e2 * b_end[:, i], q
    h_aa, h_bb, h_pp = (torch.stack(x, 1)[..., None] for x in zip(*hist))  # (batch, n, C, 1)

    h = h_pp - pos.to(k.dtype) * w[:, None]  # history log-scale seen by query j
    top = torch.maximum(h, m).detach()
    eh, em = torch.exp(h - top), torch.exp(m - top)
    y = (h_aa * eh + num * em) / (h_bb * eh + den * em)
    return y.transpose(2, 3), (aa, bb, pp)


def wkv(
    time_decay, time_first, k, v, impl: str = "chunked", chunk: int = 8, state: State | None = None
) -> tuple[torch.Tensor, State]:
    """WKV by implementation name: sequential | chunked | triton (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if impl == "chunked":
        return wkv_chunked(time_decay, time_first, k, v, chunk, state)
    if impl == "sequential":
        return wkv_sequential(time_decay, time_first, k, v, state)
    if impl == "triton":
        from llmlab.kernels.wkv_triton import wkv_triton

        return wkv_triton(time_decay, time_first, k, v, state)
    raise ValueError(f"unknown WKV implementation '{impl}'; use sequential|chunked|triton")
