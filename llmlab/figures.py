"""Saving matplotlib figures."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path) -> None:
    """Lay out, save atomically (temporary file + rename; the folder made if missing) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
