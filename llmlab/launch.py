"""Launchers, parallel sweeps and fault tolerance (issue #8).

- `JobCallback` (registered under `hydra.callbacks` in conf/config.yaml) records each multirun job's outcome in
  `<sweep>/.jobs/<num>.json` and a failed job's error in its `meta.json` (and the traceback in `error.txt`), so one
  failing job does not stop the sweep; `failure_summary()` lists the failed jobs at the end (exit code 1). Under
  `hydra/launcher=joblib` it pins each worker process to one GPU (`CUDA_VISIBLE_DEVICES`) before CUDA is initialised.
- `resume_overrides()`: with `resume=auto`, the newest unfinished run (or sweep) directory of the same command is
  reused instead of a new timestamped one; `finished_result()` skips a job whose directory already completed.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from llmlab.errors import LlmlabError
from llmlab.hydra_errors import one_line
from llmlab.io import notice, write_json
from llmlab.run_dir import record_failure

_SWEEP: Path | None = None  # the sweep this (main) process launched
_GPU: tuple[str, Any] | None = None  # this worker's GPU and the open lock file that holds it
# conf/hydra/launcher/joblib.yaml spells out the plugin's options under the plugin's own name, so Hydra also checks it
# against the plugin's schema and warns that this check is deprecated; the file does not rely on it.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")
_NO_RUN_FLAGS = {
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--shell-completion",
    "-sc",
    "--experimental-rerun",
}


# ---------------------------------------------------------------- GPUs for local parallel jobs (hydra/launcher=joblib)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, found without initialising CUDA: CUDA_VISIBLE_DEVICES when set (up to its
    first invalid entry, as CUDA reads it), else the indices nvidia-smi lists; [] without a GPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        env = out.stdout.replace("\n", ",") if out.returncode == 0 else ""
    gpus = []
    for gpu in (g.strip() for g in env.split(",")):
        if not gpu or gpu.startswith("-"):
            break
        gpus.append(gpu)
    return gpus


def claim_gpu(gpus: list[str], lock_dir: Path, job_num: int) -> tuple[str, Any]:
    """A GPU of `gpus` that no other live process holds, tried from `job_num % len(gpus)` on: the first whose lock
    file (`lock_dir/gpu-<id>.lock`) takes a non-blocking exclusive flock. Returns it with the open lock file, which
    the caller keeps open for as long as it uses the GPU (the OS releases it when the process exits). When every GPU
    is held (more workers than GPUs) the job shares `gpus[job_num % len(gpus)]` and the lock is None."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for k in range(len(gpus)):
        gpu = gpus[(job_num + k) % len(gpus)]
        name = re.sub(r"[^\w.-]", "_", gpu)
        fh = open(lock_dir / f"gpu-{name}.lock", "a")  # noqa: SIM115 (held open on purpose)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return gpu, fh
        except OSError:
            fh.close()
    return gpus[job_num % len(gpus)], None


def pin_gpu(config: DictConfig) -> str | None:
    """Give this worker process one GPU for all its jobs via CUDA_VISIBLE_DEVICES (joblib reuses worker processes,
    and CUDA reads the variable once, when it is initialised); None without a GPU."""
    global _GPU
    if _GPU is None:
        gpus = visible_gpus()
        if not gpus:
            return None
        num = int(config.hydra.job.num)
        gpu, lock = claim_gpu(gpus, Path(str(config.hydra.sweep.dir)) / ".gpu_locks", num)
        if lock is None:
            notice(f"more parallel jobs than GPUs: job #{num} shares GPU {gpu} (set hydra.launcher.n_jobs)")
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            notice(f"CUDA was initialised before job #{num} got GPU {gpu}; CUDA_VISIBLE_DEVICES may not apply")
        _GPU = (gpu, lock)
    os.environ["CUDA_VISIBLE_DEVICES"] = _GPU[0]
    return _GPU[0]


OmegaConf.register_new_resolver("llmlab.gpu_jobs", lambda: max(1, len(visible_gpus())), replace=True)


