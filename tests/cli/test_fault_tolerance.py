"""Fault tolerance (issue #8): a failing job does not stop its sweep, `resume=auto` after `kill -9` gives the same
results as an uninterrupted run, W&B trouble never stops a run, and a full disk is one clear line."""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from tests.helpers import FAST_LM, REPO, TINY, run_cli

FAST_FT = [
    *TINY,
    "method=finetune",
    "dataset=implicit/bool",
    "method.lr=3e-3",
    "method.warmup_steps=1",
    "method.grad_accum=2",
    "method.micro_batch_size=2",
    "method.max_steps=60",
    "method.save_every=5",
]


def stderr_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------- (a) a failing sweep job


def test_a_failing_job_is_recorded_the_sweep_goes_on_and_resume_reruns_only_it(outputs):
    args = ["-m", *TINY, "method.limit=1", "method.shots=0,5000,1"]  # job 1: more shots than the pool
    res = run_cli(*args)
    assert res.returncode == 1, res.stderr[-3000:]
    (sweep,) = (outputs / "multirun").glob("*/*")
    assert (sweep / "0" / "results.json").is_file() and (sweep / "2" / "results.json").is_file()
    meta = json.loads((sweep / "1" / "meta.json").read_text())
    assert meta["status"] == "failed" and "larger than the demonstration pool" in meta["error"]
    assert "LlmlabError" in (sweep / "1" / "error.txt").read_text()  # the traceback, for debugging
    lines = stderr_lines(res)
    assert lines[-2] == "llmlab: 1 of 3 jobs failed:", res.stderr[-2000:]
    assert lines[-1].startswith("  #1 ") and "method.shots=5000" in lines[-1] and str(sweep / "1") in lines[-1]
    assert "larger than the demonstration pool" in lines[-1] and "Traceback" not in res.stderr
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "failed"

    # The same command with resume=auto reuses the sweep: finished jobs are skipped, the failed one runs again.
    done = (sweep / "0" / "results.json").stat().st_mtime_ns
    res = run_cli(*args, "resume=auto")
    assert res.returncode == 1, res.stderr[-3000:]
    assert list((outputs / "multirun").glob("*/*")) == [sweep]
    assert f"resume=auto: continuing {sweep}" in res.stderr and res.stderr.count("already completed") == 2
    assert (sweep / "0" / "results.json").stat().st_mtime_ns == done
    assert stderr_lines(res)[-2] == "llmlab: 1 of 3 jobs failed:"


# ------------------------------------------------------------------------------------------- (b) kill -9, resume=auto


