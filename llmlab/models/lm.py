"""`lm`: a LLaMA-style decoder-only transformer for pretraining from scratch, with softmax or StableMask attention.

Blocks are pre-RMSNorm (eps 1e-5) attention + SwiGLU, no biases, untied input and output embeddings. The attention
kind (`softmax | stablemask`), position scheme (`rope | alibi | none`) and implementation are switches of one
attention module:

| impl      | softmax                         | stablemask, rope/none               | stablemask, alibi            |
|-----------|---------------------------------|-------------------------------------|------------------------------|
| sdpa      | causal SDPA (ALiBi: float mask) | `stablemask_sdpa` (sink key)        | SDPA + sink key, float mask  |
| reference | dense softmax                   | `stablemask_reference` (the paper)  | dense sink-column form       |
| triton    | causal SDPA                     | `stablemask_attention` (GPU kernel) | not supported                |

ALiBi with StableMask (spec 3.4): the bias -m_h (i - j) goes on the real scores only, the pseudo logits stay as they
are. The helpers in `llmlab.models.stablemask` take no bias, so that combination uses the sink-logit identity here:
one extra key with value 0 whose score is tau_i (`sink_logits_on`), the ALiBi bias in a float mask. A sliding attention
window (evaluation only) and recording attention maps (sink metrics) use the dense path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.config import LMArch, choices_of
from llmlab.errors import LlmlabError
from llmlab.kernels.stablemask_sink import sink_logits_on
from llmlab.models.stablemask import alibi_slopes, stablemask_reference, stablemask_sdpa

ATTENTIONS = choices_of(LMArch, "attention")  # the schema's choices: also checked when a config is composed
POSITIONS = choices_of(LMArch, "position")
IMPLS = choices_of(LMArch, "attn_impl")
HORIZONS = choices_of(LMArch, "horizon")


def ffn_hidden(arch: LMArch) -> int:
    """SwiGLU width: `ffn_hidden`, or 2/3 * 4 * d_model rounded up to a multiple of `ffn_multiple` (LLaMA)."""
    if arch.ffn_hidden:
        return arch.ffn_hidden
    return arch.ffn_multiple * math.ceil(8 * arch.d_model / 3 / arch.ffn_multiple)


def parse_gamma(gamma: str, n_head: int) -> torch.Tensor:
    """StableMask's decay per head: the ALiBi slopes, or one positive float for all heads."""
    if str(gamma) in ("alibi", "alibi_slopes"):
        return alibi_slopes(n_head)
    try:
        value = float(gamma)
    except ValueError:
        raise LlmlabError(f"model.lm.gamma must be 'alibi' or a positive number, got '{gamma}'") from None
    if not (value > 0 and math.isfinite(value)):
        raise LlmlabError(f"model.lm.gamma must be > 0, got {value}")
    return torch.full((n_head,), value)


def horizon_value(horizon: str, train_len: int) -> int | float | None:
    """The horizon handed to the StableMask helpers: the training length, infinity, or None (current length)."""
    return {"train_len": train_len, "infinite": math.inf, "none": None}[horizon]


