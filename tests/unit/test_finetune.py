"""The fine-tuning runner on a tiny random model: learning, exact resume, LoRA, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmlab.errors import LlmlabError
from llmlab.runners import finetune
from tests.helpers import SIX_STEPS_FT, runner_setup


def losses(run_dir):
    rows = [json.loads(line) for line in run_dir.file("metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows]


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_loss_decreases_and_a_model_is_saved(tmp_path, peft):
    cfg, ctx = runner_setup(
        tmp_path, *SIX_STEPS_FT, f"method.peft={peft}", "method.max_steps=12", "method.save_every=6"
    )
    res = finetune.run(cfg, ctx)
    curve = losses(ctx.run_dir)
    assert len(curve) == 12 and sum(curve[-3:]) < sum(curve[:3])
    assert sorted(p.name for p in ctx.run_dir.file("checkpoints").iterdir()) == ["step-000006", "step-000012"]
    assert res["steps"] == 12 and res["final_loss"] == curve[-1]
    saved = ctx.run_dir.file("model")
    assert (saved / ("adapter_config.json" if peft == "lora" else "config.json")).is_file()
    if peft == "lora":
        assert all(
            "lora_" in k for k in load_file(ctx.run_dir.file("checkpoints") / "step-000012" / "trainable.safetensors")
        )


def test_keep_checkpoints_deletes_older_ones_and_may_change_on_resume(tmp_path):
    cfg, ctx = runner_setup(tmp_path, *SIX_STEPS_FT, "method.max_steps=4", "method.save_every=1")
    finetune.run(cfg, ctx)
    assert len(list(ctx.run_dir.file("checkpoints").iterdir())) == 4  # default 0: all kept
    cfg.method.keep_checkpoints, cfg.method.max_steps = 1, 5
    assert finetune.run(cfg, ctx)["steps"] == 5  # resumed from step 4: keeping fewer changes no result
    assert [p.name for p in ctx.run_dir.file("checkpoints").iterdir()] == ["step-000005"]
    assert len(losses(ctx.run_dir)) == 5  # steps 1-4 were not taken again


def test_resume_after_a_kill_is_bitwise_equal(tmp_path, monkeypatch):
    cfg, ctx = runner_setup(tmp_path / "a", *SIX_STEPS_FT)
    finetune.run(cfg, ctx)
    reference = load_file(ctx.run_dir.file("checkpoints") / "step-000006" / "trainable.safetensors")

    cfg2, ctx2 = runner_setup(tmp_path / "b", *SIX_STEPS_FT)
    real = finetune.save_checkpoint

    def killed_after_step_4(root, step, *args):
        real(root, step, *args)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "save_checkpoint", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(cfg2, ctx2)
    monkeypatch.setattr(finetune, "save_checkpoint", real)
    finetune.run(cfg2, ctx2)
    resumed = load_file(ctx2.run_dir.file("checkpoints") / "step-000006" / "trainable.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_resume_refuses_a_changed_config(tmp_path):
    cfg, ctx = runner_setup(tmp_path, *SIX_STEPS_FT, "method.max_steps=2")
    finetune.run(cfg, ctx)
    cfg.method.lr = 1e-4
    cfg.method.max_steps = 4
    with pytest.raises(LlmlabError, match="changed lr"):
        finetune.run(cfg, ctx)


def test_half_written_checkpoints_are_ignored(tmp_path):
    cfg, ctx = runner_setup(tmp_path, *SIX_STEPS_FT, "method.max_steps=2")
    finetune.run(cfg, ctx)
    (ctx.run_dir.file("checkpoints") / ".tmp-step-000004").mkdir()  # a kill during writing leaves only this
    cfg.method.max_steps = 3
    assert finetune.run(cfg, ctx)["steps"] == 3


def test_unknown_lora_target_is_a_clear_error(tmp_path):
    cfg, ctx = runner_setup(tmp_path, *SIX_STEPS_FT, "method.peft=lora", "method.lora.target_modules=[qkv_proj]")
    with pytest.raises(LlmlabError, match="qkv_proj"):
        finetune.run(cfg, ctx)


def test_answer_only_loss_masks_the_prompt():
    from llmlab.models.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    row = {"ft_text": "Q? A: True", "target": " True"}
    ((ids, labels),) = finetune.encode([row], tok, 64, "answer")
    assert labels[: len("Q? A:")] == [finetune.IGNORE] * len("Q? A:") and labels[-5:] == ids[-5:]


def test_a_full_fine_tune_is_evaluated_by_the_icl_runner(tmp_path):
    from llmlab.runners import icl

    cfg, ctx = runner_setup(tmp_path / "ft", *SIX_STEPS_FT, "method.max_steps=2")
    finetune.run(cfg, ctx)
    cfg2, ctx2 = runner_setup(
        tmp_path / "eval",
        "model=local",
        f"model.path={ctx.run_dir.file('model')}",
        "dataset=implicit/bool",
        "method.shots=0",
        "method.limit=3",
    )
    assert icl.run(cfg2, ctx2)["metrics"]["pattern"]["n"] == 3


def test_a_lora_adapter_is_evaluated_on_its_base(tmp_path):
    from llmlab.runners import icl

    cfg, ctx = runner_setup(tmp_path / "ft", *SIX_STEPS_FT, "method.peft=lora", "method.max_steps=2")
    finetune.run(cfg, ctx)
    adapter = ctx.run_dir.file("model")
    cfg2, ctx2 = runner_setup(
        tmp_path / "eval", f"model.adapter={adapter}", "dataset=implicit/bool", "method.shots=0", "method.limit=3"
    )
    assert icl.run(cfg2, ctx2)["metrics"]["pattern"]["n"] == 3
    cfg3, ctx3 = runner_setup(tmp_path / "bad", f"model.adapter={tmp_path}", "method.limit=1")
    with pytest.raises(LlmlabError, match="not a LoRA adapter"):
        icl.run(cfg3, ctx3)
