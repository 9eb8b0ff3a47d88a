"""hydra/sweeper=optuna (issue #16): a 3-trial search reports its best trial, and an interrupted search resumes from
its study (SQLite in the sweep directory) with `resume=auto`, running only the missing trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.helpers import REPO, TINY, run_cli

SEARCH_FT = [
    *TINY,
    "method=finetune",
    "dataset=implicit/bool",
    "dataset.n_train_ft=16",
    "method.warmup_steps=1",
    "method.grad_accum=1",
    "method.micro_batch_size=2",
    "method.max_steps=8",
    "method.save_every=100",
]
SMALL_LM = [
    "model.lm.n_layer=1",
    "model.lm.d_model=32",
    "model.lm.n_head=2",
    "model.lm.ffn_hidden=64",
    "dataset.block_size=32",
    "method.micro_batch_size=4",
    "method.grad_accum=2",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_blocks=1",
    "hardware=cpu",
    "logger=none",
    "method.log_every=1",
    "method.max_steps=300",
    "method.eval_every=300",
    "method.save_every=50",
    "hydra.sweeper.n_trials=3",
]


def trials(sweep: Path) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="llmlab", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


def objective_of(run: Path, key: str) -> float:
    results = json.loads((run / "results.json").read_text())
    return results["metrics"]["val"][key] if key == "val_loss" else results[key]


def test_a_three_trial_search_reports_its_best_trial(outputs):
    """Learning rates for a LoRA-free fine-tune of tiny-random: finetune's objective is its final training loss
    (minimised, its @register_runner objective)."""
    res = run_cli(
        "-m", "hydra/sweeper=optuna", *SEARCH_FT, "method.lr=tag(log,interval(1e-4,1e-1))", "hydra.sweeper.n_trials=3"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (outputs / "multirun").glob("*/*")
    done = trials(sweep)
    assert [t.state.name for t in done] == ["COMPLETE"] * 3
    assert [t.number for t in done] == [0, 1, 2]
    losses = {n: objective_of(sweep / str(n), "final_loss") for n in range(3)}
    assert {t.number: t.value for t in done} == losses  # each trial's value is its run's objective
    best = min(losses, key=losses.get)
    report = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert report["best_trial"] == best and report["best_value"] == losses[best]
    assert report["metric"] == "final_loss" and report["direction"] == "minimize"
    assert report["run_dir"] == str(sweep / str(best)) and report["completed_trials"] == 3
    assert report["best_params"] == done[best].params
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("llmlab: optuna: best of 3 trials")]
    assert len(line) == 1 and f"#{best} final_loss=" in line[0] and "(minimize)" in line[0], res.stderr[-2000:]
    assert str(sweep / str(best)) in line[0]
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "completed"


def test_an_interrupted_search_resumes_its_study_with_resume_auto(outputs):
    """The pretrain_lr preset (lr and warm-up of lm-tiny, minimising val_loss), stopped with Ctrl-C during its second
    trial: the same command with resume=auto reuses the sweep directory and its study, keeps the finished trial,
    tries the interrupted trial's parameters again (in a new job directory) and stops at three finished trials."""
    args = ["-m", "hparams_search=pretrain_lr", *SMALL_LM]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmlab.cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    second = None
    while proc.poll() is None and time.time() < deadline:
        found = list((outputs / "multirun").glob("*/*/1/metrics.jsonl"))
        if found and found[0].stat().st_size > 0:
            second = found[0].parent
            break
        time.sleep(0.02)
    assert second is not None, "the second trial never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    sweep = second.parent
    assert [t.state.name for t in trials(sweep)] == ["COMPLETE", "RUNNING"]
    assert json.loads((second / "meta.json").read_text())["status"] == "interrupted"
    first_done = (sweep / "0" / "results.json").stat().st_mtime_ns
    interrupted_params = trials(sweep)[1].params

    res = run_cli(*args, "resume=auto")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resume=auto: continuing {sweep}" in res.stderr
    assert "trial #1 did not finish; running its parameters again" in res.stderr
    done = trials(sweep)
    assert [t.state.name for t in done] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert done[2].params == interrupted_params
    assert (sweep / "0" / "results.json").stat().st_mtime_ns == first_done  # not run again
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    values = {n: objective_of(sweep / str(n), "val_loss") for n in (0, 2, 3)}
    assert {t.number: t.value for t in done if t.state.name == "COMPLETE"} == values
    report = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(values, key=values.get)
    assert (report["best_trial"], report["best_value"], report["completed_trials"]) == (best, values[best], 3)
    assert report["metric"] == "val_loss" and report["direction"] == "minimize"
    assert "llmlab: optuna: best of 3 trials" in res.stderr
