"""A run's directory: claimed by one process, `config.yaml` (resolved), `meta.json` (seed, overrides, versions, git
sha, status), `metrics.jsonl`, and at the end `results.json` and the per-item predictions, all written through
`llmlab.io`."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmlab import fingerprint
from llmlab.errors import LlmlabError
from llmlab.io import (
    FULL_ERRNOS,
    DiskFullError,
    atomic_write,
    disk_full,
    notice,
    resume_jsonl,
    short_error,
    write_json,
    write_jsonl,
)
from llmlab.paths import REPO_ROOT


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmlab": __import__("llmlab").__version__,
    }


def record_failure(path: str | Path, overrides: list[str], error: str, details: str = "") -> None:
    """Mark a run directory failed: status and the one-line `error` in meta.json (created if the run never got that
    far), `details` (a traceback) in error.txt; rank 0 alone. Never raises: it runs while a failure is handled."""
    path = Path(path)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    try:
        meta = (
            json.loads((path / "meta.json").read_text())
            if (path / "meta.json").is_file()
            else {"overrides": overrides, "command": " ".join(sys.argv), "host": platform.node()}
        )
        if meta.get("status") == "completed" and (path / "results.json").is_file():
            notice(f"{path} completed; an error after it ({error}) does not change its status")
            return
        meta.update(status="failed", error=error, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(path / "meta.json", meta)
        if details:
            atomic_write(path / "error.txt", details)
    except (OSError, ValueError, LlmlabError) as e:
        notice(f"could not record the failure in {path}: {e}")


class RunDir:
    """One run's directory: metadata at start, metrics as they come, results at the end.

    The directory is claimed for the life of the process (an exclusive `flock` on `.lock`, released by the kernel
    even after kill -9). A `fresh` run (a directory named by the clock) never shares one: if another process holds
    it, or an earlier run wrote it in the same second, it takes the first free `<name>-N`. A resumed run (a directory
    given explicitly) is refused while another process holds it, and refused when the results-relevant config differs
    from the `config.yaml` already there (`llmlab.fingerprint`). A resumed run counts its attempts in meta.json."""

    def __init__(
        self,
        path: str | Path,
        cfg: DictConfig,
        overrides: list[str] | None = None,
        is_main: bool | None = None,
        fresh: bool = False,
    ):
        self.path = Path(path)
        self.is_main = int(os.environ.get("RANK", 0)) == 0 if is_main is None else is_main
        self.meta: dict[str, Any] = {}
        self._lock = None
        if not self.is_main:  # several processes (torchrun): rank 0 alone writes the run directory
            return
        self.path, self._lock = claim(self.path, fresh)
        config = OmegaConf.to_container(cfg, resolve=True)
        if self.path != Path(path):
            config["output_dir"] = str(self.path)
        free = fingerprint.resume_free(config)
        previous = self.path / "config.yaml"
        if previous.is_file() and (self.path / "meta.json").is_file():
            changed = fingerprint.changed_keys(_read_yaml(previous), config, free)
            if changed:
                shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                raise LlmlabError(
                    f"cannot resume {self.path}: it holds results of a different config ({shown} "
                    "changed); use a new run directory"
                )
        try:
            attempt = int(json.loads((self.path / "meta.json").read_text()).get("attempt", 1)) + 1
        except (OSError, ValueError):  # a new run directory
            attempt = 1
        self.meta = {
            "status": "running",
            "seed": int(cfg.seed),
            "overrides": overrides or [],
            "command": " ".join(sys.argv),
            "git_sha": git_sha(),
            "versions": versions(),
            "host": platform.node(),
            "pid": os.getpid(),
            "attempt": attempt,
            "fingerprint": fingerprint.fingerprint(config, free),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
        write_json(self.path / "meta.json", self.meta)

    def file(self, name: str) -> Path:
        return self.path / name

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.is_main:
            return
        try:
            with open(self.path / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise disk_full(self.path / "metrics.jsonl", e) from None
            raise

    def record(self, **values: Any) -> None:
        """Add facts about this attempt to meta.json (e.g. the checkpoint step it resumed from)."""
        if self.is_main:
            self.meta.update(values)
            write_json(self.path / "meta.json", self.meta)

    def trim_metrics(self, step: int) -> None:
        """Cut metrics.jsonl back to the rows of steps up to `step` (a resumed run logs the later steps again)."""
        path = self.path / "metrics.jsonl"
        if not self.is_main or not path.exists():
            return
        rows = resume_jsonl(path)
        keep = [r for r in rows if r.get("step") is not None and r["step"] <= step]
        if len(keep) != len(rows):
            write_jsonl(path, keep)

    def finish(self, status: str) -> None:
        """Record the outcome and release the directory."""
        if not self.is_main:
            return
        self.meta.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            write_json(self.path / "meta.json", self.meta)
        except DiskFullError:
            if status == "completed":
                raise  # otherwise the run's own error is the one to report
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def claim(path: Path, fresh: bool) -> tuple[Path, Any]:
    """Take `path` for this process: an exclusive, non-blocking `flock` on `path/.lock`, held while the returned
    file stays open. `fresh`: a taken or already used directory moves to the first free `path-N` instead."""
    for n in range(1000):
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        if fresh and n > 0 and candidate.exists():
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        lock = open(candidate / ".lock", "a")  # noqa: SIM115 (held open on purpose)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            if not fresh:
                raise LlmlabError(
                    f"run directory {candidate} is in use by another process; wait for it or use a new run directory"
                ) from None
            continue
        if fresh and (candidate / "meta.json").exists():  # an earlier run of the same second, now finished
            lock.close()
            continue
        if n:
            notice(f"run directory {path} is taken; this run writes to {candidate}")
        return candidate, lock
    raise LlmlabError(f"no free run directory next to {path}")


def _read_yaml(path: Path) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # a damaged file: the run cannot prove what it holds
        raise LlmlabError(f"cannot resume {path.parent}: its config.yaml is unreadable ({short_error(e)})") from None
    return data if isinstance(data, dict) else {}
