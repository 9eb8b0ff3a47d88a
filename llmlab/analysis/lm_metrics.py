"""Evaluations of a pretrained `lm`: held-out loss, perplexity at longer contexts, attention-sink statistics.

Sink metrics (StableMask spec section 8; our definitions), per layer, averaged over heads, sequences and rows, on
held-out blocks at the training length, from the dense attention weights:
- `first_token_mass`: mean over queries i >= 16 of the weight on key 0 (for StableMask, of the whole row, pseudo
  columns included: it falls as the pseudo mass rises, sink or not);
- `first_token_mass_real`: the same over the real keys only (weights renormalised to sum to 1 per row), the figure
  that compares StableMask with softmax;
- `max_key_mass`: mean over rows of the largest weight, and `argmax_first`: the share of rows whose largest weight
  is on key 0;
- `entropy`: row entropy in nats of the weights renormalised over the real keys;
- StableMask only: `pseudo_ratio` (mean share given to the masked columns) and its curve over positions
  (`pseudo_ratio_by_position`, averaged over layers and heads), and `real_mass` = 1 - pseudo ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab.data.corpus import Corpus, bits_per_byte, eval_blocks, packed_blocks

MIN_QUERY = 16


@torch.no_grad()
def mean_loss(
    model, blocks: torch.Tensor, batch_size: int, device: torch.device, amp: torch.dtype | None = None
) -> float:
    """Mean next-token cross-entropy (nats) over every position of `blocks` (n, length + 1)."""
    was_training = model.training
    model.train(False)
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def loss_row(loss: float, corpus: Corpus) -> dict:
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": bits_per_byte(loss, corpus.val_bytes_per_token)}


def extrapolation(
    model,
    corpus: Corpus,
    train_len: int,
    multiples: list[int],
    max_blocks: int,
    batch_size: int,
    device: torch.device,
    window: int | None = None,
    amp: torch.dtype | None = None,
) -> list[dict]:
    """Held-out loss, perplexity and bits per byte at context lengths `m * train_len`; with `window`, attention sees
    only the last `window` keys. A length the held-out text or the model cannot take is reported as skipped."""
    rows = []
    limit = getattr(getattr(model, "arch", None), "max_seq_len", None)
    rope = getattr(getattr(model, "arch", None), "position", None) == "rope"
    if window is not None:
        model.set_window(window)
    try:
        for m in multiples:
            length = m * train_len
            row = {"length": length, "multiple": m, "window": window}
            if rope and limit is not None and length > limit:
                rows.append({**row, "skipped": f"longer than max_seq_len={limit}"})
                continue
            if len(corpus.val) < length + 1:
                rows.append({**row, "skipped": f"held-out text has only {len(corpus.val)} tokens"})
                continue
            blocks = eval_blocks(packed_blocks(corpus.val, length), max(1, max_blocks // m) if max_blocks else 0)
            rows.append(
                {
                    **row,
                    **loss_row(mean_loss(model, blocks, max(1, batch_size // m), device, amp), corpus),
                    "n_blocks": len(blocks),
                }
            )
    finally:
        if window is not None:
            model.set_window(None)
    return rows


@torch.no_grad()
def sink_metrics(model, blocks: torch.Tensor, device: torch.device, batch_size: int = 4) -> dict:
    """Attention-sink statistics of `model` on `blocks` (n, length + 1); see the module docstring."""
    model.train(False)
    sums: list[dict[str, float]] = []
    curve, n_rows = None, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i : i + batch_size, :-1].to(device)
        for layer, (att, pseudo) in enumerate(model.attention_maps(ids)):
            att = att.float()
            n = att.shape[-1]
            real = att.sum(-1, keepdim=True).clamp_min(1e-30)
            p = att / real
            stats = {
                "first_token_mass": att[:, :, MIN_QUERY:, 0].sum().item() if n > MIN_QUERY else float("nan"),
                "first_token_mass_real": p[:, :, MIN_QUERY:, 0].sum().item() if n > MIN_QUERY else float("nan"),
                "max_key_mass": att.max(-1).values.sum().item(),
                "argmax_first": (att.argmax(-1) == 0).float().sum().item(),
                "entropy": -(p * p.clamp_min(1e-30).log()).sum(-1).sum().item(),
            }
            if pseudo is not None:
                stats["pseudo_ratio"] = pseudo.sum().item()
                by_pos = pseudo.float().sum((0, 1)).cpu()
                curve = by_pos if curve is None else curve + by_pos
            if len(sums) <= layer:
                sums.append(dict.fromkeys(stats, 0.0))
            for k, v in stats.items():
                sums[layer][k] += v
        n_rows += ids.shape[0]
    heads, n = model.arch.n_head, blocks.shape[1] - 1
    rows_per = n_rows * heads * n
    layers = []
    for s in sums:
        row = {k: v / rows_per for k, v in s.items()}
        for key in ("first_token_mass", "first_token_mass_real"):
            row[key] = s[key] / (n_rows * heads * max(1, n - MIN_QUERY))
        if "pseudo_ratio" in row:
            row["real_mass"] = 1.0 - row["pseudo_ratio"]
        layers.append(row)
    out = {
        "layers": layers,
        "mean": {k: sum(r[k] for r in layers) / len(layers) for k in layers[0]},
        "n_sequences": n_rows,
        "length": n,
    }
    if curve is not None:
        out["pseudo_ratio_by_position"] = (curve / (n_rows * heads * len(layers))).tolist()
    return out