def slurm_default(what: str, device: str, nproc: Any) -> int | None:
    """The per-job SLURM resources conf/hydra/launcher/slurm.yaml asks for unless `hydra.launcher.<what>` is set,
    following `hardware`: on the CPU 4 CPUs (or nproc) and 16 GB, no GPU; one GPU with 8 CPUs and 64 GB; N GPUs
    (`hardware.nproc`; 0, every visible GPU, asks for 8) with 4 CPUs and 32 GB each."""
    n = int(nproc)
    gpus = None if str(device) == "cpu" else (n if n >= 1 else 8)
    if gpus is None:
        cpus, mem = max(4, n), 16
    else:
        cpus, mem = (8, 64) if gpus == 1 else (4 * gpus, 32 * gpus)
    values = {"gpus_per_node": gpus, "cpus_per_task": cpus, "mem_gb": mem}
    if what not in values:
        raise LlmlabError(f"llmlab.slurm_default: unknown resource '{what}' (one of {', '.join(values)})")
    return values[what]


OmegaConf.register_new_resolver("llmlab.slurm_default", slurm_default, replace=True)


def _objective_direction(runner: str) -> str:
    from llmlab.objectives import direction

    return direction(runner)


OmegaConf.register_new_resolver("llmlab.objective_direction", _objective_direction, replace=True)


def _help_groups() -> str:
    from llmlab.help import help_groups

    return help_groups()


OmegaConf.register_new_resolver("llmlab.help_groups", _help_groups, replace=True)  # conf/hydra/help/llmlab.yaml


# ---------------------------------------------------------------------------------------------- sweeps and failures


def command_key(task: list[str], hydra: list[str] = ()) -> list[str]:
    """What identifies a command for `resume=auto`: its overrides except `resume`, plus the Hydra overrides that
    change a sweep's grid (hydra.sweeper.*), sorted."""
    keep = [o for o in task if _key(o) != "resume"]
    keep += [o for o in hydra if _key(o).startswith(("hydra.sweeper", "hydra/sweeper"))]
    return sorted(keep)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def error_line(exc: BaseException) -> str:
    """An exception as one line: llmlab's own errors by their message, others prefixed with their type."""
    return one_line(exc) if isinstance(exc, LlmlabError) else f"{type(exc).__name__}: {one_line(exc)}"


