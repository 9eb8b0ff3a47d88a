"""Models trained from scratch (`model.source=scratch`): build one for a vocabulary, save it, load it back.

A scratch model maps token ids (batch, seq) to logits and has `flops_per_token(seq_len)` and `describe()` (what
results group by); `set_window` and `attention_maps` enable the windowed and attention-sink evaluations.
A saved model is a directory with `model.safetensors` (the weights, no pickle) and `config.json` (family, shape,
vocabulary size, training length and the tokenizer it was trained with); `tokenizer.json` too for a BPE corpus.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from llmlab.config import LMArch, ModelConfig, RWKVArch
from llmlab.errors import LlmlabError


def build_scratch_model(model_cfg: ModelConfig, vocab_size: int, train_len: int | None = None) -> nn.Module:
    """A randomly initialised model (seed torch first) for `vocab_size` tokens; `train_len` is the training sequence
    length (StableMask's horizon), by default `max_seq_len`. Other from-scratch families branch here."""
    if model_cfg.source != "scratch":
        raise LlmlabError(
            f"model '{model_cfg.name}' (source {model_cfg.source}) is not trained from scratch; use "
            "a model with model.source=scratch, e.g. model=lm-tiny"
        )
    family = getattr(model_cfg, "family", "lm")
    if family == "rwkv":
        from llmlab.models.rwkv import RWKV

        rwkv = arch_from(model_cfg.rwkv, RWKVArch)
        return RWKV(rwkv, vocab_size, train_len or rwkv.ctx_len)
    if family != "lm":
        raise LlmlabError(f"model.family must be lm|rwkv, got '{family}'")
    from llmlab.models.lm import LM

    arch = arch_from(model_cfg.lm)
    return LM(arch, vocab_size, train_len or arch.max_seq_len)


def arch_from(node, cls=LMArch):
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(vars(node))
    return cls(**data)


def save_scratch_model(path: Path, model: nn.Module, extra: dict, tokenizer_file: Path | None = None) -> None:
    """Weights + config (+ tokenizer) into `path`, published by an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    family = getattr(model, "family", "lm")  # the arch is stored under the family's name: "lm" or "rwkv"
    config = {
        "family": family,
        "vocab_size": model.vocab_size,
        "train_len": model.train_len,
        family: dataclasses.asdict(model.arch),
        **extra,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_scratch_model(path: str | Path, **arch_overrides) -> tuple[nn.Module, dict]:
    """The model saved in `path` (CPU, eval mode) and its config; `arch_overrides` change e.g. `attn_impl`."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise LlmlabError(f"'{path}' is not a saved scratch model (config.json + model.safetensors)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or not UTF-8
        raise LlmlabError(f"'{path}/config.json' is not valid JSON ({str(e).splitlines()[0]})") from None
    family = config.get("family") if isinstance(config, dict) else None
    if family not in ("lm", "rwkv"):
        raise LlmlabError(f"'{path}': unknown model family {family!r}")
    try:
        if family == "rwkv":
            from llmlab.models.rwkv import RWKV

            model = RWKV(RWKVArch(**{**config["rwkv"], **arch_overrides}), config["vocab_size"], config["train_len"])
        else:
            from llmlab.models.lm import LM

            model = LM(LMArch(**{**config["lm"], **arch_overrides}), config["vocab_size"], config["train_len"])
        model.load_state_dict(load_file(path / "model.safetensors"))
    except LlmlabError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing or mistyped config field, corrupt or mismatched weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LlmlabError(f"'{path}' cannot be loaded as a saved {family} model: {type(e).__name__}: {first}") from e
    return model.train(False), config
