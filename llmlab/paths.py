"""Where llmlab finds its configs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The `conf/` directory: $LLMLAB_CONF, else the repository's (editable install)."""
    return Path(os.environ.get("LLMLAB_CONF", REPO_ROOT / "conf"))
