"""Activation patching and attribution patching of attention heads and MLPs in HF decoder-only models.

Components are every attention head (the input of `self_attn.o_proj`, split into n_heads x head_dim) and every MLP
output, in the layers `model.model.layers[i]` (Llama, Qwen2, Gemma3). A pair is a clean and a corrupt prompt of equal
token length whose answers start with different tokens; LD = logit[clean answer] - logit[corrupt answer] at the last
position, and a run with patched activations scores (LD - LD_corrupt) / (LD_clean - LD_corrupt): 1 restores the clean
behaviour, 0 changes nothing. Scores are laid out as heads (n_layers x n_heads) and MLPs (n_layers), kept apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from llmlab.errors import LlmlabError

Component = tuple[str, int, int]  # ("head", layer, head) or ("mlp", layer, 0)
Hook = Callable[[int, torch.Tensor], torch.Tensor | None]  # (layer, activation) -> replacement or None


@dataclass(frozen=True)
class Shape:
    n_layers: int
    n_heads: int
    head_dim: int


@dataclass
class PairScores:
    heads: np.ndarray  # (n_layers, n_heads)
    mlps: np.ndarray  # (n_layers,)
    ld_clean: float
    ld_corrupt: float


def decoder_layers(model) -> list:
    """The decoder layers, each with `self_attn.o_proj` and `mlp`; anything else is a clear error."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(
        hasattr(getattr(layer, "self_attn", None), "o_proj") and hasattr(layer, "mlp") for layer in layers
    ):
        raise LlmlabError(
            f"patching needs decoder layers model.model.layers[i] with self_attn.o_proj and mlp; "
            f"{type(model).__name__} has none"
        )
    return list(layers)


