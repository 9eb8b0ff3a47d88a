"""hydra/launcher=slurm against a real one-node SLURM cluster (issue #16), through the real CLI: no mocks.

Start the cluster first: `tests/cluster/slurm-local.sh start` (installs SLURM 22.05 on Debian, as root). Without it,
or without `sinfo`, these tests skip; with LLMLAB_REQUIRE_SLURM=1 (as .ci/run sets) they fail instead. They only use
the cluster the script started (SLURM_CONF under $LLMLAB_SLURM_DIR), never one configured in /etc/slurm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import LM_SHAPE, REPO, TINY, run_cli

pytestmark = pytest.mark.slurm

STATE = Path(os.environ.get("LLMLAB_SLURM_DIR", "/var/tmp/llmlab-slurm"))
# Each job asks for one of the node's CPUs and 1 GB: two jobs run at once on a 2-CPU machine.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
FAST_LM = [
    *LM_SHAPE,
    "method.warmup_steps=2",
    "method.eval_every=1000",
    "method.log_every=1",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_blocks=1",
    "hardware=cpu",
    "logger=none",
    "method.save_every=20",
]
READY = ("idle", "mixed", "allocated", "completing")


def cluster_problem() -> str | None:
    """Why the test cluster cannot take jobs, or None when it can."""
    conf = STATE / "etc" / "slurm.conf"
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (tests/cluster/slurm-local.sh start installs and starts a test cluster)"
    if not conf.is_file():
        return f"no test cluster at {STATE} (start one with tests/cluster/slurm-local.sh start)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "SLURM_CONF": str(conf)},
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (tests/cluster/slurm-local.sh status)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in READY for s in states):
        return f"the test cluster takes no jobs (node: {' '.join(states) or out.stderr.strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = cluster_problem()
    if problem:
        if os.environ.get("LLMLAB_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")  # sbatch, sacct, scontrol: this cluster only
    yield
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture
def cluster(slurm, outputs):
    """The cluster for one test; every job the test submitted is cancelled when it ends, also after a failure."""
    yield outputs
    ids = {p.name.split("_")[0] for p in outputs.rglob(".submitit/*") if p.is_dir() and not p.is_symlink()}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60)


# ------------------------------------------------------------------------------------------------------- helpers


def slurm_cmd(*args: str) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out.stdout


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`llmlab ARGS` in the background; its stderr goes to a file (`proc.err_path`, in the test's outputs directory),
    so no pipe fills up."""
    where = Path(os.environ["LLMLAB_OUTPUTS"])
    where.mkdir(parents=True, exist_ok=True)
    err = tempfile.NamedTemporaryFile("w+", prefix="llmlab-", suffix=".err", dir=where, delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmlab.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=err,
        text=True,
    )
    proc.err_path = Path(err.name)
    err.close()
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return proc.err_path.read_text(errors="replace")


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    err = stderr_of(proc)
    proc.err_path.unlink(missing_ok=True)
    return proc.returncode, err


def wait_until(what: str, cond: Callable[[], bool], timeout: float, *procs: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, f"llmlab exited ({p.returncode}) while waiting for {what}: {stderr_of(p)[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def array_id(sweep: Path) -> str:
    """The SLURM job id of the sweep's sbatch submission (submitit's folders: <id>/, <id>_<task>/)."""
    (top,) = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.is_dir()}
    return top


def task_id(sweep: Path, num: int) -> str:
    """The SLURM id of job `num` of the sweep: `<array>_<num>`, or `<id>` when the sweep was a single job."""
    top = array_id(sweep)
    return f"{top}_{num}" if (sweep / ".submitit" / f"{top}_{num}").is_dir() else top


def sweep_of(root: Path, proc: subprocess.Popen) -> Path:
    """The sweep directory that `llmlab -m` (with LLMLAB_OUTPUTS=root) named by the clock, once it exists. The tests
    of requeues use such a directory, as a user would: one given on the command line is a resume target anyway."""
    wait_until(
        f"a sweep directory under {root}", lambda: len(list(root.glob("multirun/*/*/.submitit"))) == 1, 300, proc
    )
    (sweep,) = root.glob("multirun/*/*")
    return sweep


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def logged_steps(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return [r["step"] for r in rows if "train/loss" in r]


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def accounting(job: str, rows: int | None = None) -> list[tuple[str, str]]:
    """(job id, state) of every attempt of `job` (and of each array task), from sacct; with `rows`, once it lists
    that many and none is still running (the accounting database trails the controller by a few seconds)."""

    def read() -> list[tuple[str, str]]:
        out = slurm_cmd("sacct", "-n", "-P", "-X", "--duplicates", "-j", job, "-o", "JobID,State")
        return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]

    if rows is not None:
        wait_until(
            f"sacct to list {rows} finished rows for job {job}",
            lambda: (
                len(found := read()) == rows and all(s not in ("RUNNING", "PENDING", "COMPLETING") for _, s in found)
            ),
            60,
        )
    return read()


