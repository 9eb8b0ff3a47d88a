"""Shape models (`model.source=shape`): a Hugging Face causal LM of a named architecture (`model.shape`, transcribed
from a model's config.json) with random weights and the byte tokenizer, so a paper's model size runs without its
weights. Ids beyond the tokenizer's 259 exist in the model but never occur in text (decoding drops them)."""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig, PreTrainedTokenizerBase, Qwen2Config

from llmlab.config import ShapeArch
from llmlab.errors import LlmlabError

ARCHS: dict[str, type[PretrainedConfig]] = {"llama": LlamaConfig, "qwen2": Qwen2Config}  # ShapeArch.arch's choices
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def check_shape(shape: ShapeArch, name: str) -> None:
    """A one-line error unless `shape` names an architecture and all its sizes, consistently."""
    if shape.arch is None:
        raise LlmlabError(f"model '{name}' has no shape: set model.shape.arch and its sizes (model.shape.*)")
    missing = [f"model.shape.{k}" for k in REQUIRED if getattr(shape, k) is None]
    if missing:
        raise LlmlabError(f"model '{name}': source=shape needs {', '.join(missing)}")
    heads, kv = shape.num_attention_heads, shape.num_key_value_heads or shape.num_attention_heads
    if shape.hidden_size % heads or heads % kv:
        raise LlmlabError(
            f"model '{name}': model.shape.hidden_size={shape.hidden_size} must be a multiple of num_attention_heads="
            f"{heads}, and that of num_key_value_heads={kv}"
        )


def shape_config(shape: ShapeArch, name: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config of `shape`, its special tokens the tokenizer's."""
    check_shape(shape, name)
    if shape.vocab_size < len(tokenizer):
        raise LlmlabError(
            f"model '{name}': model.shape.vocab_size={shape.vocab_size} is below the tokenizer's {len(tokenizer)}"
        )
    rope = shape.rope_scaling
    scaling = None
    if rope.rope_type != "default":
        scaling = {
            "rope_type": rope.rope_type,
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    return ARCHS[shape.arch](
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads or shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta,
        rope_scaling=scaling,
        rms_norm_eps=shape.rms_norm_eps,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
