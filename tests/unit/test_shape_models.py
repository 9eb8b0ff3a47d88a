"""Shape models (`model.source=shape`): every hub model's YAML carries its architecture, which composes, validates and,
shrunk by overrides, builds and trains on the CPU; bad shapes are one-line errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from llmlab.errors import LlmlabError
from llmlab.hardware import Hardware
from tests.helpers import REPO, compose

HUB_MODELS = sorted(
    p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if yaml.safe_load(p.read_text())["source"] == "hub"
)
SHRINK = [
    "model.shape.num_hidden_layers=1",
    "model.shape.hidden_size=64",
    "model.shape.intermediate_size=128",
    "model.shape.num_attention_heads=4",
    "model.shape.num_key_value_heads=2",
    "model.shape.vocab_size=512",
]
CPU = Hardware(torch.device("cpu"), torch.float32)


def load(overrides: list[str], seed: int = 0):
    from llmlab.models.loading import load_model

    return load_model(compose(overrides).model, CPU, "/nonexistent", seed=seed, reuse=False)


def test_every_hub_model_has_a_shape():
    assert {"qwen1.5-0.5b", "qwen1.5-1.8b", "qwen1.5-4b", "qwen1.5-7b", "llama3.1-8b"} <= set(HUB_MODELS)


@pytest.mark.parametrize("model", HUB_MODELS)
def test_a_hub_models_shape_composes_and_validates(model):
    from llmlab.config import validate_config
    from llmlab.models.shape import check_shape

    cfg = compose([f"model={model}", "model.source=shape"])
    validate_config(cfg)
    check_shape(cfg.model.shape, cfg.model.name)  # every size is given
    assert (
        cfg.model.shape.vocab_size > 100_000 and cfg.model.shape.hidden_size % cfg.model.shape.num_attention_heads == 0
    )


@pytest.mark.parametrize("model", HUB_MODELS)
def test_a_shrunk_hub_shape_builds_and_trains_on_the_cpu(model):
    shape = compose([f"model={model}"]).model.shape
    net, tok = load([f"model={model}", "model.source=shape", *SHRINK])
    assert type(net).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[shape.arch]
    c = net.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_key_value_heads, c.vocab_size) == (1, 64, 2, 512)
    assert (
        c.tie_word_embeddings == shape.tie_word_embeddings
        and c.max_position_embeddings == shape.max_position_embeddings
    )
    assert c.rope_parameters["rope_theta"] == shape.rope_theta
    assert c.rope_parameters["rope_type"] == shape.rope_scaling.rope_type
    ids = tok(["3 + 4 = 7", "x"], return_tensors="pt", padding=True)
    net.train()
    loss = net(**ids, labels=ids.input_ids.masked_fill(ids.attention_mask == 0, -100)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_a_shape_model_is_deterministic_per_seed():
    overrides = ["model=qwen1.5-0.5b", "model.source=shape", *SHRINK]
    a, b, c = (load(overrides, seed)[0].model.embed_tokens.weight for seed in (1, 2, 1))
    assert torch.equal(a, c) and not torch.equal(a, b)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model=smollm2-135m", "model.source=shape"], "model 'smollm2-135m' has no shape: set model.shape.arch"),
        (["model=qwen1.5-0.5b", "model.source=shape", "model.shape.intermediate_size=null"], "needs model.shape.inter"),
        (["model=qwen1.5-0.5b", "model.source=shape", "model.shape.hidden_size=1000"], "must be a multiple of"),
        (["model=qwen1.5-0.5b", "model.source=shape", "model.shape.vocab_size=100"], "is below the tokenizer's 259"),
    ],
)
def test_a_bad_shape_is_a_one_line_error(overrides, needle):
    with pytest.raises(LlmlabError) as info:
        load(overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_architecture_is_refused_by_validation():
    from llmlab.config import validate_config

    cfg = compose(["model=qwen1.5-0.5b", "model.source=shape", "model.shape.arch=qwen3"])
    with pytest.raises(LlmlabError, match="model.shape.arch must be one of llama, qwen2, got 'qwen3'"):
        validate_config(cfg)


def test_a_config_saved_before_model_shape_existed_still_resumes():
    """A run directory's config.yaml without `model.shape` matches the config that composes now (resume)."""
    import copy

    from omegaconf import OmegaConf

    from llmlab.fingerprint import changed_keys

    current = OmegaConf.to_container(compose(["model=tiny-random"]), resolve=False)
    current.pop("hydra")
    saved = copy.deepcopy(current)
    del saved["model"]["shape"]
    assert changed_keys(saved, current) == []
    saved["model"]["tiny"]["hidden_size"] = 8
    assert changed_keys(saved, current) == ["model.tiny.hidden_size"]