def _shown(path: str | Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


class JobCallback(Callback):
    """Hydra callback: sweep bookkeeping in the launching process, GPU pinning and outcome records in each job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _SWEEP
        hc = config.hydra
        sweep = Path(str(hc.sweep.dir)).absolute()
        sweep.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(sweep / ".jobs", ignore_errors=True)
        task, hydra = list(hc.overrides.task), list(hc.overrides.hydra)
        write_json(
            sweep / "sweep.json",
            {
                "status": "running",
                "overrides": task,
                "hydra_overrides": hydra,
                "key": command_key(task, hydra),
                "command": " ".join(sys.argv),
                "host": platform.node(),
                "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        _SWEEP = sweep

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _report(None, quiet=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "joblib" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
            pin_gpu(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hc = config.hydra
        out = Path(str(hc.runtime.output_dir))
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        rec = {"num": num, "overrides": list(hc.overrides.task), "dir": str(out), "status": "completed"}
        if job_return.status == JobStatus.FAILED:
            exc = job_return._return_value  # the public property re-raises it
            rec.update(status="failed", error=error_line(exc))
            record_failure(out, rec["overrides"], rec["error"], "".join(traceback.format_exception(exc)))
        if hc.mode != RunMode.MULTIRUN:
            return
        if rec["status"] == "failed":
            notice(f"job #{num} ({' '.join(rec['overrides'])}) failed: {rec['error']}")
        write_json(Path(str(hc.sweep.dir)) / ".jobs" / f"{num}.json", rec)


def _report(exc: BaseException | None, quiet: bool = False) -> bool:
    """Mark the sweep this process launched completed or failed; print its failed jobs. True if any failed."""
    if _SWEEP is None:
        return False
    jobs = []
    for path in (_SWEEP / ".jobs").glob("*.json"):
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    failed = sorted((j for j in jobs if j.get("status") == "failed"), key=lambda j: j["num"])
    _set_sweep_status(_SWEEP, "failed" if failed or exc is not None else "completed")
    if failed and not quiet:
        lines = [f"llmlab: {len(failed)} of {len(jobs)} jobs failed:"]
        lines += [f"  #{j['num']} {' '.join(j['overrides'])} ({_shown(j['dir'])}): {j['error']}" for j in failed]
        if exc is not None and not any(error_line(exc) == j["error"] for j in failed):
            lines.append(f"  and the sweep stopped: {error_line(exc)}")
        print("\n".join(lines), file=sys.stderr, flush=True)
    return bool(failed)


def _set_sweep_status(sweep: Path, status: str) -> None:
    try:
        rec = json.loads((sweep / "sweep.json").read_text())
        rec.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(sweep / "sweep.json", rec)
    except (OSError, ValueError, LlmlabError):
        pass


@contextmanager
def failure_summary() -> Iterator[None]:
    """Around the CLI's job: after a multirun in which jobs failed, print which (number, overrides, run directory,
    error) and exit with code 1. The other jobs have run: a failing job is recorded, not fatal."""
    try:
        yield
    except Exception as exc:
        if not _report(exc):
            raise
        raise SystemExit(1) from None
    if _report(None):
        raise SystemExit(1)


# ------------------------------------------------------------------------------------------------------ resume=auto


def resume_overrides(argv: list[str]) -> list[str]:
    """`resume=auto`: the `hydra.run.dir=...` (or `hydra.sweep.dir=...`) override that reuses the newest run (sweep)
    directory of the identical command (same overrides, `resume` aside) when it is unfinished and its process is
    gone; [] when there is none, with `resume=never` (the default), or when the directory is given explicitly."""
    if any(a.split("=", 1)[0] in _NO_RUN_FLAGS for a in argv):
        return []
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    values = {_key(o): o.split("=", 1)[1] for o in overrides}
    resume = values.get("resume", "never").strip("'\"")
    if resume == "never":
        return []
    if resume != "auto":
        raise LlmlabError(f"resume must be auto or never, got '{resume}'")
    if "hydra.run.dir" in values or "hydra.sweep.dir" in values:
        return []
    hydra = [o for o in overrides if _key(o).startswith(("hydra.", "hydra/"))]
    task = [o for o in overrides if o not in hydra]
    multirun = "-m" in argv or "--multirun" in argv or values.get("hydra.mode") == "MULTIRUN"
    root = Path(os.environ.get("LLMLAB_OUTPUTS", "outputs"))
    found = list(_sweeps(root / "multirun", command_key(task, hydra)))
    if not multirun:
        found += _runs(root / "runs", command_key(task))
    if not found:
        return []
    _, kind, path, unfinished = max(found)
    if not unfinished:
        return []
    notice(f"resume=auto: continuing {_shown(path)}")
    value = str(path) if re.fullmatch(r"[\w./-]+", str(path)) else "'" + str(path).replace("'", "\\'") + "'"
    return [f"hydra.{kind}.dir={value}"]


def _runs(root: Path, key: list[str]) -> Iterator[tuple]:
    """(mtime, "run", directory, unfinished) of the single runs under `root` (`<date>/<time>_<runner>/`) with `key`."""
    import yaml

    for path in root.glob("*/*/.hydra/overrides.yaml"):
        try:
            task = yaml.safe_load(path.read_text()) or []
            mtime = path.stat().st_mtime
        except (OSError, yaml.YAMLError):
            continue
        if command_key(list(task)) == key:
            run = path.parent.parent
            yield mtime, "run", run, _unfinished(_read_json(run / "meta.json"))


def _sweeps(root: Path, key: list[str]) -> Iterator[tuple]:
    """(mtime, "sweep", directory, unfinished) of the sweeps under `root` (`<date>/<time>/sweep.json`) with `key`."""
    for path in root.glob("*/*/sweep.json"):
        rec = _read_json(path)
        if rec is not None and rec.get("key") == key:
            yield path.stat().st_mtime, "sweep", path.parent, _unfinished(rec)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unfinished(meta: dict | None) -> bool:
    """Not completed, and the process that wrote `meta` (status, host, pid) no longer runs on this host. A run killed
    before writing meta.json counts as unfinished."""
    if meta is None:
        return True
    if meta.get("status") == "completed":
        return False
    if meta.get("host") != platform.node() or not meta.get("pid") or int(meta["pid"]) == os.getpid():
        return True
    try:
        os.kill(int(meta["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def finished_result(cfg: DictConfig) -> dict | None:
    """With `resume=auto`, the results of a job whose run directory already completed (it is not run again)."""
    if cfg.get("resume") != "auto":
        return None
    run = Path(cfg.output_dir)
    meta, results = _read_json(run / "meta.json"), _read_json(run / "results.json")
    if meta is None or meta.get("status") != "completed" or results is None:
        return None
    notice(f"resume=auto: {_shown(run)} already completed; not run again")
    return results