def kill_then_resume(outputs: Path, tmp_path: Path, args: list[str]) -> tuple[dict, dict, Path, Path]:
    """Run `args` uninterrupted (own outputs root) and, alongside, the same command killed with SIGKILL at a random
    moment after its first checkpoint; then the killed command again with resume=auto. Both results and run dirs."""
    cli = [sys.executable, "-m", "llmlab.cli", *args]
    env = {**os.environ, "LLMLAB_CACHE": str(tmp_path / "cache")}
    reference = subprocess.Popen(
        cli,
        cwd=REPO,
        env={**env, "LLMLAB_OUTPUTS": str(tmp_path / "reference")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(cli, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(outputs.glob("runs/*/*/checkpoints/step-*")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))
    victim.kill()  # SIGKILL: no handler, no cleanup
    victim.wait()
    (run,) = outputs.glob("runs/*/*")
    assert not (run / "results.json").exists(), "the run finished before it was killed"
    assert json.loads((run / "meta.json").read_text())["status"] == "running"

    res = run_cli(*args, "resume=auto", env={"LLMLAB_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resume=auto: continuing {run}" in res.stderr and list(outputs.glob("runs/*/*")) == [run]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    (ref_run,) = (tmp_path / "reference").glob("runs/*/*")
    resumed, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (run, ref_run))
    assert json.loads((run / "meta.json").read_text())["attempt"] == 2
    return resumed, uninterrupted, run, ref_run


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


@pytest.mark.slow  # the default tier has the same with kill -9, SIGINT and SIGTERM (tests/cli/test_integrity_runs.py)
def test_pretrain_killed_then_resumed_matches_an_uninterrupted_run(outputs, tmp_path):
    resumed, ref, run, ref_run = kill_then_resume(outputs, tmp_path, FAST_LM)
    assert resumed["train"]["loss"] == ref["train"]["loss"] and resumed["val"] == ref["val"]  # exact on CPU
    assert resumed["metrics"] == ref["metrics"] and resumed["steps"] == ref["steps"] == 300
    assert same_bytes(
        run / "checkpoints/step-000300/trainable.safetensors", ref_run / "checkpoints/step-000300/trainable.safetensors"
    )


@pytest.mark.slow  # three CLI processes (two at once), ~60 s on 2 cores: peft's import dominates
def test_finetune_killed_then_resumed_matches_an_uninterrupted_run(outputs, tmp_path):
    resumed, ref, run, ref_run = kill_then_resume(outputs, tmp_path, FAST_FT)
    assert resumed["final_loss"] == ref["final_loss"] and resumed["steps"] == ref["steps"] == 60
    assert same_bytes(
        run / "checkpoints/step-000060/trainable.safetensors", ref_run / "checkpoints/step-000060/trainable.safetensors"
    )


def make_run(
    root: Path, name: str, overrides: list[str], mtime: float, status: str | None = "running", pid: int = 0
) -> Path:
    run = root / "runs" / "2026-01-01" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status:
        (run / "meta.json").write_text(json.dumps({"status": status, "host": platform.node(), "pid": pid}))
    os.utime(run / ".hydra" / "overrides.yaml", (mtime, mtime))
    return run


def test_resume_auto_finds_the_newest_unfinished_run_of_the_same_command(tmp_path, monkeypatch):
    from llmlab.errors import LlmlabError
    from llmlab.launch import resume_overrides

    monkeypatch.setenv("LLMLAB_OUTPUTS", str(tmp_path))
    cmd = ["method=pretrain", "seed=1"]
    old = make_run(tmp_path, "a", cmd, 100)
    make_run(tmp_path, "b", ["method=pretrain", "seed=2"], 300)  # another command
    assert resume_overrides(cmd) == []  # resume=never is the default
    assert resume_overrides(["seed=1", "resume=auto", "method=pretrain"]) == [f"hydra.run.dir={old}"]
    newer = make_run(tmp_path, "c", [*cmd, "resume=auto"], 200, status=None)  # killed before meta.json
    assert resume_overrides([*cmd, "resume=auto"]) == [f"hydra.run.dir={newer}"]
    make_run(tmp_path, "d", cmd, 400, status="completed")  # the newest finished: a fresh run
    assert resume_overrides([*cmd, "resume=auto"]) == []
    make_run(tmp_path, "e", cmd, 500, pid=os.getppid())  # still running (its process is alive): left alone
    assert resume_overrides([*cmd, "resume=auto"]) == []
    assert resume_overrides([*cmd, "resume=auto", "hydra.run.dir=x"]) == []  # an explicit directory wins
    assert resume_overrides(["--cfg", "job", *cmd, "resume=auto"]) == []
    with pytest.raises(LlmlabError, match="resume must be auto or never"):
        resume_overrides([*cmd, "resume=yes"])

    sweep = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    sweep.mkdir(parents=True)
    key = ["hydra.sweeper.params.seed=0,1", "method.shots=0,4"]
    (sweep / "sweep.json").write_text(json.dumps({"status": "failed", "key": key, "host": "elsewhere", "pid": 1}))
    assert resume_overrides(
        ["-m", "method.shots=0,4", "hydra.sweeper.params.seed=0,1", "resume=auto", "hydra/launcher=joblib"]
    ) == [f"hydra.sweep.dir={sweep}"]
    assert resume_overrides(["-m", "method.shots=0,4", "resume=auto"]) == []  # another grid


# ---------------------------------------------------------------------------------------------------- (c) W&B trouble


class FakeRun:
    def __init__(self, fail_log: bool = False):
        self.fail_log, self.logged, self.summary = fail_log, [], types.SimpleNamespace(update=lambda m: None)

    def log(self, metrics, step=None):
        if self.fail_log:
            raise ConnectionError("service gone")
        self.logged.append(metrics)

    def finish(self, exit_code=0):
        pass


def fake_wandb(monkeypatch, fail_modes=(), logged_in=True, fail_log=False):
    calls = []

    def init(mode, **kwargs):
        calls.append(mode)
        if mode in fail_modes:
            raise RuntimeError(f"cannot reach the server ({mode})\nretry later")
        return FakeRun(fail_log)

    module = types.SimpleNamespace(
        init=init, login=lambda prompt, verify: logged_in, run=None, Settings=lambda **kw: kw, Table=None
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return calls


def tracker(tmp_path, mode="online"):
    from omegaconf import OmegaConf

    from llmlab.tracking import Tracker

    cfg = OmegaConf.create(
        {
            "logger": {"backend": "wandb", "mode": mode, "project": "p", "entity": None, "group": None, "tags": []},
            "tags": [],
        }
    )
    run_dir = types.SimpleNamespace(path=tmp_path, file=lambda name: tmp_path / name)
    return Tracker(cfg, run_dir, name="t")


def notices(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("llmlab:")]


def test_wandb_not_logged_in_logs_offline_with_one_notice(tmp_path, monkeypatch, capsys):
    calls = fake_wandb(monkeypatch, logged_in=False)
    t = tracker(tmp_path)
    assert calls == ["offline"] and t.run is not None
    (line,) = notices(capsys)
    assert "not logged in" in line and "offline" in line and "wandb sync" in line


def test_wandb_unreachable_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    calls = fake_wandb(monkeypatch, fail_modes=("online",))
    t = tracker(tmp_path)
    assert calls == ["online", "offline"] and t.run is not None
    (line,) = notices(capsys)
    assert "cannot reach the server (online)" in line and "logging offline" in line


def test_wandb_failing_altogether_never_stops_the_run(tmp_path, monkeypatch, capsys):
    calls = fake_wandb(monkeypatch, fail_modes=("online", "offline"))
    t = tracker(tmp_path)
    assert calls == ["online", "offline"] and t.run is None
    t.log({"x": 1.0}, step=1)
    t.summary({"x": 1.0})
    t.finish()
    (line,) = notices(capsys)
    assert "W&B unavailable" in line and str(tmp_path) in line

    fake_wandb(monkeypatch, fail_log=True)  # fails mid-run: dropped after one notice
    t = tracker(tmp_path, mode="offline")
    t.log({"x": 1.0}, step=1)
    t.log({"x": 2.0}, step=2)
    t.finish()
    assert t.run is None and len(notices(capsys)) == 1
    assert (tmp_path / "wandb_id").read_text()  # the id a resumed run reuses


@pytest.mark.slow  # the simulated W&B failures above run by default
def test_wandb_online_without_an_api_key_runs_offline_through_the_cli(outputs, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # WANDB_MODE unset, no API key
    env.update(
        HOME=str(tmp_path / "home"),
        NETRC=str(tmp_path / "no-netrc"),
        **{f"WANDB_{k}_DIR": str(tmp_path / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmlab.cli",
            "model=tiny-random",
            "hardware=cpu",
            "logger=wandb",
            "logger.mode=online",
            "method.limit=1",
            "method.shots=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("llmlab:")]
    assert len(ours) == 1 and "W&B not logged in" in ours[0], res.stderr[-3000:]
    (run,) = outputs.glob("runs/*/*")
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


# ------------------------------------------------------------------------------------------------------ (d) disk full


def enospc(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from llmlab.errors import LlmlabError
    from llmlab.io import DiskFullError, write_json

    path = tmp_path / "results.json"
    write_json(path, {"old": 1})
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(DiskFullError, match="disk full while writing .*results.json") as err:
        write_json(path, {"new": 2})
    assert isinstance(err.value, LlmlabError) and "\n" not in str(err.value)
    assert json.loads(path.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["results.json"]


FULL_ON_RESULTS = """
import errno, os, sys
real = os.fsync
def fsync(fd):
    if ".results.json." in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd)
os.fsync = fsync
sys.argv = ["llmlab", *sys.argv[1:]]
from llmlab.cli import main
main()
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
def test_the_cli_reports_a_full_disk_in_one_line_and_keeps_the_previous_results(outputs):
    run = outputs / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text('{"previous": true}\n')
    res = subprocess.run(
        [sys.executable, "-c", FULL_ON_RESULTS, *TINY, "method.limit=1", "method.shots=1", f"hydra.run.dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("llmlab:")]
    assert ours == [stderr_lines(res)[-1]] and "Traceback" not in res.stderr
    assert ours[0].startswith(f"llmlab: error: disk full while writing {run / 'results.json'} (No space left")
    assert (run / "results.json").read_text() == '{"previous": true}\n'
    assert json.loads((run / "meta.json").read_text())["status"] == "failed"
