"""Attention x gradient saliency ("Label Words are Anchors", Wang et al. 2023) on the eager attention path.

For layer l with post-softmax attention A_{h,l} and loss L (cross-entropy of the gold label over the label words'
first tokens at the prediction position), `I_l = | sum_h A_{h,l} * dL/dA_{h,l} |` (heads summed first, then abs);
`I_l[i, j]` is the flow from token j to token i, the diagonal zeroed.

Batched: several sequences per forward/backward, right-padded without an attention mask (causal attention keeps
every real token blind to the padding that follows it, so each row equals its unpadded run); the summed loss gives
each example its own gradient, since rows do not interact. Only the logits at each row's last token are computed,
and only the gradients with respect to the attention maps (no weight gradients).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from llmlab.errors import LlmlabError


@contextlib.contextmanager
def frozen(model: PreTrainedModel):
    """Parameters without gradients for the duration (restored after), so backward computes activations' only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def check_eager(model: PreTrainedModel) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise LlmlabError(f"saliency needs attention weights: set hardware.attn_implementation=eager (got {impl})")


def attention_saliency(
    model: PreTrainedModel,
    sequences: Sequence[Sequence[int]],
    label_ids: Sequence[int],
    gold: Sequence[int],
    batch_size: int = 8,
    pad_id: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per sequence: saliency `[layers, n, n]` (float32, CPU) and the label-restricted log-probs `[n_seq, labels]`
    at its last token; `gold[k]` indexes `label_ids`. Sequences are batched longest first."""
    check_eager(model)
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    sal: list[torch.Tensor | None] = [None] * len(sequences)
    logp = torch.zeros(len(sequences), len(label_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        maps, lp = _batch([sequences[k] for k in idx], model, label_ids, [gold[k] for k in idx], pad_id)
        for k, m, row in zip(idx, maps, lp):
            sal[k], logp[k] = m, row
    return sal, logp  # type: ignore[return-value]


def _batch(seqs, model, label_ids, gold, pad_id):
    device = model.device
    lens = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lens.max())), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s))
    last = lens - 1
    keep = torch.unique(last)
    with frozen(model), torch.enable_grad():
        # A leaf that needs a gradient, so the graph through the attention maps is recorded.
        embeds = model.get_input_embeddings()(ids.to(device)).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, output_attentions=True, use_cache=False, logits_to_keep=keep.to(device))
        rows = torch.searchsorted(keep, last).to(device)
        logits = out.logits[torch.arange(len(seqs), device=device), rows][:, list(label_ids)].double()
        logp = logits.log_softmax(-1)
        loss = -logp[torch.arange(len(seqs), device=device), torch.tensor(list(gold), device=device)].sum()
        grads = torch.autograd.grad(loss, out.attentions)
    with torch.no_grad():
        per_layer = torch.stack([(a * g).sum(1) for a, g in zip(out.attentions, grads)], dim=1).abs()  # B,L,T,T
        maps = []
        for r, n in enumerate(lens.tolist()):
            m = per_layer[r, :, :n, :n].float().cpu().clone()
            m.diagonal(dim1=-2, dim2=-1).zero_()
            maps.append(m)
    return maps, logp.detach().float().cpu()


def naive_saliency(
    model: PreTrainedModel, sequence: Sequence[int], label_ids: Sequence[int], gold: int
) -> torch.Tensor:
    """The straightforward per-example version (the reference code's way): full logits, `loss.backward()` with
    weight gradients, attention maps' `.grad`. For the benchmark and the tests."""
    check_eager(model)
    ids = torch.tensor([list(sequence)], device=model.device)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
        for a in out.attentions:
            a.retain_grad()
        logits = out.logits[0, -1, list(label_ids)].double()
        loss = -logits.log_softmax(-1)[gold]
        loss.backward()
    m = torch.stack([(a.detach() * a.grad).sum(1)[0] for a in out.attentions]).abs().float().cpu()
    m.diagonal(dim1=-2, dim2=-1).zero_()
    model.zero_grad(set_to_none=True)
    return m


def flow_means(sal: torch.Tensor, pairs: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    """Per-layer mean of `sal[l, i, j]` over each boolean pair mask `[n, n]` (None where a set is empty)."""
    out = {}
    for name, mask in pairs.items():
        count = int(mask.sum())
        out[name] = [None] * sal.shape[0] if count == 0 else (sal * mask).sum((-1, -2)).div(count).tolist()
    return out
