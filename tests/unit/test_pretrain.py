"""The pretraining runner on a tiny `lm`: learning, saved model, exact resume, the watchdog, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmlab.errors import LlmlabError
from llmlab.models.scratch import load_scratch_model
from llmlab.runners import pretrain
from tests.helpers import SIX_STEPS_LM, runner_setup

TINY_LM = [
    "model=lm-tiny",
    "dataset=corpus/pydoc",
    "model.lm.n_layer=1",
    "model.lm.d_model=32",
    "model.lm.n_head=2",
    "model.lm.ffn_hidden=64",
    "dataset.block_size=32",
]


def setup(tmp_path, *overrides, base=SIX_STEPS_LM):
    return runner_setup(tmp_path, *base, f"cache_dir={tmp_path / 'cache'}", *overrides)


def losses(run_dir):
    rows = [json.loads(line) for line in run_dir.file("metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_loss_decreases_and_the_model_is_saved(tmp_path):
    cfg, ctx = setup(tmp_path, "method.max_steps=16", "method.save_every=8", "model.lm.attention=stablemask")
    res = pretrain.run(cfg, ctx)
    curve = losses(ctx.run_dir)
    assert len(curve) == 16 and sum(curve[-3:]) < sum(curve[:3])
    assert sorted(p.name for p in ctx.run_dir.file("checkpoints").iterdir()) == ["step-000008", "step-000016"]
    assert res["train_tokens"] == 16 * 8 * 32 and res["val"]["bpb"] > 0 and res["timing"]["tokens_per_s"] > 0
    assert [r["length"] for r in res["extrapolation"]] == [32, 64] and "pseudo_ratio" in res["sink"]["mean"]
    assert set(res["metrics"]["val"]) >= {"val_loss", "val_ppl", "val_bpb", "ppl@2x", "first_token_mass"}
    saved = ctx.run_dir.file("model")
    assert set(load_file(saved / "model.safetensors")) >= {"embed.weight", "head.weight"}
    model, config = load_scratch_model(saved)
    assert config["lm"]["attention"] == "stablemask" and config["train_len"] == 32 and config["vocab_size"] == 256
    ids = torch.zeros(1, 8, dtype=torch.long)
    assert model(ids).shape == (1, 8, 256)


def test_resume_after_a_kill_is_bitwise_equal(tmp_path, monkeypatch):
    cfg, ctx = setup(tmp_path / "a")
    pretrain.run(cfg, ctx)
    reference = load_file(ctx.run_dir.file("checkpoints") / "step-000006" / "trainable.safetensors")

    cfg2, ctx2 = setup(tmp_path / "b")
    real = pretrain.save_checkpoint

    def killed_after_step_4(root, step, *args):
        real(root, step, *args)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "save_checkpoint", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(cfg2, ctx2)
    monkeypatch.setattr(pretrain, "save_checkpoint", real)
    pretrain.run(cfg2, ctx2)
    resumed = load_file(ctx2.run_dir.file("checkpoints") / "step-000006" / "trainable.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert losses(ctx2.run_dir)[-2:] == losses(ctx.run_dir)[-2:]


def test_resume_refuses_a_changed_config(tmp_path):
    cfg, ctx = setup(tmp_path, "method.max_steps=2")
    pretrain.run(cfg, ctx)
    cfg.model.lm.attention = "stablemask"
    with pytest.raises(LlmlabError, match="changed lm"):
        pretrain.run(cfg, ctx)


@pytest.mark.parametrize("inject", ["nan_loss", "huge_lr"])
def test_the_watchdog_stops_on_nan_and_keeps_only_healthy_checkpoints(tmp_path, monkeypatch, inject):
    cfg, ctx = setup(
        tmp_path,
        "method.save_every=1",
        "method.max_steps=6",
        "method.grad_accum=1",
        *(["method.lr=1e30", "method.warmup_steps=0"] if inject == "huge_lr" else []),
    )
    if inject == "nan_loss":
        real, calls = torch.nn.functional.cross_entropy, []

        def nan_at_third_step(*args, **kwargs):
            calls.append(1)
            loss = real(*args, **kwargs)
            return loss * float("nan") if len(calls) == 3 else loss

        monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_at_third_step)
    with pytest.raises(LlmlabError, match="watchdog") as info:
        pretrain.run(cfg, ctx)
    assert "\n" not in str(info.value)
    ckpts = sorted(ctx.run_dir.file("checkpoints").iterdir()) if ctx.run_dir.file("checkpoints").exists() else []
    assert all(p.name.startswith("step-") for p in ckpts)  # no half-written .tmp directories
    if inject == "nan_loss":
        assert [p.name for p in ckpts] == ["step-000001", "step-000002"]
    for p in ckpts:
        assert all(torch.isfinite(t).all() for t in load_file(p / "trainable.safetensors").values())
    assert not ctx.run_dir.file("model").exists()


def test_a_non_scratch_model_or_a_too_small_corpus_is_refused(tmp_path):
    cfg, ctx = setup(tmp_path / "a", "model=tiny-random")
    with pytest.raises(LlmlabError, match="not trained from scratch"):
        pretrain.run(cfg, ctx)
    cfg, ctx = setup(tmp_path / "b", "dataset.block_size=10000000")
    with pytest.raises(LlmlabError, match="fewer than block_size"):
        pretrain.run(cfg, ctx)


def test_warmup_then_cosine_to_the_final_ratio():
    f = pretrain.warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_the_saved_model_is_evaluated_by_lm_metrics(tmp_path):
    from llmlab.runners import lm_metrics

    cfg, ctx = setup(tmp_path / "train", "method.max_steps=2", "method.eval_lengths=[1]", "method.sink_metrics=false")
    trained = pretrain.run(cfg, ctx)
    cfg2, ctx2 = setup(
        tmp_path / "eval",
        "method=lm_metrics",
        f"method.model_dir={ctx.run_dir.file('model')}",
        "method.eval_lengths=[1,2]",
        "method.eval_window=8",
        "method.eval_blocks=4",
        "method.sink_blocks=2",
        base=TINY_LM,
    )
    res = lm_metrics.run(cfg2, ctx2)
    assert res["metrics"]["val"]["ppl@1x"] == pytest.approx(trained["val"]["ppl"], rel=1e-5)
    assert {"ppl@2x", "ppl@2x_w8", "first_token_mass"} <= set(res["metrics"]["val"])
    cfg3, ctx3 = setup(tmp_path / "bad", "method=lm_metrics", f"method.model_dir={tmp_path}", base=TINY_LM)
    with pytest.raises(LlmlabError, match="not a saved scratch model"):
        lm_metrics.run(cfg3, ctx3)


def test_the_position_probe_runner_compares_the_arms(tmp_path):
    from llmlab.runners import position_probe

    cfg, ctx = setup(
        tmp_path,
        "method=position_probe",
        "method.steps=2",
        "method.seq_len=16",
        "method.n_classes=4",
        "method.d_model=16",
        "method.n_head=2",
        "method.n_layer=1",
        "method.batch_size=4",
        "method.eval_batches=1",
        base=TINY_LM,
    )
    res = position_probe.run(cfg, ctx)
    assert res["chance"] == 0.25 and set(res["arms"]) == {"softmax", "stablemask"}
    assert json.loads(ctx.run_dir.file("results.json").read_text())["metrics"]["softmax"]["accuracy"] == 0.25
