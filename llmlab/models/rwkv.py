"""RWKV-4 (Peng et al., 2023; RWKV spec): an RNN trained like a transformer, run in parallel or token by token.

    x = ln0(emb(ids));  per block: x += att(ln1(x)); x += ffn(ln2(x));  logits = head(ln_out(x))

- token shift: mix(mu) = mu * x_t + (1 - mu) * x_{t-1}, with x_{-1} = 0 (or the carried state);
- time mixing ("att"): r, k, v = W_r mix(mu_r), W_k mix(mu_k), W_v mix(mu_v); out = W_o (sigmoid(r) * wkv(k, v)),
  WKV with decay w = exp(time_decay) and bonus u = time_first (`llmlab.models.wkv`, `llmlab.kernels.wkv_triton`);
- channel mixing ("ffn"): sigmoid(W'_r mix(mu'_r)) * W'_v relu(W'_k mix(mu'_k))^2;
- no positional embedding, no biases in the linear maps, untied head, no head_qk.

Parameter names and shapes are the official RWKV-4 checkpoint layout (`emb.weight`, `blocks.0.ln0.weight`,
`blocks.N.att.time_decay` (C,), `blocks.N.att.time_mix_k` (1, 1, C), `blocks.N.ffn.key.weight` (F, C),
`ln_out.weight`, `head.weight`, ...), so `load_rwkv_checkpoint` reads a user's `.pth` (weights only) or safetensors.

RNN mode: the state is a (n_layer, 5, batch, C) tensor per sequence batch, fixed in size: per layer the ffn and att
token-shift inputs and the WKV state (aa, bb, pp), in the official slot order; it stays fp32 in half-precision models.
`run(ids, state, lengths)` continues a state over a chunk of tokens (right padding allowed: positions >= lengths do
not change the state) and returns the logits and the new state; `generate` decodes greedily.

Training: `forward(ids)` uses `arch.wkv_impl`; L2Wrap (the official trainer's auxiliary logit loss) adds
l2wrap / (B T) * max_logit to the gradient of each position's largest logit, pushing logits towards 0 without changing
the loss value. `param_groups` gives time_decay 2x and time_first 3x the learning rate, no weight decay (the official
layerwise LR). fp16 activations are checked after every block: an overflow is an error, not silent NaNs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from llmlab.config import RWKVArch, choices_of
from llmlab.errors import LlmlabError
from llmlab.models.wkv import compute_dtype, empty_state, wkv, wkv_sequential

IMPLS = choices_of(RWKVArch, "wkv_impl")  # the schema's choices: also checked when a config is composed
INITS = choices_of(RWKVArch, "init")
SLOTS = 5  # per layer: ffn x_prev, att x_prev, aa, bb, pp


def ffn_width(arch: RWKVArch) -> int:
    return arch.ffn_hidden or 4 * arch.d_model


def check_arch(arch: RWKVArch) -> None:
    if arch.wkv_impl not in IMPLS:
        raise LlmlabError(f"model.rwkv.wkv_impl must be one of {'|'.join(IMPLS)}, got '{arch.wkv_impl}'")
    if arch.init not in INITS:
        raise LlmlabError(f"model.rwkv.init must be one of {'|'.join(INITS)}, got '{arch.init}'")
    if arch.head_qk:
        raise LlmlabError("model.rwkv.head_qk=true is not supported (the Pile RWKV-4 models use head_qk=false)")
    if min(arch.n_layer, arch.d_model, arch.chunk_size, arch.ctx_len) < 1:
        raise LlmlabError("model.rwkv.n_layer, d_model, chunk_size and ctx_len must be >= 1")


class L2Wrap(torch.autograd.Function):
    """Identity on the logits; backward adds coef / (B T) * max_logit at every position's argmax."""

    @staticmethod
    def forward(ctx, logits, coef: float):
        ctx.save_for_backward(logits)
        ctx.coef = coef
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        (logits,) = ctx.saved_tensors
        top, idx = logits.max(-1, keepdim=True)
        extra = torch.zeros_like(logits).scatter_(-1, idx, top * (ctx.coef / (logits.shape[0] * logits.shape[1])))
        return grad + extra, None


