"""The CLI through a real subprocess: single runs, multirun, dry run, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY, run_cli


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta.json"))


def test_single_run_writes_a_complete_run_directory(outputs):
    res = run_cli(*TINY, "method.limit=3", "method.shots=2", "seed=7")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(outputs)
    for name in (
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "results.json",
        "predictions.jsonl",
        ".hydra/overrides.yaml",
    ):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["seed"] == 7 and "seed=7" in meta["overrides"]
    assert {"torch", "transformers", "python"} <= set(meta["versions"])
    results = json.loads((run / "results.json").read_text())
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and results["metrics"]["pattern"]["n"] == 3
    assert results["metrics"]["pattern"]["strict"] == sum(p["strict"] for p in preds[:3]) / 3
    assert not list(run.glob("*.partial.jsonl"))


def test_multirun_sweeps_the_grid(outputs):
    res = run_cli("-m", *TINY, "method.limit=2", "dataset=implicit/expression,implicit/bool", "method.shots=0,1")
    assert res.returncode == 0, res.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in outputs.rglob("results.json")]
    assert sorted((r["task"], r["shots"]) for r in results) == [
        ("bool", 0),
        ("bool", 1),
        ("expression", 0),
        ("expression", 1),
    ]


def test_dry_run_prints_the_config_and_loads_nothing(outputs):
    res = run_cli("--cfg", "job", "model=qwen1.5-7b", "hardware=gpu")
    assert res.returncode == 0, res.stderr
    assert "hub_id: Qwen/Qwen1.5-7B" in res.stdout and "device: cuda" in res.stdout
    assert not outputs.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["model.foo=1"], "Key 'foo' not in 'ModelConfig'"),
        (["method.shots=abc"], "could not be converted to Integer"),
        (["method.shots=5000"], "larger than the demonstration pool"),
        (["method.runner=nope"], "unknown runner 'nope'"),
        (["model=local", "model.path=/does/not/exist"], "does not exist"),
        (["model=qwen1.5-0.5b"], "not found"),
        (["dataset=file", "dataset.path=/does/not/exist.jsonl"], "dataset file not found"),
        (["dataset=implicit/bool", "dataset.options.bool_variant=weird"], "bool_variant"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, needle, outputs):
    base = [a for a in TINY if not (a.startswith("model=") and any(x.startswith("model=") for x in args))]
    res = run_cli(*base, *args)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmlab: error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not list(outputs.rglob("results.json"))


def test_bad_input_choice_typo_fails_before_any_model_loads(outputs, tmp_path):
    """A value outside its field's choices is refused when the config is composed: no run directory, no model (the
    hub model cannot load offline, so a later check would fail on it instead), nothing cached."""
    cache = tmp_path / "cache"
    res = run_cli(
        "method=finetune",
        "method.peft=loraa",
        "model=qwen1.5-0.5b",
        "hardware=cpu",
        "logger=none",
        env={"LLMLAB_CACHE": str(cache)},
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and lines == [
        "llmlab: error: method.peft must be one of none, lora, got 'loraa'; did you mean 'lora'?"
    ], res.stderr
    assert not outputs.exists() and not cache.exists()


def test_malformed_dataset_file(outputs, tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n')
    res = run_cli(*TINY, "dataset=file", f"dataset.path={bad}")
    assert res.returncode == 2
    assert "line 1" in res.stderr and res.stderr.count("\n") == 1


def test_report_subcommand_on_a_finished_multirun(outputs):
    sweep = outputs / "sweep"
    assert (
        run_cli("-m", *TINY, "method.limit=2", "method.shots=0,2", "seed=0,1", f"hydra.sweep.dir={sweep}").returncode
        == 0
    )
    res = run_cli("report", str(sweep))
    assert res.returncode == 0, res.stderr
    assert "| shots | variant |" in res.stdout and "(2 seeds)" in res.stdout
    assert (sweep / "report.md").is_file() and (sweep / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_icl_end_to_end_on_smollm2(outputs):
    """The embedded default model through the real CLI: 8-shot bool-shortcut, a few items per variant."""
    res = run_cli(
        "hardware=cpu", "logger=none", "dataset=implicit/bool", "method.shots=8", "method.limit=8", timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(outputs)
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "smollm2-135m" and results["timing"]["model_load_s"] < 60
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert all(p["generated"].strip() for p in preds)  # a real model answers something
    assert sum(p["loglik_correct"] for p in preds) >= len(preds) / 2  # 8-shot bool-shortcut is well above chance


def test_wandb_logs_offline_into_the_run_directory(outputs, tmp_path):
    wb = {f"WANDB_{k}_DIR": str(tmp_path / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
    res = run_cli(
        "model=tiny-random",
        "hardware=cpu",
        "logger=wandb",
        "method.limit=2",
        "method.shots=1",
        env={"WANDB_MODE": "offline", **wb},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = run_dirs(outputs)
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")) and (run / "wandb_id").read_text().strip()