def scontrol_records(job: str) -> list[dict[str, str]]:
    """`scontrol show job -o JOB`: one key=value record per job (per array task)."""
    out = slurm_cmd("scontrol", "show", "job", "-o", job)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]


def stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -------------------------------------------------------------------------------- (a) an array sweep, its resources


def test_a_sweep_is_one_sbatch_array_with_its_resources_and_a_failing_job_is_reported(cluster):
    """Three jobs (one fails: more shots than the demonstration pool) go to sbatch as one array with the launcher's
    resources; the two others finish, their results land in the sweep directory, the failure is listed at the end."""
    sweep = cluster / "sweep"
    res = run_cli(
        "-m",
        *SLURM,
        *TINY,
        "method.limit=1",
        "method.shots=0,5000,1",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=long",
        "hydra.launcher.timeout_min=7",
        "hydra.launcher.array_parallelism=2",
        timeout=600,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    lines = stderr_lines(res.stderr)
    assert lines[-2] == "llmlab: 1 of 3 jobs failed:", res.stderr[-3000:]
    assert lines[-1].startswith("  #1 ") and "method.shots=5000" in lines[-1] and str(sweep / "1") in lines[-1]
    assert "larger than the demonstration pool" in lines[-1]
    for num in (0, 2):
        assert read_json(sweep / str(num) / "meta.json")["status"] == "completed"
        assert read_json(sweep / str(num) / "results.json")["metrics"]
        assert read_json(sweep / ".jobs" / f"{num}.json")["status"] == "completed"
    assert read_json(sweep / "1" / "meta.json")["status"] == "failed"
    assert read_json(sweep / "sweep.json")["status"] == "failed"

    # One sbatch submission: an array of three tasks, each run on the cluster (not in this process).
    job = array_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text().splitlines()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --requeue" in script
    assert sorted(accounting(job, rows=3)) == [(f"{job}_{k}", "COMPLETED") for k in range(3)]
    pids = {read_json(sweep / str(k) / "meta.json")["pid"] for k in (0, 2)}
    assert os.getpid() not in pids and read_json(sweep / "sweep.json")["pid"] not in pids

    # The launcher's resources as SLURM recorded them.
    records = scontrol_records(job)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1", "2"]
    for r in records:
        assert (r["Partition"], r["NumCPUs"], r["MinMemoryNode"], r["TimeLimit"]) == ("long", "1", "1G", "00:07:00")
        assert r["ArrayTaskThrottle"] == "2" and r["Requeue"] == "1" and r["JobName"] == "llmlab"


# ------------------------------------------------------------------- (b) preemption, requeue, time limit: bit-exact


def test_preempted_requeued_and_timed_out_jobs_resume_to_bit_identical_weights(cluster, tmp_path):
    """One job is warned of a preemption (`scancel --signal=USR2`), then requeued from outside (`scontrol requeue`:
    SIGTERM); another runs into its one-minute time limit (SIGUSR2 10 s before it) until it is done. Each attempt
    continues from the checkpoint of the step it was interrupted at, in the same run directory (and W&B run), and
    both end with the weights of an uninterrupted run, bit for bit."""
    steps = 8000  # > 50 s of training even on an idle machine: the time-limited job must be signalled at least once
    args = [*FAST_LM, f"method.max_steps={steps}"]
    wandb = {
        "WANDB_MODE": "offline",
        **{f"WANDB_{k}_DIR": str(tmp_path / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    }
    reference = start(*args, env={"LLMLAB_OUTPUTS": str(tmp_path / "reference")})
    preempted = start(
        "-m",
        *SLURM,
        *args,
        "logger=wandb",
        "hydra.launcher.timeout_min=10",
        env={**wandb, "LLMLAB_OUTPUTS": str(cluster / "preempt")},
    )
    limited = start(
        "-m",
        *SLURM,
        *args,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=10",
        "hydra.launcher.max_num_timeout=20",
        env={"LLMLAB_OUTPUTS": str(cluster / "limit")},
    )
    sweep, limit_sweep = sweep_of(cluster / "preempt", preempted), sweep_of(cluster / "limit", limited)
    run = sweep / "0"

    def attempt_running(n: int, past: int) -> Callable[[], bool]:
        def cond() -> bool:
            meta = read_json(run / "meta.json")
            return meta.get("attempt") == n and meta.get("status") == "running" and len(logged_steps(run)) > past

        return cond

    # (1) a preemption warning: SIGUSR2, as `sbatch --signal` sends it
    wait_until("the first 100 steps", attempt_running(1, 100), 300, preempted)
    slurm_cmd("scancel", "--signal=USR2", task_id(sweep, 0))
    wait_until("the first requeue to run", attempt_running(2, 0), 300, preempted)
    resumed_at = len(logged_steps(run))
    wait_until("100 more steps", attempt_running(2, resumed_at + 100), 300, preempted)
    # (2) requeued from outside: SIGTERM
    slurm_cmd("scontrol", "requeue", task_id(sweep, 0))
    wait_until("the second requeue to run", attempt_running(3, 0), 300, preempted)

    code, err = finish(preempted)
    assert code == 0, err[-3000:]
    meta = read_json(run / "meta.json")
    assert meta["status"] == "completed" and meta["attempt"] == 3
    logs = job_logs(sweep)
    assert logs.count("preempted or near its time limit (SIGUSR2): checkpointed, requeueing") == 1, logs[-3000:]
    assert logs.count("interrupted (SIGTERM)") == 1 and "Requeued job" in logs
    assert [s for _, s in accounting(task_id(sweep, 0), rows=3)] == ["REQUEUED", "REQUEUED", "COMPLETED"]
    logged = logged_steps(run)
    assert sorted(logged) == list(range(1, steps + 1))  # every step once: resumed right after the interrupted one
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert sum(c % 20 != 0 for c in ckpts) >= 1  # an interruption checkpointed the step it stopped at
    assert not list((run / "checkpoints").glob(".tmp*"))  # nothing half-written
    run_id = (run / "wandb_id").read_text().strip()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 3 and all(p.name.endswith(run_id) for p in offline)  # one W&B run, three attempts

    code, err = finish(limited)
    assert code == 0, err[-3000:]
    limit_run = limit_sweep / "0"
    meta = read_json(limit_run / "meta.json")
    assert meta["status"] == "completed" and meta["attempt"] >= 2, meta
    logs = job_logs(limit_sweep)
    assert "this job is timed-out" in logs and "preempted or near its time limit (SIGUSR2)" in logs, logs[-3000:]
    assert sorted(logged_steps(limit_run)) == list(range(1, steps + 1))

    code, err = finish(reference)
    assert code == 0, err[-3000:]
    (ref_run,) = (tmp_path / "reference").glob("runs/*/*")
    final = f"checkpoints/step-{steps:06d}/trainable.safetensors"
    expected = (ref_run / final).read_bytes()
    assert (run / final).read_bytes() == expected and (limit_run / final).read_bytes() == expected
    ref = read_json(ref_run / "results.json")
    for r in (read_json(run / "results.json"), read_json(limit_run / "results.json")):
        assert r["train"]["loss"] == ref["train"]["loss"] and r["val"] == ref["val"] and r["steps"] == steps


# ------------------------------------------------------------------------------- (c) scancel, then resume=auto


def test_a_cancelled_job_is_reported_interrupted_and_resume_auto_finishes_only_it(cluster):
    args = ["-m", *SLURM, *FAST_LM, "method.max_steps=30,3000"]
    sweep_proc = start(*args)

    def sweep_dir() -> Path | None:
        found = list((cluster / "multirun").glob("*/*"))
        return found[0] if found else None

    wait_until(
        "the long job's first 100 steps",
        lambda: len(logged_steps((sweep_dir() or cluster) / "1")) > 100,
        300,
        sweep_proc,
    )
    sweep = sweep_dir()
    slurm_cmd("scancel", task_id(sweep, 1))
    code, err = finish(sweep_proc)
    assert code == 1, err[-3000:]
    lines = stderr_lines(err)
    assert lines[-2] == "llmlab: 1 of 2 jobs failed:", err[-3000:]
    assert lines[-1].startswith("  #1 ") and f"SLURM job {task_id(sweep, 1)} ended CANCELLED" in lines[-1]
    meta = read_json(sweep / "1" / "meta.json")
    assert meta["status"] == "interrupted" and not (sweep / "1" / "results.json").exists()
    assert not list((sweep / "1" / "checkpoints").glob(".tmp*"))
    stopped = max(int(p.name.split("-")[1]) for p in (sweep / "1" / "checkpoints").glob("step-*"))
    assert stopped == max(logged_steps(sweep / "1"))  # the step it stopped at was checkpointed
    done = (sweep / "0" / "results.json").stat().st_mtime_ns

    res = run_cli(*args, "resume=auto", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resume=auto: continuing {sweep}" in res.stderr
    assert list((cluster / "multirun").glob("*/*")) == [sweep]
    assert (sweep / "0" / "results.json").stat().st_mtime_ns == done  # finished: not run again
    assert "already completed; not run again" in job_logs(sweep)
    meta = read_json(sweep / "1" / "meta.json")
    assert meta["status"] == "completed" and meta["attempt"] == 2
    assert sorted(logged_steps(sweep / "1")) == list(range(1, 3001))
    assert read_json(sweep / "sweep.json")["status"] == "completed"


# -------------------------------------------------------------------------------- (d) two processes in one job


def test_a_two_process_gloo_job_runs_under_slurm_and_survives_a_preemption(cluster):
    """hardware.nproc=2 on the CPU: the job (one SLURM task with 2 CPUs) starts its two ranks with torchrun. Warned
    of a preemption (SIGUSR2 reaches every process of the job), both ranks finish their step and stop, rank 0
    checkpoints, the job is requeued and the ranks continue from that step."""
    proc = start(
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=2",
        "hydra.launcher.mem_gb=2",
        *FAST_LM,
        "method.max_steps=1500",
        "hardware.nproc=2",
    )
    sweep = sweep_of(cluster, proc)
    run = sweep / "0"
    wait_until("100 steps on two ranks", lambda: len(logged_steps(run)) > 100, 300, proc)
    slurm_cmd("scancel", "--signal=USR2", task_id(sweep, 0))
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    job = array_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text().splitlines()
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert scontrol_records(job)[0]["NumCPUs"] == "2"
    results = read_json(run / "results.json")
    assert results["steps"] == 1500 and results["timing"]["world_size"] == 2
    meta = read_json(run / "meta.json")
    assert meta["status"] == "completed" and meta["attempt"] == 2
    assert sorted(logged_steps(run)) == list(range(1, 1501))
    logs = job_logs(sweep)
    assert logs.count("llmlab: interrupted; finished work is kept") == 2  # both ranks stopped cleanly
    assert "preempted or near its time limit (SIGUSR2)" in logs


def test_a_job_of_two_slurm_tasks_is_one_process_group(cluster):
    """What `hydra.launcher.nodes=N` does on a real cluster, on one node: each SLURM task (srun) starts its own
    torchrun, and the torchruns meet at the first task's host, so 2 tasks x 1 process train as ranks 0 and 1."""
    sweep = cluster / "sweep"
    res = run_cli(
        "-m",
        *SLURM,
        "hydra.launcher.tasks_per_node=2",
        *FAST_LM,
        "method.max_steps=40",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    job = array_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text().splitlines()
    assert "#SBATCH --ntasks-per-node=2" in script
    results = read_json(sweep / "0" / "results.json")
    assert results["steps"] == 40 and results["timing"]["world_size"] == 2
    assert read_json(sweep / "0" / "meta.json")["status"] == "completed"


# ------------------------------------------------------------------------------------ (e) an Optuna search on SLURM


def test_an_optuna_search_runs_its_trials_as_slurm_jobs(cluster):
    """hydra/sweeper=optuna with the slurm launcher: each batch of `n_jobs` trials is one sbatch array; the study
    (SQLite in the sweep directory) gets each job's objective and the best trial is reported."""
    import yaml

    from tests.cli.test_optuna import SEARCH_FT

    res = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        *SLURM,
        *SEARCH_FT,
        "method.lr=tag(log,interval(1e-4,1e-1))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (cluster / "multirun").glob("*/*")
    job = array_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text().splitlines()
    assert "#SBATCH --array=0-1%2" in script
    assert sorted(accounting(job, rows=2)) == [(f"{job}_0", "COMPLETED"), (f"{job}_1", "COMPLETED")]
    losses = {n: read_json(sweep / str(n) / "results.json")["final_loss"] for n in (0, 1)}
    report = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(losses, key=losses.get)
    assert (report["best_trial"], report["best_value"], report["completed_trials"]) == (best, losses[best], 2)
    assert report["run_dir"] == str(sweep / str(best)) and (sweep / "optuna.db").is_file()
    assert "llmlab: optuna: best of 2 trials" in res.stderr