def token_shift(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t of x (batch, T, C): the carried `prev` (batch, C) or zeros at t = 0."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], 1)


def last_real(x: torch.Tensor, lengths: torch.Tensor | None, prev: torch.Tensor | None) -> torch.Tensor:
    """Each row's last real position of x (batch, T, C) ((batch, C)); rows of length 0 keep `prev`."""
    if lengths is None:
        return x[:, -1]
    picked = x[torch.arange(x.shape[0], device=x.device), (lengths - 1).clamp_min(0)]
    if prev is None:
        prev = torch.zeros_like(picked)
    return torch.where((lengths > 0)[:, None], picked, prev.to(x.dtype))


class TimeMix(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.time_decay = nn.Parameter(torch.zeros(d))
        self.time_first = nn.Parameter(torch.zeros(d))
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_v = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, d))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)

    def forward(self, x, prev, impl: str, chunk: int, state, active):
        xx = token_shift(x, prev)
        k = self.key(x * self.time_mix_k + xx * (1 - self.time_mix_k))
        v = self.value(x * self.time_mix_v + xx * (1 - self.time_mix_v))
        r = self.receptance(x * self.time_mix_r + xx * (1 - self.time_mix_r))
        if active is not None:
            y, state = wkv_sequential(self.time_decay, self.time_first, k, v, state, active)
        else:
            y, state = wkv(self.time_decay, self.time_first, k, v, impl, chunk, state)
        return self.output(torch.sigmoid(r) * y.to(r.dtype)), state


class ChannelMix(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, d))
        self.key = nn.Linear(d, hidden, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x, prev):
        xx = token_shift(x, prev)
        k = torch.relu(self.key(x * self.time_mix_k + xx * (1 - self.time_mix_k))) ** 2
        return torch.sigmoid(self.receptance(x * self.time_mix_r + xx * (1 - self.time_mix_r))) * self.value(k)


class Block(nn.Module):
    def __init__(self, arch: RWKVArch, layer: int):
        super().__init__()
        d = arch.d_model
        if layer == 0:
            self.ln0 = nn.LayerNorm(d)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.att = TimeMix(d)
        self.ffn = ChannelMix(d, ffn_width(arch))


