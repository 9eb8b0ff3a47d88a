"""Through the real CLI: a (shrunk) hub model shape scores ICL and takes fine-tuning steps without any weights, and
`llmlab plan` prints a memory plan or refuses bad input in one line."""

from __future__ import annotations

import json
import math

from tests.helpers import run_cli

SHAPE = [
    "model=qwen1.5-0.5b",
    "model.source=shape",
    "model.shape.num_hidden_layers=1",
    "model.shape.hidden_size=64",
    "model.shape.intermediate_size=128",
    "model.shape.num_attention_heads=4",
    "model.shape.num_key_value_heads=2",
    "model.shape.vocab_size=1024",
    "hardware=cpu",
    "logger=none",
]


def test_a_shape_model_scores_icl(tmp_path):
    res = run_cli(*SHAPE, "method.limit=2", "method.shots=2", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "llmlab: icl · model qwen1.5-0.5b+random-init · " in res.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"] == "qwen1.5-0.5b+random-init"  # random weights never pass for the pretrained model
    assert {v: m["n"] for v, m in results["metrics"].items()} == {"pattern": 2, "counter": 2}
    assert all(0 <= m["loglik"] <= 1 for m in results["metrics"].values())
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 4  # 2 items x 2 variants


def test_a_shape_model_takes_fine_tuning_steps(tmp_path):
    res = run_cli(
        *SHAPE,
        "method=finetune",
        "dataset=implicit/bool",
        "dataset.n_train_ft=8",
        "method.max_steps=2",
        "method.warmup_steps=0",
        "method.micro_batch_size=2",
        "method.grad_accum=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 2 and math.isfinite(results["final_loss"])
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "qwen2"


def test_plan_prints_the_papers_finetuning_plan():
    res = run_cli("plan", "model=qwen1.5-7b", "method=finetune", "hardware=gpu")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("llmlab plan: finetune (full) · model qwen1.5-7b (qwen2, 7.72B parameters)")
    assert any(line.split()[:2] == ["optimizer", "states"] for line in lines)
    assert "FSDP over" in lines[-1]


def test_plan_refuses_bad_input_in_one_line():  # the other bad inputs: tests/unit/test_memory_plan.py
    res = run_cli("plan", "model=qwen1.5-7b", "method=icl")
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1
    assert res.stderr.startswith("llmlab: error: llmlab plan covers method=finetune (full, LoRA) and method=pretrain")
