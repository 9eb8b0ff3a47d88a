"""Run directory and experiment tracking.

Every run directory holds `config.yaml` (resolved), `meta.json` (seed, overrides, versions, git sha, status),
`metrics.jsonl`, and at the end `results.json` and `predictions.jsonl`, written atomically: a file either is
complete or is not there. W&B mirrors the metrics from rank 0 only.
"""

from __future__ import annotations

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

from llmlab.paths import REPO_ROOT


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a killed writer) is dropped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
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


class RunDir:
    """One run's directory: metadata at start, metrics as they come, results at the end."""

    def __init__(self, path: str | Path, cfg: DictConfig, overrides: list[str] | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta = {"status": "running", "seed": int(cfg.seed), "overrides": overrides or [],
                     "command": " ".join(sys.argv), "git_sha": git_sha(), "versions": versions(),
                     "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(self.path / "meta.json", self.meta)

    def file(self, name: str) -> Path:
        return self.path / name

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def finish(self, status: str) -> None:
        self.meta.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(self.path / "meta.json", self.meta)


class Tracker:
    """W&B on rank 0 when `logger.backend=wandb` (offline unless asked); otherwise a no-op. The run id is kept in
    the run directory, so a resumed run continues the same W&B run."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, name: str, group: str | None = None, is_main: bool = True):
        self.run = None
        log = cfg.logger
        if log.backend != "wandb" or log.mode == "disabled" or not is_main:
            return
        import wandb

        id_file = run_dir.file("wandb_id")
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write(id_file, run_id)
        self.run = wandb.init(project=log.project, entity=log.entity, mode=log.mode, dir=str(run_dir.path), id=run_id,
                              resume="allow", name=name, group=log.group or group, tags=[*log.tags, *cfg.tags],
                              config=OmegaConf.to_container(cfg, resolve=True),
                              settings=wandb.Settings(quiet=True, reinit="create_new"))  # sub-runs coexist

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def table(self, key: str, rows: list[dict]) -> None:
        if self.run is not None and rows:
            import wandb

            cols = list(rows[0])
            self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