class RWKV(nn.Module):
    """Token ids (batch, seq) -> logits (batch, seq, vocab); `run` carries the recurrent state."""

    family = "rwkv"

    def __init__(self, arch: RWKVArch, vocab_size: int, train_len: int):
        super().__init__()
        check_arch(arch)
        self.arch, self.vocab_size, self.train_len = arch, vocab_size, train_len
        self.emb = nn.Embedding(vocab_size, arch.d_model)
        self.blocks = nn.ModuleList(Block(arch, i) for i in range(arch.n_layer))
        self.ln_out = nn.LayerNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """`official`: the RWKV-4 table (spec 5); `normal`: every weight random and O(1)-scaled (tests)."""
        a, d, n_layer = self.arch, self.arch.d_model, self.arch.n_layer
        if a.init == "normal":
            for name, p in self.named_parameters():
                if name.endswith(("time_decay", "time_first")):
                    nn.init.normal_(p, 0.0, 1.0)
                elif "time_mix" in name:
                    nn.init.uniform_(p, 0.0, 1.0)
                elif name.startswith("emb"):
                    nn.init.normal_(p, 0.0, 1.0)
                elif p.dim() == 2:
                    nn.init.normal_(p, 0.0, 1.0 / math.sqrt(p.shape[1]))
                elif name.endswith("weight"):
                    nn.init.uniform_(p, 0.5, 1.5)
                else:
                    nn.init.normal_(p, 0.0, 0.1)
            return
        n = torch.arange(d, dtype=torch.float64)
        ddd = n / d
        for layer, block in enumerate(self.blocks):
            r01 = layer / (n_layer - 1) if n_layer > 1 else 0.0
            r10 = 1.0 - layer / n_layer
            att, ffn = block.att, block.ffn
            att.time_decay.copy_(-5 + 8 * (n / max(d - 1, 1)) ** (0.7 + 1.3 * r01))
            att.time_first.copy_(math.log(0.3) + 0.5 * (((n + 1) % 3) - 1))
            att.time_mix_k.copy_((ddd**r10).view(1, 1, d))
            att.time_mix_v.copy_((ddd**r10 + 0.3 * r01).view(1, 1, d))
            att.time_mix_r.copy_((ddd ** (0.5 * r10)).view(1, 1, d))
            ffn.time_mix_k.copy_((ddd**r10).view(1, 1, d))
            ffn.time_mix_r.copy_((ddd**r10).view(1, 1, d))
            for lin in (att.key, att.receptance, att.output, ffn.value, ffn.receptance):
                nn.init.zeros_(lin.weight)
            for lin in (att.value, ffn.key):
                rows, cols = lin.weight.shape
                nn.init.orthogonal_(lin.weight, gain=math.sqrt(rows / cols) if rows > cols else 1.0)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(self.vocab_size / d))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        impl = self.arch.wkv_impl
        if impl == "triton":
            if ids.shape[1] > self.arch.ctx_len:
                raise LlmlabError(
                    f"sequence of {ids.shape[1]} tokens is longer than model.rwkv.ctx_len="
                    f"{self.arch.ctx_len} (the triton path's limit); raise it or use wkv_impl=chunked"
                )
            if ids.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true"):
                raise LlmlabError("model.rwkv.wkv_impl=triton needs a CUDA GPU; use wkv_impl=chunked on the CPU")
        logits, _ = self.run(ids, impl=impl)
        if self.training and torch.is_grad_enabled() and self.arch.l2wrap > 0:
            logits = L2Wrap.apply(logits, self.arch.l2wrap)
        return logits

    def empty_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The state before any token: (n_layer, 5, batch, C), x_prev = aa = bb = 0, pp = -1e38."""
        aa, bb, pp = empty_state(batch, self.arch.d_model, device or self.head.weight.device, dtype)
        one = torch.stack([aa, aa, aa, bb, pp])
        return one[None].repeat(self.arch.n_layer, 1, 1, 1)

    def run(
        self,
        ids: torch.Tensor,
        state: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        impl: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, T, vocab) of `ids` continuing `state` (None: empty) and the state after each row's last
        real token (`lengths`: real tokens per row, padding after them; None: all real). With `lengths` the WKV is the
        sequential form (it can skip padding); otherwise `impl` (default: chunked, whatever the training impl)."""
        impl = impl or (
            "chunked" if self.arch.wkv_impl == "triton" and ids.device.type != "cuda" else self.arch.wkv_impl
        )
        active = None
        if lengths is not None:
            lengths = lengths.to(ids.device)
            active = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
        x = self.emb(ids)
        x = self.blocks[0].ln0(x)
        new = []
        for i, block in enumerate(self.blocks):
            s = state[i] if state is not None else None
            xa = block.ln1(x)
            att, wkv_state = block.att(
                xa,
                None if s is None else s[1],
                impl,
                self.arch.chunk_size,
                None if s is None else (s[2], s[3], s[4]),
                active,
            )
            x = x + att
            xf = block.ln2(x)
            x = x + block.ffn(xf, None if s is None else s[0])
            if x.dtype == torch.float16 and not torch.isfinite(x).all():
                raise LlmlabError(f"fp16 overflow in blocks.{i} (non-finite activations); use bfloat16 or float32")
            sd = compute_dtype(wkv_state[0])
            new.append(
                torch.stack(
                    [
                        last_real(xf, lengths, None if s is None else s[0]).to(sd),
                        last_real(xa, lengths, None if s is None else s[1]).to(sd),
                        *(t.to(sd) for t in wkv_state),
                    ]
                )
            )
        return self.head(self.ln_out(x)), torch.stack(new)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation (batch, max_new_tokens) of `ids` (batch, T) in RNN mode."""
        logits, state = self.run(ids)
        out = []
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            out.append(nxt)
            logits, state = self.run(nxt[:, None], state)
        return torch.stack(out, 1) if out else ids.new_zeros(ids.shape[0], 0)

    def describe(self) -> dict:
        """The switches a results table groups by."""
        return {"family": "rwkv4"}

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul parameter (head included, embedding lookup excluded) plus ~20
        FLOPs per channel and layer for the WKV recurrence, x3 with backward; independent of `seq_len`."""
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith("emb"))
        return 6.0 * matmul + 60.0 * self.arch.n_layer * self.arch.d_model

    def param_groups(self, weight_decay: float, lr: float) -> list[dict]:
        """Weight decay on the matrices only; time_decay at 2x and time_first at 3x the learning rate (official)."""
        decay, plain, td, tf = [], [], [], []
        for name, p in self.named_parameters():
            if name.endswith("att.time_decay"):
                td.append(p)
            elif name.endswith("att.time_first"):
                tf.append(p)
            else:
                (decay if p.dim() == 2 else plain).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": plain, "weight_decay": 0.0, "lr": lr},
            {"params": td, "weight_decay": 0.0, "lr": 2 * lr},
            {"params": tf, "weight_decay": 0.0, "lr": 3 * lr},
        ]


