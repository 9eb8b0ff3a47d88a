"""Run directory and experiment tracking.

Every run directory holds `config.yaml` (resolved), `meta.json` (seed, overrides, versions, git sha, status),
`metrics.jsonl`, and at the end `results.json` and `predictions.jsonl`, written atomically: a file either is
complete or is not there, and a full disk leaves the previous version intact (`DiskFullError`, one line). W&B mirrors
the metrics from rank 0 only; when it is not logged in or unreachable it runs offline, and when it fails it is
dropped, with a one-line notice: tracking never stops a run.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmlab.errors import LlmlabError
from llmlab.paths import REPO_ROOT

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(LlmlabError):
    """No space left on the device (or the quota is exceeded) while writing a run's file."""


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(f"disk full while writing {path} ({os.strerror(exc.errno)}); "
                         "the previous version of the file, if any, is intact")


def notice(message: str) -> None:
    """One line on stderr, prefixed like the CLI's errors."""
    print(f"llmlab: {message}", file=sys.stderr, flush=True)


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and an atomic rename. A full disk raises
    `DiskFullError` and leaves `path` as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _FULL:
            raise _disk_full(path, e) from None
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON-object rows of a JSONL file up to the first line that is not one (a torn last line of a killed
    writer, bytes that are not UTF-8): what follows such a line is not trusted."""
    rows = []
    for line in Path(path).read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "llmlab": __import__("llmlab").__version__}


def record_failure(path: str | Path, overrides: list[str], error: str, details: str = "") -> None:
    """Mark a run directory failed: status and the one-line `error` in meta.json (created if the run never got that
    far), `details` (a traceback) in error.txt; rank 0 alone. Never raises: it runs while a failure is handled."""
    path = Path(path)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    try:
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").is_file() else \
            {"overrides": overrides, "command": " ".join(sys.argv), "host": platform.node()}
        meta.update(status="failed", error=error, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(path / "meta.json", meta)
        if details:
            atomic_write(path / "error.txt", details)
    except (OSError, ValueError, LlmlabError) as e:
        notice(f"could not record the failure in {path}: {e}")


class RunDir:
    """One run's directory: metadata at start, metrics as they come, results at the end. A resumed run (the same
    directory) counts its attempts in meta.json."""

    def __init__(self, path: str | Path, cfg: DictConfig, overrides: list[str] | None = None,
                 is_main: bool | None = None):
        self.path = Path(path)
        self.is_main = int(os.environ.get("RANK", 0)) == 0 if is_main is None else is_main
        self.meta: dict[str, Any] = {}
        if not self.is_main:  # several processes (torchrun): rank 0 alone writes the run directory
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            attempt = int(json.loads((self.path / "meta.json").read_text()).get("attempt", 1)) + 1
        except (OSError, ValueError):  # a new run directory
            attempt = 1
        self.meta = {"status": "running", "seed": int(cfg.seed), "overrides": overrides or [],
                     "command": " ".join(sys.argv), "git_sha": git_sha(), "versions": versions(),
                     "host": platform.node(), "pid": os.getpid(), "attempt": attempt,
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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
            if e.errno in _FULL:
                raise _disk_full(self.path / "metrics.jsonl", e) from None
            raise

    def finish(self, status: str) -> None:
        if not self.is_main:
            return
        self.meta.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            write_json(self.path / "meta.json", self.meta)
        except DiskFullError:
            if status == "completed":
                raise  # otherwise the run's own error is the one to report


class Tracker:
    """W&B on rank 0 when `logger.backend=wandb` (offline unless asked); otherwise a no-op. The run id is kept in
    the run directory, so a resumed run continues the same W&B run. Online without credentials, or with the server
    unreachable, it logs offline (`wandb sync` uploads later); if W&B fails altogether, or later mid-run, it is
    dropped: one notice line each time, and the metrics stay in the run directory."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, name: str, group: str | None = None, is_main: bool = True):
        self.run = None
        log = cfg.logger
        if log.backend != "wandb" or log.mode == "disabled" or not is_main:
            return
        import wandb

        id_file = run_dir.file("wandb_id")
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write(id_file, run_id)
        kwargs = dict(project=log.project, entity=log.entity, dir=str(run_dir.path), id=run_id, resume="allow",
                      name=name, group=log.group or group, tags=[*log.tags, *cfg.tags],
                      config=OmegaConf.to_container(cfg, resolve=True),
                      settings=wandb.Settings(quiet=True, reinit="create_new"))  # sub-runs coexist
        mode, reason = log.mode, None
        if mode == "online" and not _wandb_logged_in(wandb):
            mode, reason = "offline", "not logged in"
        for attempt in dict.fromkeys([mode, "offline"]):  # online, else offline
            try:
                self.run = wandb.init(mode=attempt, **kwargs)
                break
            except Exception as e:  # network, auth, service: never fatal
                reason = _short(e)
        if self.run is None:
            notice(f"W&B unavailable ({reason}); metrics are kept in {run_dir.path} only")
        elif reason:
            notice(f"W&B {reason}: logging offline into {run_dir.path / 'wandb'} (upload later with `wandb sync`)")

    def _call(self, fn, *args, **kwargs) -> None:
        """Call a W&B method; on failure drop W&B for the rest of the run (one notice) instead of failing the run."""
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self.run = None
            notice(f"W&B failed ({_short(e)}); metrics are kept in the run directory only")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self._call(self.run.log, metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self._call(self.run.summary.update, metrics)

    def table(self, key: str, rows: list[dict]) -> None:
        if self.run is not None and rows:
            import wandb

            cols = list(rows[0])
            self._call(lambda: self.run.log({key: wandb.Table(columns=cols,
                                                             data=[[r.get(c) for c in cols] for r in rows])}))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:
                notice(f"W&B failed to finish ({_short(e)}); metrics are kept in the run directory")


def _wandb_logged_in(wandb) -> bool:
    """Whether W&B credentials are configured (environment, settings file or netrc), without a prompt or the
    network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or wandb.run is not None:
        return True
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:
        return False


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