def model_shape(model) -> Shape:
    layers = decoder_layers(model)
    n_heads = model.config.num_attention_heads
    return Shape(len(layers), n_heads, layers[0].self_attn.o_proj.in_features // n_heads)


def components(shape: Shape) -> list[Component]:
    """Every component in score order: heads layer-major, then the MLPs."""
    return [("head", layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)] + [
        ("mlp", layer, 0) for layer in range(shape.n_layers)
    ]


@contextlib.contextmanager
def hooked(model, on_head: Hook | None = None, on_mlp: Hook | None = None) -> Iterator[None]:
    """Within the block, `on_head` sees (and may replace) every o_proj input, `on_mlp` every MLP output."""

    def head_hook(layer: int):
        def hook(module, args):
            new = on_head(layer, args[0])
            return None if new is None else (new, *args[1:])

        return hook

    def mlp_hook(layer: int):
        return lambda module, args, out: on_mlp(layer, out)

    handles = []
    try:
        for i, layer in enumerate(decoder_layers(model)):
            if on_head is not None:
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
            if on_mlp is not None:
                handles.append(layer.mlp.register_forward_hook(mlp_hook(i)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def last_logits(model, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits at the last position, (batch, vocab)."""
    out = model(input_ids=ids, inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()


def logit_diff(logits: torch.Tensor, answers: tuple[int, int]) -> torch.Tensor:
    """logit[clean answer] - logit[corrupt answer], per batch row."""
    return logits[:, answers[0]] - logits[:, answers[1]]


def cache(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Last-position logits and every component's activation ({"head": [per layer], "mlp": [per layer]})."""
    acts: dict[str, list[torch.Tensor]] = {"head": [], "mlp": []}
    with (
        torch.no_grad(),
        hooked(model, lambda _, x: acts["head"].append(x.detach()), lambda _, out: acts["mlp"].append(out.detach())),
    ):
        logits = last_logits(model, ids)
    return logits, acts


def patched_logits(
    model, corrupt: torch.Tensor, clean_acts: dict, rows: list[list[Component]], shape: Shape
) -> torch.Tensor:
    """Last-position logits of the corrupt prompt run once per row, row r with the clean activations (all positions)
    of the components `rows[r]`."""
    d = shape.head_dim

    def on_head(layer: int, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for r, comps in enumerate(rows):
            for kind, lay, h in comps:
                if kind == "head" and lay == layer:
                    x[r, :, h * d : (h + 1) * d] = clean_acts["head"][layer][0, :, h * d : (h + 1) * d]
        return x

    def on_mlp(layer: int, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for r, comps in enumerate(rows):
            if ("mlp", layer, 0) in comps:
                out[r] = clean_acts["mlp"][layer][0]
        return out

    with torch.no_grad(), hooked(model, on_head, on_mlp):
        return last_logits(model, corrupt.expand(len(rows), -1))


def normalised(ld, ld_clean, ld_corrupt):
    return (ld - ld_corrupt) / (ld_clean - ld_corrupt)


def exact_patching(
    model, clean: torch.Tensor, corrupt: torch.Tensor, answers: tuple[int, int], batch_size: int = 16
) -> PairScores:
    """One patched corrupt run per component (`batch_size` components per forward); ids are (1, T) tensors."""
    shape = model_shape(model)
    comps = components(shape)
    clean_logits, acts = cache(model, clean)
    ld_clean = logit_diff(clean_logits, answers)
    ld_corrupt = logit_diff(cache(model, corrupt)[0], answers)
    lds = [
        logit_diff(patched_logits(model, corrupt, acts, [[c] for c in comps[i : i + batch_size]], shape), answers)
        for i in range(0, len(comps), batch_size)
    ]
    return _split(normalised(torch.cat(lds), ld_clean, ld_corrupt), shape, ld_clean, ld_corrupt)


def attribution_patching(
    model, clean: torch.Tensor, corrupt: torch.Tensor, answers: tuple[int, int], batch_size: int = 0
) -> PairScores:
    """First-order estimate of every component's patching effect from one clean forward and one corrupt forward and
    backward: sum over positions of (a_clean - a_corrupt) * d metric / d a at the corrupt run. (`batch_size` is
    unused: one backward serves every component.)"""
    shape = model_shape(model)
    clean_logits, clean_acts = cache(model, clean)
    ld_clean = logit_diff(clean_logits, answers)
    acts: dict[str, list[torch.Tensor]] = {"head": [], "mlp": []}
    keep_head, keep_mlp = (lambda _, x: acts["head"].append(x)), (lambda _, out: acts["mlp"].append(out))
    with torch.enable_grad(), hooked(model, keep_head, keep_mlp):
        # Embeddings as a graph leaf: gradients reach every activation even when the weights are frozen.
        embeds = model.get_input_embeddings()(corrupt).detach().requires_grad_(True)
        ld = logit_diff(last_logits(model, embeds=embeds), answers)
        grads = torch.autograd.grad(ld.sum(), acts["head"] + acts["mlp"])
    ld_corrupt = ld.detach()
    effects = [
        ((c - a.detach()).float() * g.float()).sum(dim=(0, 1))
        for c, a, g in zip(clean_acts["head"] + clean_acts["mlp"], acts["head"] + acts["mlp"], grads)
    ]
    heads = torch.stack([e.view(shape.n_heads, shape.head_dim).sum(-1) for e in effects[: shape.n_layers]])
    mlps = torch.stack([e.sum() for e in effects[shape.n_layers :]])
    flat = torch.cat([heads.flatten(), mlps])
    return _split(flat / (ld_clean - ld_corrupt), shape, ld_clean, ld_corrupt)


def _split(flat: torch.Tensor, shape: Shape, ld_clean: torch.Tensor, ld_corrupt: torch.Tensor) -> PairScores:
    flat = flat.detach().cpu().double().numpy()
    n = shape.n_layers * shape.n_heads
    return PairScores(
        flat[:n].reshape(shape.n_layers, shape.n_heads), flat[n:], float(ld_clean[0]), float(ld_corrupt[0])
    )


SCORERS = {"attribution": attribution_patching, "exact": exact_patching}
