"""`make gpu-check`'s script (`llmlab.bench.gpu_check`) end to end on the CPU at toy sizes: the JSON it writes on a
GPU, with every section, row and comparison in place."""

from __future__ import annotations

import json

from llmlab.bench import gpu_check
from llmlab.train import speed


def test_cpu_smoke_writes_the_gpu_check_json(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "BACKEND", speed.BACKEND)  # the smoke run switches to aot_eager: restored after
    out = tmp_path / "check.json"
    assert gpu_check.main(["--cpu-smoke", "--steps", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu-smoke" and result["cpu_smoke"] and result["matmul_peak_tflops"] is None
    assert result["tests"]["returncode"] == 0 and "skipped" in result["tests"]["summary"]  # no CUDA: all skipped
    assert result["kernels"] == {"skipped": "no CUDA GPU"}
    rows = {(r["case"], r["path"]): r for r in result["train"]["rows"]}
    assert list(rows) == gpu_check.TRAIN
    assert rows[("smollm2_full", "fast_liger")]["skipped"] == "liger-kernel needs CUDA"
    measured = [r for r in rows.values() if "skipped" not in r]
    assert len(measured) == 8 and all(len(r["losses"]) == 4 and r["tokens_per_s"] > 0 for r in measured)
    comparisons = result["train"]["comparisons"]
    assert sorted(comparisons) == [
        f"{c}/fast" for c in ("lm160m_softmax", "lm71m_softmax", "smollm2_full", "smollm2_lora")
    ]
    for c in comparisons.values():  # fp32 on the CPU: the compiled path computes what the eager one does
        assert c["losses_match"] and c["max_rel_loss_diff"] <= 1e-5 and c["steps"] == 4


def test_slug_names_the_file_after_the_device():
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
