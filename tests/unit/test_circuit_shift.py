"""Circuit shift on a tiny random model: patching scorers, clean/corrupt pairs, the runner end to end, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from llmlab.analysis import patching
from llmlab.analysis.circuits import spearman_shift
from llmlab.analysis.corrupt_pairs import bool_value, build_pairs, encode
from llmlab.data.loading import load_eval_data
from llmlab.errors import LlmlabError
from llmlab.models.loading import load_model
from llmlab.runners import circuit_shift, finetune
from tests.helpers import runner_setup

CS = ["method=circuit_shift", "method.n_pairs=4", "method.shots=2"]
SMOLLM2 = Path(os.environ.get("LLMLAB_CACHE", "~/.cache/llmlab")).expanduser() / "models/smollm2-135m"  # converted


def patched_metric(model, clean, corrupt, answers: tuple[int, int], comps: list) -> float:
    """The normalised logit difference of the corrupt run with the clean activations of all `comps` patched in."""
    shape = patching.model_shape(model)
    clean_logits, acts = patching.cache(model, clean)
    ld_corrupt = patching.logit_diff(patching.cache(model, corrupt)[0], answers)
    ld = patching.logit_diff(patching.patched_logits(model, corrupt, acts, [comps], shape), answers)
    return float(patching.normalised(ld, patching.logit_diff(clean_logits, answers), ld_corrupt)[0])


def setup_pairs(tmp_path, task: str, n: int = 4, shots=(0, 4)):
    cfg, ctx = runner_setup(tmp_path, f"dataset=implicit/{task}", "dataset.n_test=40")
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, "sdpa", cfg.seed)
    data = load_eval_data(cfg.dataset, cfg.seed)
    pairs = build_pairs(task, data.tests["pattern"].to_list(), data.pool["demo"], data.header, tok, n, shots, 0)
    return model, tok, data, pairs


def tensors(enc):
    return torch.tensor([enc.clean]), torch.tensor([enc.corrupt])


@pytest.mark.parametrize("task", ["bool", "expression", "relation"])
def test_attribution_patching_agrees_with_exact_patching(tmp_path, task):
    model, tok, data, pairs = setup_pairs(tmp_path, task)
    exact, attrib = [], []
    for pair in pairs:
        for k in (0, 4):
            enc = encode(tok, data.header, pair, k)
            ex = patching.exact_patching(model, *tensors(enc), enc.answers, batch_size=4)
            at = patching.attribution_patching(model, *tensors(enc), enc.answers)
            assert (ex.ld_clean, ex.ld_corrupt) == pytest.approx((at.ld_clean, at.ld_corrupt), rel=1e-4)
            # Heads and the last MLP, per pair: the same ranking, the same strongest head, values within 5%.
            late_ex, late_at = np.r_[ex.heads.ravel(), ex.mlps[-1]], np.r_[at.heads.ravel(), at.mlps[-1]]
            assert 1 - spearman_shift(late_ex, late_at) > 0.95
            assert np.abs(ex.heads).argmax() == np.abs(at.heads).argmax()
            assert np.abs(late_ex - late_at).max() < 0.05 * np.abs(late_ex).max()
            exact.append(np.r_[ex.heads.ravel(), ex.mlps])
            attrib.append(np.r_[at.heads.ravel(), at.mlps])
    # The layer-0 MLP reads the edited tokens directly, where the first-order estimate is weakest: with one edited
    # character (expression, relation) it still agrees, so the mean over pairs of every component ranks alike; the
    # bool pairs of a byte tokenizer swap two literals (several characters) and its estimate there is off.
    if task != "bool":
        ex_mean, at_mean = np.mean(exact, 0), np.mean(attrib, 0)
        assert 1 - spearman_shift(ex_mean, at_mean) > 0.9
        assert np.abs(ex_mean).argmax() == np.abs(at_mean).argmax()


def test_patching_everything_restores_the_clean_run_and_hooks_are_removed(tmp_path):
    model, tok, data, pairs = setup_pairs(tmp_path, "expression", n=2)
    everything = patching.components(patching.model_shape(model))
    assert len(everything) == 2 * 4 + 2  # tiny model: 2 layers x 4 heads + 2 MLPs
    for pair in pairs:
        enc = encode(tok, data.header, pair, 4)
        assert patched_metric(model, *tensors(enc), enc.answers, everything) == pytest.approx(1.0, abs=1e-3)
        assert patched_metric(model, *tensors(enc), enc.answers, []) == pytest.approx(0.0, abs=1e-6)
        # MLPs act per position and the last token is shared, so all heads alone restore the last position too;
        # the MLPs alone do not (attention still reads the edited positions).
        heads, mlps = [c for c in everything if c[0] == "head"], [c for c in everything if c[0] == "mlp"]
        assert patched_metric(model, *tensors(enc), enc.answers, heads) == pytest.approx(1.0, abs=1e-3)
        assert patched_metric(model, *tensors(enc), enc.answers, mlps) != pytest.approx(1.0, abs=1e-2)
    for layer in patching.decoder_layers(model):
        assert not layer.self_attn.o_proj._forward_pre_hooks and not layer.mlp._forward_hooks


@pytest.mark.parametrize("task", ["bool", "expression", "relation"])
def test_pairs_have_equal_length_and_a_new_gold(tmp_path, task):
    model, tok, data, pairs = setup_pairs(tmp_path, task, n=6)
    assert len(pairs) >= 4
    again = build_pairs(task, data.tests["pattern"].to_list(), data.pool["demo"], data.header, tok, 6, (0, 4), 0)
    assert again == pairs  # seeded
    for pair in pairs:
        assert pair.corrupt_target != pair.clean_target and len(pair.demos) == 4
        for k in (0, 4):
            enc = encode(tok, data.header, pair, k)
            assert len(enc.clean) == len(enc.corrupt) and enc.answers[0] != enc.answers[1]
        if task == "expression":  # one digit of Z changed, Z now nonzero, the gold is the full value
            assert sum(a != b for a, b in zip(pair.clean, pair.corrupt)) == 1
            parts = re.fullmatch(r"\((.*)\)\+\((.*)\)\*\((.*)\)=", pair.corrupt).groups()
            s, z, c = (sum(map(int, re.findall(r"[+-]?\d+", part))) for part in parts)
            assert z != 0 and pair.corrupt_target == str(s + z * c)
        elif task == "relation":  # the Z edge now leads to a letter outside the graph
            assert pair.clean_target == " True" and pair.corrupt_target == " False"
            assert sum(a != b for a, b in zip(pair.clean, pair.corrupt)) == 1 and "with Z\n" not in pair.corrupt
        else:  # the last literal flipped, and the gold follows it
            expr = pair.corrupt.split("\n")[0]
            assert pair.corrupt_target == f" {bool_value(expr)}" == f" {expr.split()[-1]}"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 is not converted locally")
def test_bool_pairs_flip_one_token_with_a_bpe_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    cfg, _ = runner_setup(tmp_path, "dataset=implicit/bool")
    data = load_eval_data(cfg.dataset, 0)
    pairs = build_pairs("bool", data.tests["pattern"].to_list(), data.pool["demo"], data.header, tok, 4, (0, 8), 0)
    assert len(pairs) == 4
    for pair in pairs:
        enc = encode(tok, data.header, pair, 8)
        assert sum(a != b for a, b in zip(enc.clean, enc.corrupt)) <= 2  # the last literal (and its operator)


def test_runner_writes_three_conditions_with_a_full_model_copy(tmp_path):
    # F0 = an unchanged copy of the base model saved as a full HF directory: its circuit cannot have moved.
    cfg, ctx = runner_setup(tmp_path / "cs", *CS, "dataset=implicit/expression", "method.method=exact")
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, "sdpa", cfg.seed)
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    cfg.method.finetuned = str(tmp_path / "copy")
    res = circuit_shift.run(cfg, ctx)

    assert res["operationalization"] == "llmlab (exact patching)"
    assert set(res["conditions"]) == {"B0", "B2", "F0"} and res["n_pairs"] == 4
    assert res["shift"]["F0"]["heads"] == {
        "jaccard": 0.0,
        "tv": pytest.approx(0.0, abs=1e-6),
        "spearman": pytest.approx(0.0, abs=1e-6),
    }
    assert res["conditions"]["F0"]["accuracy"] == res["conditions"]["B0"]["accuracy"]
    assert set(res["check"]["shift_wins"]) == {
        f"{k}/{m}" for k in ("heads", "mlps") for m in ("jaccard", "tv", "spearman")
    }
    assert isinstance(res["check"]["paper_consistent"], bool)
    assert json.loads(ctx.run_dir.file("results.json").read_text())["shift"] == res["shift"]
    scores = np.load(ctx.run_dir.file("scores.npz"))
    assert scores["B2_heads"].shape == (4, 2, 4) and scores["F0_mlps"].shape == (4, 2)
    np.testing.assert_allclose(scores["F0_heads"], scores["B0_heads"], atol=1e-5)
    assert ctx.run_dir.file("circuit_shift.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(ctx.run_dir.path.glob(".*.tmp"))
    logged = json.loads(ctx.run_dir.file("metrics.jsonl").read_text().splitlines()[-1])
    assert "shift/B2/heads/tv" in logged and "F0/accuracy" in logged


def test_runner_loads_a_lora_adapter_from_a_finetune_run(tmp_path):
    ft_cfg, ft_ctx = runner_setup(
        tmp_path / "ft",
        "method=finetune",
        "dataset=implicit/bool",
        "method.peft=lora",
        "method.lr=3e-3",
        "method.warmup_steps=1",
        "method.grad_accum=1",
        "method.max_steps=2",
        "method.save_every=2",
    )
    finetune.run(ft_cfg, ft_ctx)
    cfg, ctx = runner_setup(
        tmp_path / "cs",
        *CS,
        "dataset=implicit/bool",
        "dataset.n_test=40",
        f"method.finetuned={ft_ctx.run_dir.file('model')}",
    )
    res = circuit_shift.run(cfg, ctx)
    assert res["operationalization"] == "llmlab (attribution patching)" and set(res["conditions"]) == {"B0", "B2", "F0"}
    scores = np.load(ctx.run_dir.file("scores.npz"))
    assert not np.allclose(scores["F0_heads"], scores["B0_heads"])  # the adapter changed the model


def test_without_a_finetuned_model_f0_is_skipped(tmp_path):
    cfg, ctx = runner_setup(tmp_path, *CS, "dataset=implicit/relation", "dataset.n_test=20")
    res = circuit_shift.run(cfg, ctx)
    assert set(res["conditions"]) == {"B0", "B2"} and res["check"] is None and "F0 skipped" in res["notes"][0]


@pytest.mark.parametrize(
    "override,message",
    [
        ("dataset=implicit/parity", "supports the implicit tasks"),
        ("method.finetuned=/nonexistent/dir", "is not a directory"),
        ("dataset.n_test=2", "usable clean/corrupt pair"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, override, message):
    cfg, ctx = runner_setup(tmp_path, *CS, "dataset=implicit/relation", override)
    with pytest.raises(LlmlabError, match=message):
        circuit_shift.run(cfg, ctx)


def test_a_directory_that_is_no_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg, ctx = runner_setup(tmp_path, *CS, "dataset=implicit/bool", f"method.finetuned={tmp_path / 'empty'}")
    with pytest.raises(LlmlabError, match="not a fine-tuned model"):
        circuit_shift.run(cfg, ctx)


def test_a_model_without_o_proj_and_mlp_layers_is_a_clear_error():
    with pytest.raises(LlmlabError, match="self_attn.o_proj and mlp"):
        patching.model_shape(nn.Linear(4, 4))
