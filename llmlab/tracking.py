"""Experiment tracking: W&B mirrors the metrics from rank 0 only; when it is not logged in or unreachable it runs
offline, and when it fails it is dropped, with a one-line notice: tracking never stops a run. The metrics always stay
in the run directory (`llmlab.run_dir`)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmlab.io import atomic_write, notice, short_error
from llmlab.run_dir import RunDir


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
                reason = short_error(e)
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
            notice(f"W&B failed ({short_error(e)}); metrics are kept in the run directory only")

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
                notice(f"W&B failed to finish ({short_error(e)}); metrics are kept in the run directory")


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
            errors.append(short_error(e))

    probe = threading.Thread(target=connect, name="llmlab-wandb-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    where = f"server {address[0]}:{address[1]} unreachable"
    if not errors:
        return f"{where} (no answer in {timeout:g} s)"
    return f"{where} ({errors[0]})" if errors[0] else None
