"""The absolute-position probe (StableMask spec S1): can a model tell where it is in a run of identical tokens?

Input: N copies of one token (drawn per sequence); target at position i: the bucket floor(k * i / N) (`bucket`) or
i mod k (`mod`). With causal softmax attention and a relative (or no) position scheme every position averages the
same values, so every position gets the same output and accuracy stays at chance (the largest class share, 1/k).
StableMask's pseudo mass falls with i, so its outputs (1 - r_i) v differ per position and the task is learnable.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from llmlab.config import LMArch
from llmlab.errors import LlmlabError
from llmlab.models.lm import LM


def targets(task: str, n: int, k: int) -> torch.Tensor:
    i = torch.arange(n)
    if task == "bucket":
        return (k * i) // n
    if task == "mod":
        return i % k
    raise LlmlabError(f"method.task must be bucket|mod, got '{task}'")


def batch(size: int, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, k, (size, 1), generator=gen).expand(size, n)


def chance(task: str, n: int, k: int) -> float:
    return torch.bincount(targets(task, n, k), minlength=k).max().item() / n


def train_probe(
    arch: LMArch,
    task: str,
    n: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_batches: int,
    device: torch.device,
) -> dict:
    """Train a fresh model (vocabulary k: input tokens and classes share it) on the probe; held-out accuracy."""
    torch.manual_seed(seed)
    model = LM(arch, k, n).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    y = targets(task, n, k).to(device)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = batch(batch_size, n, k, gen).to(device)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.repeat(batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.train(False)
    correct = total = 0
    eval_gen = torch.Generator().manual_seed(seed + 10_000)
    with torch.no_grad():
        for _ in range(eval_batches):
            pred = model(batch(batch_size, n, k, eval_gen).to(device)).argmax(-1)
            correct += (pred == y).sum().item()
            total += pred.numel()
    return {"accuracy": correct / total, "final_loss": loss.item()}


def probe_arch(base: LMArch, attention: str, n_layer: int, d_model: int, n_head: int, seq_len: int) -> LMArch:
    """The probe model: `base`'s position scheme, gamma and horizon at the probe's size, the SDPA path."""
    return dataclasses.replace(
        base,
        attention=attention,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        ffn_hidden=0,
        ffn_multiple=64,
        attn_impl="sdpa",
        max_seq_len=seq_len,
    )
