"""A saved recurrent scratch model (RWKV from `method=pretrain`) behind the small interface `llmlab.scoring.Scorer`
uses, so the ICL runner evaluates it unchanged: `model=local model.path=<pretrain run>/model`.

Scorer drives HF models with a KV cache: it calls `model(input_ids=..., cache=..., use_cache=True,
logits_to_keep=...)` on right-padded batches, copies the cache (`copy.deepcopy`), repeats it for a batch
(`batch_repeat_interleave`), selects rows (`batch_select_indices`) and reads `out.logits` and `out.cache`. Here the
"cache" is the RNN state, (n_layer, 5, batch, C), and padding is recognised by id: the tokenizer's pad id is one past
the model's vocabulary, and padded positions leave the state untouched (`RWKV.run(..., lengths)`), so the state is
each row's own after its last real token. `attention_mask` and `position_ids` are not needed by an RNN and ignored.
The tokenizer is the one the corpus was trained with: raw UTF-8 bytes (vocabulary 256) or the saved BPE
`tokenizer.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from llmlab.errors import LlmlabError


def is_saved_scratch_model(path: str | Path | None) -> bool:
    """A `method=pretrain` model directory (config.json with a model family + model.safetensors)."""
    if not path:
        return False
    path = Path(path).expanduser()
    config = path / "config.json"
    if not config.is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        return "family" in json.loads(config.read_text()) and "train_len" in json.loads(config.read_text())
    except (ValueError, TypeError):  # bad JSON, not UTF-8, not an object
        return False


class RecurrentCache:
    """The RNN state as a cache: (n_layer, 5, batch, C); the batch operations act in place like HF caches."""

    def __init__(self, state: torch.Tensor):
        self.state = state

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.state = self.state.repeat_interleave(repeats, dim=2)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.state = self.state[:, :, indices.to(self.state.device)]


@dataclass
class RecurrentOutput:
    logits: torch.Tensor
    cache: RecurrentCache


class RecurrentLM:
    """An RWKV model with the call signature Scorer uses."""

    generation_config = None

    def __init__(self, model):
        self.model = model
        self.pad_id = model.vocab_size

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def __call__(
        self, input_ids: torch.Tensor, cache: RecurrentCache | None = None, logits_to_keep=0, **_ignored
    ) -> RecurrentOutput:
        real = input_ids < self.pad_id
        lengths = real.sum(1)
        if not torch.equal(real, torch.arange(input_ids.shape[1], device=real.device)[None] < lengths[:, None]):
            raise LlmlabError("recurrent scoring needs right-padded batches (padding only after the real tokens)")
        ids = torch.where(real, input_ids, torch.zeros_like(input_ids))
        logits, state = self.model.run(ids, cache.state if cache is not None else None, lengths)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        if cache is None:
            cache = RecurrentCache(state)
        else:
            cache.state = state
        return RecurrentOutput(logits, cache)


class ScratchTokenizer:
    """The corpus tokenizer of a scratch model (bytes, or the saved BPE) with what Scorer and the ICL runner use.
    Pad and end-of-sequence are one id past the vocabulary: never generated, and recognised as padding."""

    def __init__(self, vocab_size: int, bpe_file: Path | None = None):
        self.vocab_size = vocab_size
        self.pad_token_id = self.eos_token_id = vocab_size
        self.pad_token = self.eos_token = "<pad>"
        self.bpe = None
        if bpe_file is not None:
            from tokenizers import Tokenizer

            self.bpe = Tokenizer.from_file(str(bpe_file))

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        ids = self.bpe.encode(text).ids if self.bpe is not None else list(text.encode("utf-8"))
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if int(i) < self.vocab_size]
        return self.bpe.decode(ids) if self.bpe is not None else bytes(ids).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size

    def apply_chat_template(self, *args, **kwargs):
        raise LlmlabError("a model trained from scratch has no chat template; set model.chat_template=false")


def load_recurrent(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[RecurrentLM, ScratchTokenizer]:
    """The saved scratch model in `path` as (Scorer-ready model, tokenizer); only recurrent families qualify."""
    from llmlab.models.scratch import load_scratch_model

    path = Path(path).expanduser()
    model, config = load_scratch_model(path)
    if not hasattr(model, "run"):
        raise LlmlabError(
            f"'{path}' is a '{config.get('family')}' model: ICL scoring of a saved scratch model needs a "
            "recurrent one (rwkv); the lm decoder has no KV cache"
        )
    bpe = path / "tokenizer.json" if config.get("tokenizer") == "bpe" else None
    if bpe is not None and not bpe.is_file():
        raise LlmlabError(f"'{path}' was trained with a BPE tokenizer but holds no tokenizer.json")
    return RecurrentLM(model.to(device=device, dtype=dtype).train(False)), ScratchTokenizer(config["vocab_size"], bpe)
