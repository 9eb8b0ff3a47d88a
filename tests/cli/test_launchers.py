"""Launchers (issue #8): the SLURM submission script that submitit would hand to sbatch, a local submitit job end to
end (and its requeue after a preemption signal), and one GPU per worker process under the joblib launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import LM_SHAPE, REPO, TINY, compose, run_cli

FAST_LM = [
    *LM_SHAPE,
    "method.warmup_steps=2",
    "method.eval_every=1000",
    "method.log_every=1",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_blocks=1",
    "hardware=cpu",
]


def sbatch_script(monkeypatch, tmp_path, *overrides: str, jobs: int = 2) -> tuple[str, Path]:
    """Run hydra/launcher=slurm's launch() with sbatch replaced by an echo: the script submitit wrote, its folder."""
    import hydra.utils
    import submitit.slurm.slurm as slurm

    import llmlab.launch  # noqa: F401  (its resolver and callback)

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", staticmethod(lambda: 2))  # "srun is on the PATH"
    monkeypatch.setattr(
        slurm.SlurmExecutor,
        "_make_submission_command",
        lambda self, path: [sys.executable, "-c", "print('Submitted batch job 4242')"],
    )
    monkeypatch.setattr(slurm.SlurmJob, "results", lambda self: ["done"])
    cfg = compose(["hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch([[f"seed={i}"] for i in range(jobs)], initial_job_idx=0) == ["done"] * jobs
    folder = tmp_path / "sweep" / ".submitit" / "4242"
    return (folder / "4242_submission.sh").read_text(), folder


def test_the_slurm_script_takes_its_resources_from_the_launcher_config(monkeypatch, tmp_path):
    text, folder = sbatch_script(
        monkeypatch,
        tmp_path,
        "hardware=gpu",
        "hydra.launcher.partition=a100",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.mem_gb=48",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.cpus_per_task=12",
    )
    lines = set(text.splitlines())
    assert {
        "#SBATCH --partition=a100",
        "#SBATCH --time=90",
        "#SBATCH --mem=48GB",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-1%2",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --job-name=llmlab",
    } <= lines, text
    assert "-m submitit.core._submit" in text

    # A requeue (preemption, time limit) submits the same call again: same overrides, job number and sweep dir.
    from submitit.core.utils import DelayedSubmission

    first = DelayedSubmission.load(folder.parent / "4242_1" / "4242_1_submitted.pkl")
    again = first.function.checkpoint(*first.args, **first.kwargs)
    assert again.args[:3] == first.args[:3] == (["seed=1"], "hydra.sweep.dir", 1)
    assert again.function.config.hydra.sweep.dir == str(tmp_path / "sweep")


def test_the_slurm_defaults_follow_the_hardware_option(monkeypatch, tmp_path):
    gpu, _ = sbatch_script(monkeypatch, tmp_path / "gpu", "hardware=gpu", jobs=1)
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --time=240", "#SBATCH --mem=64GB"} <= set(gpu.splitlines())
    assert "--partition" not in gpu  # null: the cluster's default partition
    cpu, _ = sbatch_script(monkeypatch, tmp_path / "cpu", "hardware=cpu", jobs=1)
    assert "--gpus-per-node" not in cpu and "#SBATCH --cpus-per-task=4" in cpu.splitlines()
    multi, _ = sbatch_script(monkeypatch, tmp_path / "multi", "hardware=multi_gpu", "hardware.nproc=4", jobs=1)
    assert {"#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=128GB"} <= set(multi.splitlines())


def test_slurm_resources_are_no_longer_in_the_hardware_group():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="slurm"):
        compose(["hydra/launcher=slurm", "hardware.slurm.partition=gpu"])


def test_a_slurm_job_that_ends_without_a_result_is_a_failed_job_of_the_sweep(tmp_path):
    """Cancelled, timed out, lost with its node: the sweep lists it (state and log), it does not stop the others."""
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.llmlab_plugins.slurm_launcher import SlurmLauncher
    from llmlab.errors import LlmlabError

    class Cancelled:
        job_id, state = "77_1", "CANCELLED by 0"
        paths = type("Paths", (), {"stderr": tmp_path / "77_1_0_log.err"})

        def results(self):
            raise UncompletedJobError("Job 77_1 (task: 0) with path ... has not produced any output (state: CANCELLED)")

    launcher = SlurmLauncher()
    ret = launcher._outcome(Cancelled(), 1, ["seed=1"], tmp_path)
    with pytest.raises(LlmlabError, match=r"SLURM job 77_1 ended CANCELLED by 0 without a result; log: .*77_1_0_log"):
        _ = ret.return_value
    record = json.loads((tmp_path / ".jobs" / "1.json").read_text())
    assert record["status"] == "failed" and record["overrides"] == ["seed=1"] and "CANCELLED" in record["error"]
    assert record["dir"] == str(tmp_path / "1")


def test_a_requeued_slurm_job_reuses_its_run_directory(monkeypatch, tmp_path):
    """SLURM_RESTART_COUNT > 0: the sweep directory is pinned on the job's command line, so `llmlab.cli.named_dir`
    treats the job's directory as a resume target instead of moving to a fresh `<num>-1`."""
    from hydra_plugins.llmlab_plugins.slurm_launcher import SlurmLauncher
    from llmlab import slurm

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm.restart_count() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm.restart_count() == 2
    launcher = SlurmLauncher()
    launcher.config = compose(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'my sweep'}"])
    launcher._pin_sweep_dir()
    pinned = [o for o in launcher.config.hydra.overrides.hydra if o.startswith("hydra.sweep.dir=")]
    assert pinned == [f"hydra.sweep.dir='{tmp_path / 'my sweep'}'"]

    # The default directory, named by the clock: the requeued job (a new process, later) pins the original one.
    import pickle

    from omegaconf import OmegaConf

    monkeypatch.setenv("LLMLAB_OUTPUTS", str(tmp_path))
    cfg = compose(["hydra/launcher=slurm"])
    original = str(cfg.hydra.sweep.dir)  # resolved (and cached) when the sweep was launched
    launcher.config = pickle.loads(pickle.dumps(cfg))
    OmegaConf.clear_resolver("now")  # a fresh job process: Hydra's resolvers are not registered yet
    time.sleep(1.1)
    launcher._pin_sweep_dir()
    assert [o for o in launcher.config.hydra.overrides.hydra if o.startswith("hydra.sweep.dir=")] == [
        f"hydra.sweep.dir={original}"
    ]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from llmlab.launch import visible_gpus

    for value, gpus in [
        ("3,5", ["3", "5"]),
        ("", []),
        ("2,-1,4", ["2"]),
        ("GPU-ab12, GPU-cd34", ["GPU-ab12", "GPU-cd34"]),
    ]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == gpus


def test_each_worker_claims_a_free_gpu_and_keeps_it(tmp_path):
    from llmlab.launch import claim_gpu

    locks = tmp_path / "locks"
    gpu_a, lock_a = claim_gpu(["3", "5"], locks, job_num=0)
    gpu_b, lock_b = claim_gpu(["3", "5"], locks, job_num=2)  # 2 % 2 = 0 is held: the next free one
    assert (gpu_a, gpu_b) == ("3", "5") and lock_a and lock_b
    gpu_c, lock_c = claim_gpu(["3", "5"], locks, job_num=3)  # all held: share by job number
    assert (gpu_c, lock_c) == ("5", None)
    lock_a.close()  # a worker that exits frees its GPU

    # Another process sees the same locks (flock is per open file, held until its holder exits).
    code = "from pathlib import Path; from llmlab.launch import claim_gpu; print(claim_gpu(['3', '5'], Path(%r), 1)[0])"
    out = subprocess.run([sys.executable, "-c", code % str(locks)], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "3", out.stderr  # 5 is still held by lock_b
    lock_b.close()


def test_pin_gpu_sets_cuda_visible_devices_once_per_process(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import llmlab.launch as launch

    monkeypatch.setattr(launch, "_GPU", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cfg = OmegaConf.create({"hydra": {"job": {"num": 1}, "sweep": {"dir": str(tmp_path)}}})
    assert launch.pin_gpu(cfg) == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    cfg.hydra.job.num = 2  # the next job of the same worker keeps its GPU
    assert launch.pin_gpu(cfg) == "5"
    launch._GPU[1].close()
    monkeypatch.setattr(launch, "_GPU", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.pin_gpu(cfg) is None  # no GPU: nothing to pin


@pytest.mark.slow  # loky workers each import torch: 50-70 s on 2 cores
def test_joblib_runs_jobs_in_parallel_workers_with_one_gpu_each(outputs):
    res = run_cli(
        "-m",
        "hydra/launcher=joblib",
        *TINY,
        "method.limit=1",
        "method.shots=0,1,2",
        env={"CUDA_VISIBLE_DEVICES": "3,5"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "n_jobs=2" in res.stdout + res.stderr  # one worker per visible GPU
    metas = [json.loads(p.read_text()) for p in outputs.rglob("meta.json")]
    assert len(metas) == 3 and all(m["status"] == "completed" for m in metas)
    gpu_of = {}
    for m in metas:
        assert m["cuda_visible_devices"] in ("3", "5")
        assert gpu_of.setdefault(m["pid"], m["cuda_visible_devices"]) == m["cuda_visible_devices"]
    assert len(set(gpu_of.values())) == len(gpu_of)  # distinct workers, distinct GPUs
    assert "validated against ConfigStore" not in res.stderr


def logged_steps(run: Path) -> list[int]:
    from llmlab.io import read_jsonl

    path = run / "metrics.jsonl"
    return [r["step"] for r in read_jsonl(path) if "train/loss" in r] if path.is_file() else []


@pytest.mark.slow  # the sbatch-script test above covers the launcher config in the default run
def test_submitit_local_runs_a_tiny_job_end_to_end(outputs):
    sweep = outputs / "sweep"
    res = run_cli(
        "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", *TINY, "method.limit=1", "method.shots=1"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((sweep / "0" / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["pid"] != json.loads((sweep / "sweep.json").read_text())["pid"]
    assert (sweep / "0" / "results.json").is_file() and list(sweep.glob(".submitit/*/*_result.pkl"))
    assert json.loads((sweep / ".jobs" / "0.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_submitit_local_job_is_requeued_after_preemption_and_resumes(outputs):
    """hydra/launcher=submitit_local end to end; SIGUSR2 (SLURM's preemption/timeout signal) makes submitit requeue
    the job, which continues in the same run directory from its last checkpoint and the same W&B run."""
    sweep = outputs / "sweep"
    wb = {f"WANDB_{k}_DIR": str(outputs.parent / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
    env = {**os.environ, "LLMLAB_CACHE": str(outputs.parent / "cache"), "WANDB_MODE": "offline", **wb}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmlab.cli",
            "-m",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={sweep}",
            *FAST_LM,
            "method.max_steps=300",
            "method.save_every=20",
            "logger=wandb",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = sweep / "0"
    deadline = time.time() + 240
    while max(logged_steps(run), default=0) < 25 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # past the checkpoint of step 20
    os.kill(json.loads((run / "meta.json").read_text())["pid"], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["attempt"] == 2
    assert meta["resumed_from_step"] > 0 and meta["resumed_from_step"] % 20 == 0  # from a periodic checkpoint
    assert logged_steps(run) == list(range(1, 301))  # metrics cut back to the checkpoint, then logged once
    run_id = (run / "wandb_id").read_text().strip()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)
    assert "preempted" in "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.err"))


def test_the_tasks_of_a_slurm_step_rendezvous_at_its_first_host(monkeypatch, tmp_path):
    """hydra.launcher.nodes (or tasks_per_node) > 1: each srun task starts a torchrun agent; the agents form one
    process group at the step's first host (static rendezvous, task index = node rank). One task: --standalone."""
    from llmlab import distributed

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho gpu07; echo gpu08\n")  # `scontrol show hostnames gpu[07-08]`
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key in ("RANK", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    assert distributed.job_tasks() == (1, 0)
    assert "--standalone" in distributed.torchrun_command(2, ["seed=1"], "/runs/x")

    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert distributed.job_tasks() == (2, 1)
    cmd = distributed.torchrun_command(4, ["seed=1"], "/runs/x")
    assert "--standalone" not in cmd
    at = cmd.index("--nnodes")
    assert cmd[at : at + 8] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "gpu07", "--master_port", "24242"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"
    monkeypatch.setenv("RANK", "3")  # inside a rank: no further launch
    assert distributed.job_tasks() == (1, 0)