def check_arch(arch: LMArch) -> None:
    for key, value, allowed in (
        ("attention", arch.attention, ATTENTIONS),
        ("position", arch.position, POSITIONS),
        ("attn_impl", arch.attn_impl, IMPLS),
        ("horizon", arch.horizon, HORIZONS),
    ):
        if value not in allowed:
            raise LlmlabError(f"model.lm.{key} must be one of {'|'.join(allowed)}, got '{value}'")
    if arch.d_model % arch.n_head or (arch.d_model // arch.n_head) % 2:
        raise LlmlabError(f"model.lm.d_model ({arch.d_model}) must split into {arch.n_head} heads of even size")
    if arch.attn_impl == "triton" and arch.attention == "stablemask" and arch.position == "alibi":
        raise LlmlabError("model.lm.attn_impl=triton supports position rope|none (the kernel takes no ALiBi bias)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (batch, heads, seq, head_dim) by position-dependent angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def score_bias(
    n_q: int, n_k: int, slopes: torch.Tensor | None, window: int | None, device: torch.device
) -> torch.Tensor:
    """Additive float mask (heads or 1, n_q, n_k): ALiBi's -m_h (i - j) on causal keys, -inf above the diagonal and
    outside the window. Queries are the last n_q positions."""
    pos = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    col = torch.arange(n_k, device=device)[None, :]
    visible = col <= pos
    if window:
        visible &= pos - col < window
    dist = (pos - col).float()
    bias = -slopes.to(device)[:, None, None] * dist if slopes is not None else torch.zeros_like(dist)[None]
    return bias.masked_fill(~visible, -math.inf)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    gamma: torch.Tensor | None = None,
    horizon: int | float | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense attention weights (batch, heads, n_q, n_k) in fp32 (fp64 for fp64 inputs) and, for StableMask (`gamma`
    given), the pseudo ratio r_i (batch, heads, n_q): the share of each row given to the masked columns. `bias` is
    the additive mask of `score_bias` (causal, ALiBi, window). StableMask's pseudo columns enter as one sink logit
    tau_i per row, which is exactly the paper's softmax(A*C + P)*C (spec 4.1)."""
    n_q, n_k = q.shape[2], k.shape[2]
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * s
    scores = scores + (bias if bias is not None else score_bias(n_q, n_k, None, None, q.device)).to(dtype)
    if gamma is None:
        return torch.softmax(scores, -1), None
    tau = sink_logits_on(q, n_q, n_k, gamma, horizon, n_heads=q.shape[1])
    full = torch.softmax(torch.cat([scores, tau[None, :, :, None].expand(q.shape[0], -1, -1, 1)], -1), -1)
    return full[..., :n_k], full[..., n_k]


def sink_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: torch.Tensor,
    horizon: int | float | None,
    bias: torch.Tensor,
) -> torch.Tensor:
    """StableMask with an additive bias through SDPA: a zero key/value in front whose score is tau_i (from the mask)."""
    b, h, n_q, _ = q.shape
    tau = sink_logits_on(q, n_q, k.shape[2], gamma, horizon, n_heads=h)
    mask = torch.cat([tau[:, :, None], bias.expand(h, -1, -1)], -1).to(q.dtype)
    k = torch.cat([k.new_zeros(b, h, 1, k.shape[-1]), k], 2)
    v = torch.cat([v.new_zeros(b, h, 1, v.shape[-1]), v], 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head causal self-attention; softmax or StableMask, see the module docstring."""

    def __init__(self, arch: LMArch, train_len: int):
        super().__init__()
        self.arch, self.n_head = arch, arch.n_head
        self.qkv = nn.Linear(arch.d_model, 3 * arch.d_model, bias=False)
        self.proj = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.horizon = horizon_value(arch.horizon, train_len)
        self.gamma = parse_gamma(arch.gamma, arch.n_head).double()  # CPU: the helpers compute tau there
        self.register_buffer("slopes", alibi_slopes(arch.n_head), persistent=False)
        self.window: int | None = None  # a sliding attention window (evaluation)
        self.record = False  # keep the attention weights of the last forward in `recorded` (sink metrics)
        self.recorded: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        a = self.arch
        sm = a.attention == "stablemask"
        gamma = self.gamma if sm else None
        slopes = self.slopes if a.position == "alibi" else None
        dense = self.record or self.window or (a.attn_impl == "reference" and not (sm and slopes is None))
        if dense:
            probs, pseudo = attention_probs(
                q, k, gamma=gamma, horizon=self.horizon, bias=score_bias(n, n, slopes, self.window, x.device)
            )
            if self.record:
                self.recorded = (probs.detach(), None if pseudo is None else pseudo.detach())
            out = (probs @ v.to(probs.dtype)).to(v.dtype)
        elif not sm:
            if slopes is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=score_bias(n, n, slopes, None, x.device).to(q.dtype)
                )
        elif slopes is not None:
            out = sink_sdpa(q, k, v, gamma, self.horizon, score_bias(n, n, slopes, None, x.device))
        elif a.attn_impl == "reference":
            out = stablemask_reference(q, k, v, gamma, horizon=self.horizon)
        elif a.attn_impl == "triton":
            out = triton_attention(q, k, v, gamma, self.horizon)
        else:
            out = stablemask_sdpa(q, k, v, gamma, horizon=self.horizon)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def triton_attention(q, k, v, gamma, horizon):
    import os

    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true"):
        raise LlmlabError("model.lm.attn_impl=triton needs a CUDA GPU; use attn_impl=sdpa on the CPU")
    from llmlab.kernels.stablemask_triton import stablemask_attention

    return stablemask_attention(q, k, v, gamma, horizon=horizon)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, arch: LMArch, train_len: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(arch.d_model, eps=1e-5)
        self.attn = Attention(arch, train_len)
        self.mlp_norm = nn.RMSNorm(arch.d_model, eps=1e-5)
        self.mlp = SwiGLU(arch.d_model, ffn_hidden(arch))

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class LM(nn.Module):
    """Token ids (batch, seq) -> logits (batch, seq, vocab)."""

    def __init__(self, arch: LMArch, vocab_size: int, train_len: int):
        super().__init__()
        check_arch(arch)
        self.arch, self.vocab_size, self.train_len = arch, vocab_size, train_len
        self.embed = nn.Embedding(vocab_size, arch.d_model)
        self.blocks = nn.ModuleList(Block(arch, train_len) for _ in range(arch.n_layer))
        self.norm = nn.RMSNorm(arch.d_model, eps=1e-5)
        self.head = nn.Linear(arch.d_model, vocab_size, bias=False)
        half = arch.d_model // arch.n_head // 2
        inv_freq = arch.rope_theta ** (-torch.arange(half, dtype=torch.float64) / half)
        angles = torch.arange(arch.max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; the residual output projections scaled by 1/sqrt(2 n_layer) (GPT-2)."""
        std = self.arch.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                scaled = name.endswith(("attn.proj.weight", "mlp.down.weight"))
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.arch.n_layer) if scaled else std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        rope = None
        if self.arch.position == "rope":
            if n > self.arch.max_seq_len:
                raise LlmlabError(
                    f"sequence of {n} tokens is longer than model.lm.max_seq_len="
                    f"{self.arch.max_seq_len} (the RoPE table); raise max_seq_len"
                )
            rope = (self.rope_cos[:n], self.rope_sin[:n])
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.norm(x))

    def describe(self) -> dict:
        """The switches a results table groups by."""
        return {"attention": self.arch.attention, "position": self.arch.position}

    def set_window(self, window: int | None) -> None:
        for block in self.blocks:
            block.attn.window = window

    @torch.no_grad()
    def attention_maps(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per layer: attention weights (batch, heads, seq, seq) and the StableMask pseudo ratio (batch, heads, seq)
        (None for softmax), from the dense path."""
        attns = [block.attn for block in self.blocks]
        for a in attns:
            a.record = True
        try:
            self(ids)
            return [a.recorded for a in attns]
        finally:
            for a in attns:
                a.record, a.recorded = False, None

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul parameter (embedding lookup excluded) plus the attention scores
        and weighted sum, 12 * n_layer * d_model * seq_len (forward 4 N^2 D per layer and sequence, x3 with backward,
        the causal half not discounted; PaLM's convention)."""
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith("embed"))
        return 6.0 * matmul + 12.0 * self.arch.n_layer * self.arch.d_model * seq_len
