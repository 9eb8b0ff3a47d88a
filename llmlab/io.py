"""Files of a run, written atomically: a file either is complete or is not there, and a full disk leaves the
previous version intact (`DiskFullError`, one line). JSON, JSON lines (plain or gzip-compressed) and one-line notices.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(LlmlabError):
    """No space left on the device (or the quota is exceeded) while writing a run's file."""


def disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(
        f"disk full while writing {path} ({os.strerror(exc.errno)}); "
        "the previous version of the file, if any, is intact"
    )


def notice(message: str) -> None:
    """One line on stderr, prefixed like the CLI's errors."""
    print(f"llmlab: {message}", file=sys.stderr, flush=True)


def atomic_write(path: str | Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` via a temporary file in the same directory and an atomic rename. A full disk
    raises `DiskFullError` and leaves `path` as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            raise disk_full(path, e) from None
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


def short_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