# ---- official checkpoints


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a `.pth`/`.pt` (tensors only: torch.load(weights_only=True))."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmlabError(f"RWKV checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - a corrupt or truncated file
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise LlmlabError(f"'{path}' cannot be read as safetensors: {first}") from e
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling refusal or corrupt file
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise LlmlabError(f"'{path}' cannot be read as a weights-only checkpoint: {first}") from e
        if not isinstance(weights, dict):
            raise LlmlabError(f"'{path}' holds a {type(weights).__name__}, not a state dict")
        return weights
    raise LlmlabError(f"RWKV checkpoint '{path}': unknown format (use .safetensors or .pth)")


def load_weights(model: RWKV, weights: dict[str, torch.Tensor]) -> RWKV:
    """Copy `weights` (official key names) into `model`; a missing, unexpected or mis-shaped key is a one-line
    LlmlabError naming it."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise LlmlabError(f"RWKV checkpoint is missing key '{name}'")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise LlmlabError(
                f"RWKV checkpoint key '{name}' has shape {tuple(weights[name].shape)}, the model "
                f"expects {tuple(tensor.shape)}"
            )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise LlmlabError(
            f"RWKV checkpoint has unexpected key '{extra[0]}' (head_qk and other variants are not supported)"
        )
    model.load_state_dict({k: weights[k].to(expected[k].dtype) for k in expected})
    return model


def load_rwkv_checkpoint(path: str | Path, **arch_overrides) -> RWKV:
    """An RWKV-4 model (CPU, eval mode) from an official-layout checkpoint; the shape is read from the weights."""
    weights = read_weights(path)
    for key in ("emb.weight", "blocks.0.ffn.key.weight"):
        if key not in weights:
            raise LlmlabError(f"RWKV checkpoint is missing key '{key}'")
    vocab, d = weights["emb.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    arch = RWKVArch(
        **{
            "n_layer": n_layer,
            "d_model": d,
            "ffn_hidden": weights["blocks.0.ffn.key.weight"].shape[0],
            **arch_overrides,
        }
    )
    return load_weights(RWKV(arch, vocab, arch.ctx_len), weights).train(False)
