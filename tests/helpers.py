"""Helpers shared by the tests: the CLI in a subprocess, config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TINY = ["model=tiny-random", "hardware=cpu", "logger=none"]
# skip unless a CUDA GPU is visible (every test in tests/gpu/ carries it, with the `gpu` marker)
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# a 1-layer lm-tiny on the pydoc corpus: pretraining steps of a few milliseconds (resume, launcher and cluster tests)
LM_SHAPE = [
    "method=pretrain",
    "model=lm-tiny",
    "dataset=corpus/pydoc",
    "model.lm.n_layer=1",
    "model.lm.d_model=32",
    "model.lm.n_head=2",
    "model.lm.ffn_hidden=64",
    "dataset.block_size=32",
    "method.micro_batch_size=4",
    "method.grad_accum=2",
]
# ... 6 steps with a checkpoint every 2, validation and the end-of-run evaluations kept small (in-process tests)
SIX_STEPS_LM = [
    *LM_SHAPE,
    "method.max_steps=6",
    "method.save_every=2",
    "method.warmup_steps=2",
    "method.lr=3e-3",
    "method.eval_every=100",
    "method.log_every=1",
    "method.eval_blocks=4",
    "method.eval_lengths=[1,2]",
    "method.sink_blocks=2",
]
# fine-tuning on implicit/bool: 6 steps of 2 x 2 micro-batches, a checkpoint every 2
SIX_STEPS_FT = [
    "method=finetune",
    "dataset=implicit/bool",
    "method.lr=3e-3",
    "method.warmup_steps=1",
    "method.grad_accum=2",
    "method.micro_batch_size=2",
    "method.max_steps=6",
    "method.save_every=2",
]
# ... trained 300 steps with a checkpoint every 20: long enough to be stopped in the middle
FAST_LM = [
    *LM_SHAPE,
    "method.warmup_steps=2",
    "method.eval_every=1000",
    "method.log_every=10",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_blocks=1",
    "hardware=cpu",
    "logger=none",
    "method.max_steps=300",
    "method.save_every=20",
]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`llmlab ARGS` in a real subprocess (the installed console script's module)."""
    return subprocess.run(
        [sys.executable, "-m", "llmlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def compose(overrides: list[str]):
    """Compose the root config with overrides (no run), as the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmlab.paths import conf_dir
    from llmlab.registry import register_schemas

    register_schemas()

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


SMALL_SIZES = {"n_test": 10, "n_icl_pool": 50, "n_train_ft": 20}


def runner_setup(tmp_path, *overrides: str):
    """A composed tiny-model config (small dataset sizes) and a RunContext in `tmp_path/run`, for in-process runs."""
    import torch
    from omegaconf import OmegaConf

    from llmlab.hardware import Hardware
    from llmlab.run_context import RunContext
    from llmlab.run_dir import RunDir
    from llmlab.tracking import Tracker

    dataset = compose([*TINY, *overrides]).dataset
    sizes = [f"dataset.{k}={n}" for k, n in SMALL_SIZES.items() if k in dataset]  # where its source has them
    cfg = compose([*TINY, *sizes, *overrides])
    cfg.output_dir = str(tmp_path / "run")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    cfg.pop("hydra")
    run_dir = RunDir(cfg.output_dir, cfg)
    return cfg, RunContext(Hardware(torch.device("cpu"), torch.float32), run_dir, Tracker(cfg, run_dir, "test"))
