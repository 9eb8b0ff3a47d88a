"""bf16 training on a CUDA GPU through the real CLI: `hardware=auto` resolves to CUDA + bf16; pretraining (softmax
attention, StableMask through the compiled Triton kernel, RWKV-4 through the WKV kernel) and fine-tuning (full, LoRA)
take a few optimiser steps under bf16 autocast with finite losses; the multi-GPU preset runs with one process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import LM_SHAPE, compose, run_cli

STEPS = 3
PRETRAIN_RUN = [
    f"method.max_steps={STEPS}",
    "method.warmup_steps=1",
    "method.log_every=1",
    "method.eval_every=100",
    "method.save_every=100",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_metrics=false",
]
MODELS = {
    "lm_softmax": LM_SHAPE,
    "lm_stablemask_triton": [*LM_SHAPE, "model.lm.attention=stablemask", "model.lm.attn_impl=triton"],
    "rwkv_triton": [
        "method=pretrain",
        "model=rwkv4-tiny",
        "dataset=corpus/pydoc",
        "model.rwkv.n_layer=1",
        "model.rwkv.d_model=32",
        "model.rwkv.ffn_hidden=64",
        "model.rwkv.wkv_impl=triton",
        "dataset.block_size=32",
        "method.micro_batch_size=4",
        "method.grad_accum=2",
    ],
}
FINETUNE = [
    "method=finetune",
    "model=tiny-random",
    "dataset=implicit/bool",
    "dataset.n_test=10",
    "dataset.n_icl_pool=50",
    "dataset.n_train_ft=20",
    "method.max_steps=2",
    "method.lr=3e-3",
    "method.warmup_steps=0",  # both steps update the weights
    "method.micro_batch_size=2",
    "method.grad_accum=2",
    "method.save_every=100",
]


@pytest.mark.parametrize(
    "preset, device, dtype",
    [("auto", "cuda", torch.bfloat16), ("gpu", "cuda", torch.bfloat16), ("cpu", "cpu", torch.float32)],
)
def test_hardware_presets_resolve_on_a_gpu_machine(preset, device, dtype):
    from llmlab.hardware import setup_hardware

    hw = setup_hardware(compose([f"hardware={preset}"]).hardware)
    assert (hw.device.type, hw.dtype, hw.world_size) == (device, dtype, 1)


def train(run: Path, *overrides: str, env: dict | None = None) -> tuple[list[float], dict, dict]:
    """`llmlab OVERRIDES` writing to `run`: the logged training losses, results.json and the saved config."""
    out = run_cli("logger=none", *overrides, f"hydra.run.dir={run}", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert " · cuda bfloat16 · " in out.stdout, out.stdout  # the hardware the run set up
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["hardware"]["device"], config["hardware"]["dtype"]) == ("cuda", "bfloat16")
    return losses, json.loads((run / "results.json").read_text()), config


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_pretrain_bf16_steps(tmp_path, model):
    losses, results, _ = train(tmp_path / "run", "hardware=gpu", *model, *PRETRAIN_RUN)
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert results["steps"] == STEPS and math.isfinite(results["val"]["loss"])


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_finetune_bf16_steps(tmp_path, peft):
    losses, results, _ = train(tmp_path / "run", "hardware=gpu", *FINETUNE, f"method.peft={peft}")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert results["peft"] == peft and results["steps"] == 2 and math.isfinite(results["final_loss"])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_multi_gpu_preset_with_one_process(tmp_path, strategy):
    """`hardware=multi_gpu` with LLMLAB_NPROC=1: one process (no torchrun, nothing to wrap), CUDA + bf16."""
    hardware = ["hardware=multi_gpu", f"hardware.strategy={strategy}"]
    losses, results, config = train(tmp_path / "run", *hardware, *LM_SHAPE, *PRETRAIN_RUN, env={"LLMLAB_NPROC": "1"})
    assert (config["hardware"]["nproc"], config["hardware"]["strategy"]) == (1, strategy)
    assert results["timing"]["world_size"] == 1 and len(losses) == STEPS and math.isfinite(results["val"]["loss"])
