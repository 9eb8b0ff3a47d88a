"""Where llmlab finds its configs, and the check for names that become file names."""

from __future__ import annotations

import os
from pathlib import Path

from llmlab.errors import LlmlabError

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The `conf/` directory: $LLMLAB_CONF, else the repository's (editable install)."""
    return Path(os.environ.get("LLMLAB_CONF", REPO_ROOT / "conf"))


def safe_name(name: object, what: str) -> str:
    """`name` as one path component under a run or cache directory; a name that could leave it (empty, `.`, `..`, a
    separator, a control character) raises a one-line `LlmlabError` naming `what`."""
    text = str(name)
    if text in ("", ".", "..") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in text):
        raise LlmlabError(f"{what} {text!r} cannot be used as a file name (no '/', '\\', '..' or control characters)")
    return text
