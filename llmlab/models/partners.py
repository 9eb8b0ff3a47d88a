"""Model pairs that share one tokenizer: an expert and a weaker amateur (contrastive reward), a target and a cheaper
draft (speculative decoding). Built from one model (its first layers + final norm + head, a lower-precision copy, a
round-to-nearest quantised copy) or from two model configs."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hardware import DTYPES, Hardware
from llmlab.paths import conf_dir, safe_name


def early_exit_model(model: PreTrainedModel, n_layers: int) -> PreTrainedModel:
    """A model that runs only the first `n_layers` decoder layers of `model`, then its final norm and head. All
    weights are shared (no copy); it has its own KV cache when run."""
    total = model.config.num_hidden_layers
    if not 1 <= n_layers < total:
        raise LlmlabError(f"early exit layer must be in [1, {total - 1}] for this model, got {n_layers}")
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        raise LlmlabError(f"early exit needs a decoder with model.layers; {type(model).__name__} has none")
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:n_layers]
    with torch.device("meta"):
        small = type(model)(cfg)
    for name, child in model.model.named_children():  # embeddings, norm, rotary tables: shared
        setattr(small.model, name, nn.ModuleList(list(child)[:n_layers]) if name == "layers" else child)
    for name, child in model.named_children():
        if name != "model":
            setattr(small, name, child)
    if any(t.is_meta for t in [*small.parameters(), *small.buffers()]):
        raise LlmlabError(f"early exit: {type(model).__name__} has parts the shared-weight copy does not cover")
    small.generation_config = model.generation_config
    return small.train(False)


def lowp_copy(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The same weights in a lower precision (e.g. bfloat16)."""
    if dtype not in DTYPES:
        raise LlmlabError(f"unknown dtype '{dtype}'; choose {', '.join(DTYPES)}")
    return copy.deepcopy(model).to(DTYPES[dtype]).train(False)


def rtn_copy(model: PreTrainedModel, bits: int, group: int) -> PreTrainedModel:
    """A copy whose Linear weights (not the head) are round-to-nearest quantised per group of `group` inputs to
    `bits` bits (asymmetric min/max), then stored dequantised: same compute, weaker model."""
    out = copy.deepcopy(model)
    levels = 2**bits - 1
    with torch.no_grad():
        for name, mod in out.named_modules():
            if not isinstance(mod, nn.Linear) or name.endswith("lm_head") or mod.in_features % group:
                continue
            w = mod.weight.float().reshape(mod.out_features, -1, group)
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            scale = (hi - lo).clamp_min(1e-8) / levels
            q = ((w - lo) / scale).round().clamp(0, levels)
            mod.weight.copy_((q * scale + lo).reshape_as(mod.weight).to(mod.weight.dtype))
    return out.train(False)


def named_model_config(name: str) -> ModelConfig:
    """A `conf/model/<name>.yaml` as a typed ModelConfig."""
    path = conf_dir() / "model" / f"{safe_name(name, 'model config name')}.yaml"
    if not path.is_file():
        raise LlmlabError(f"model config '{name}' not found ({path})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise LlmlabError(f"model config '{name}' ({path}): {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def load_partner(
    name: str, tok: PreTrainedTokenizerBase, hw: Hardware, cache_dir: str | Path, attn: str
) -> PreTrainedModel:
    """A second model (amateur or draft) by model-config name; it must use the same tokenizer."""
    from llmlab.models.loading import load_model

    model, other = load_model(named_model_config(name), hw, cache_dir, attn, reuse=False)
    if other.get_vocab() != tok.get_vocab():
        raise LlmlabError(f"model '{name}' has a different tokenizer; expert/amateur and target/draft must share one")
    return model


def build_amateur(cfg, expert: PreTrainedModel, tok, hw: Hardware, cache_dir, attn: str):
    """(kind, payload): ("early_exit", layer) is computed from the expert's own hidden states (no extra model);
    otherwise ("model", a separate model) run on the same inputs."""
    if cfg.kind == "early_exit":
        if not 1 <= cfg.layer < expert.config.num_hidden_layers:
            raise LlmlabError(
                f"method.amateur.layer must be in [1, {expert.config.num_hidden_layers - 1}], got {cfg.layer}"
            )
        return "early_exit", cfg.layer
    if cfg.kind == "lowp":
        return "model", lowp_copy(expert, cfg.dtype)
    if cfg.kind == "rtn":
        return "model", rtn_copy(expert, cfg.bits, cfg.group)
    if cfg.kind == "model":
        if not cfg.model:
            raise LlmlabError("method.amateur.kind=model needs method.amateur.model=<model config name>")
        return "model", load_partner(cfg.model, tok, hw, cache_dir, attn)
    raise LlmlabError(f"unknown method.amateur.kind '{cfg.kind}'; choose early_exit, lowp, rtn, model")


def build_draft(cfg, target: PreTrainedModel, tok, hw: Hardware, cache_dir, attn: str):
    """None, a draft model, or a model-free prompt-lookup draft (`lookup`)."""
    from llmlab.decoding.speculative import PromptLookup

    if cfg.kind == "none":
        return None
    if cfg.kind == "lookup":
        return PromptLookup()
    if cfg.kind == "early_exit":
        return early_exit_model(target, cfg.layer)
    if cfg.kind == "model":
        if not cfg.model:
            raise LlmlabError("draft.kind=model needs draft.model=<model config name>")
        return load_partner(cfg.model, tok, hw, cache_dir, attn)
    raise LlmlabError(f"unknown draft.kind '{cfg.kind}'; choose none, early_exit, lookup, model")
