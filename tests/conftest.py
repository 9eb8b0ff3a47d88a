"""Hermetic test environment: no W&B, no hub, outputs under a temporary directory."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run interpreted on the CPU; Triton reads this when it is first imported, so it is set here, before
# any test module imports it (tests/unit/test_kernels_compile.py compiles them in subprocesses without it).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.update(
    WANDB_MODE="disabled",
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    HF_HUB_DISABLE_TELEMETRY="1",
    OMP_NUM_THREADS="1",
)
torch.set_num_threads(1)  # tiny models: threads only add overhead, and CI has 2 shared cores


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """LLMLAB_OUTPUTS pointing at a fresh directory."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("LLMLAB_OUTPUTS", str(out))
    return out
