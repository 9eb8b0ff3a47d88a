"""Run directory and experiment tracking.

Every run directory holds `config.yaml` (resolved), `meta.json` (seed, overrides, versions, git sha, status),
`metrics.jsonl`, and at the end `results.json` and `predictions.jsonl`, written atomically: a file either is
complete or is not there, and a full disk leaves the previous version intact (`DiskFullError`, one line). W&B mirrors
the metrics from rank 0 only; when it is not logged in or unreachable it runs offline, and when it fails it is
dropped, with a one-line notice: tracking never stops a run.
"""

from __future__ import annotations

import errno
import fcntl
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

from llmlab import fingerprint
from llmlab.errors import LlmlabError
from llmlab.paths import REPO_ROOT

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(LlmlabError):
    """No space left on the device (or the quota is exceeded) while writing a run's file."""


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(
        f"disk full while writing {path} ({os.strerror(exc.errno)}); "
        "the previous version of the file, if any, is intact"
    )


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


def read_rows(run_dir: str | Path, name: str) -> list[dict]:
    """The rows of `run_dir/name`, or of its gzipped copy `name.gz` (collected results); [] if neither exists."""
    import gzip

    path = Path(run_dir) / name
    if path.is_file():
        return read_jsonl(path)
    gz = path.with_name(path.name + ".gz")
    if not gz.is_file():
        return []
    tmp = [json.loads(line) for line in gzip.decompress(gz.read_bytes()).decode("utf-8").splitlines() if line]
    return [r for r in tmp if isinstance(r, dict)]


def resume_jsonl(path: str | Path) -> list[dict]:
    """The complete rows of a partial JSONL file (see `read_jsonl`), with the file cut back to them first, so rows
    appended next follow the last complete one instead of a torn line that would hide them from later reads."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, end = [], 0
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        if not isinstance(row, dict) or not line.endswith(b"\n"):
            break
        rows.append(row)
        end += len(line)
    if end != len(data):
        notice(f"{path}: dropped {len(data) - end} bytes after the last complete row (a torn write)")
        atomic_write(path, data[:end].decode("utf-8"))
    return rows


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
            if e.errno in _FULL:
                raise _disk_full(self.path / "metrics.jsonl", e) from None
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
        raise LlmlabError(f"cannot resume {path.parent}: its config.yaml is unreadable ({_short(e)})") from None
    return data if isinstance(data, dict) else {}


class Tracker:
    """W&B on rank 0 when `logger.backend=wandb` (offline unless asked); otherwise a no-op. The run id is kept in
    the run directory, so a resumed run continues the same W&B run. Online without credentials, or with the server
    unreachable (a TCP probe of a few seconds first, not wandb's 90 s wait), it logs offline (`wandb sync` uploads
    later); after a network failure under a fresh run id, saved so that a resume continues it. If W&B fails
    altogether, or later mid-run, it is dropped: one notice line each time, and the metrics stay in the run
    directory."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, name: str, group: str | None = None, is_main: bool = True):
        self.run = None
        log = cfg.logger
        if log.backend != "wandb" or log.mode == "disabled" or not is_main:
            return
        import wandb

        id_file = run_dir.file("wandb_id")
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write(id_file, run_id)
        kwargs = dict(
            project=log.project,
            entity=log.entity,
            dir=str(run_dir.path),
            resume="allow",
            name=name,
            group=log.group or group,
            tags=[*log.tags, *cfg.tags],
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(quiet=True, reinit="create_new"),
        )  # sub-runs coexist
        mode, reason, first_id = log.mode, None, run_id
        if mode == "online" and not _wandb_logged_in(wandb):
            mode, reason = "offline", "not logged in"
        elif mode == "online" and (down := _wandb_unreachable(wandb)):
            mode, reason, run_id = "offline", down, _offline_run_id(run_dir, run_id, reuse=True)
        for attempt in dict.fromkeys([mode, "offline"]):  # online, else offline
            try:
                self.run = wandb.init(mode=attempt, id=run_id, **kwargs)
                break
            except Exception as e:  # network, auth, service: never fatal
                reason = _short(e)
                if attempt == "online":  # the failed online run may still hold its id ("run ID is in use")
                    run_id = _offline_run_id(run_dir, run_id, reuse=False)
        if self.run is None:
            notice(f"W&B unavailable ({reason}); metrics are kept in {run_dir.path} only")
        elif reason:
            new = f" as new run {run_id}" if run_id != first_id else ""
            notice(f"W&B {reason}: logging offline{new} into {run_dir.path / 'wandb'} (upload later with `wandb sync`)")
        elif mode == "online":  # the id is known online now: a later fallback starts afresh
            run_dir.file("wandb_offline_id").unlink(missing_ok=True)

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
            self._call(
                lambda: self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
            )

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


def _offline_run_id(run_dir: RunDir, run_id: str, reuse: bool) -> str:
    """A fresh W&B id for an offline fallback, saved as the run's id and marked offline-only; with `reuse`, an id that
    is already offline-only is kept, so a resume that is offline again continues that run."""
    marker = run_dir.file("wandb_offline_id")
    if reuse and marker.exists() and marker.read_text().strip() == run_id:
        return run_id
    run_id = uuid.uuid4().hex[:12]
    atomic_write(run_dir.file("wandb_id"), run_id)
    atomic_write(marker, run_id)
    return run_id


def _wandb_address(wandb) -> tuple[str, int] | None:
    """(host, port) that `wandb.init` connects to: the server of WANDB_BASE_URL, the settings file or wandb's
    default, or the HTTP(S) proxy in front of it; None when this wandb does not say."""
    import urllib.request
    from urllib.parse import urlsplit

    try:
        config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
        settings = wandb.Settings(quiet=True, settings_system=str(config_dir / "settings"))
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        url = urlsplit(settings.base_url)
        proxy = settings.https_proxy if url.scheme == "https" else settings.http_proxy
        proxy = proxy or urllib.request.getproxies().get(url.scheme)
        if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
            url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return (url.hostname, url.port or (443 if url.scheme == "https" else 80)) if url.hostname else None
    except Exception:
        return None


def _wandb_unreachable(wandb, timeout: float = 3.0) -> str | None:
    """Why the W&B server (or its proxy) takes no TCP connection within `timeout` seconds, name lookup included; None
    when it does, or when this wandb does not say where it is."""
    import socket
    import threading

    address = _wandb_address(wandb)
    if address is None:
        return None
    errors: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            errors.append("")
        except Exception as e:  # any failure to connect means: not reachable
            errors.append(_short(e))

    probe = threading.Thread(target=connect, name="llmlab-wandb-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    where = f"server {address[0]}:{address[1]} unreachable"
    if not errors:
        return f"{where} (no answer in {timeout:g} s)"
    return f"{where} ({errors[0]})" if errors[0] else None


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
