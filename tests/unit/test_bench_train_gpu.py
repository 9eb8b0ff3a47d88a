"""The GPU training-throughput benchmark runs every case at toy size on the CPU (the runners' own step functions)."""

from __future__ import annotations

import json
import math

from llmlab.bench import train_gpu


def test_train_gpu_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "train_gpu.json"
    code = train_gpu.main(["--tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert code == 0 and [r["case"] for r in rows] == list(train_gpu.CASES)
    for r in rows:
        assert r["tokens_per_s"] > 0 and all(math.isfinite(x) for x in r["losses"]) and r["flops_per_token"] > 0
    by_case = {r["case"]: r for r in rows}
    assert by_case["smollm2_lora"]["trainable"] < by_case["smollm2_full"]["trainable"] / 2  # only the adapters train


def test_train_gpu_bench_without_cuda_is_a_no_op(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    assert train_gpu.main([]) == 0 and "no CUDA GPU" in capsys.readouterr().out
