"""Copy a run's compact raw results into the repository (`llmlab report --collect RUN DEST`).

For every run directory under RUN (one holding `results.json`): `results.json`, `config.yaml`, `meta.json`,
`comparison.json`, `metrics.jsonl`, and the per-item files (`predictions.jsonl`, `problems.jsonl`) gzipped; never
weights, checkpoints, W&B files or locks. Paths of the machine that ran it are replaced (`<run>` for RUN, `~` for
the home directory), so the copy can be committed. Existing files in DEST are replaced, others are kept, so runs can
be collected as their steps finish.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.io import atomic_write

PLAIN = ("results.json", "config.yaml", "meta.json", "comparison.json", "metrics.jsonl")
ITEMS = ("predictions.jsonl", "problems.jsonl")


def scrub(text: str, run: Path) -> str:
    """`text` without this machine's paths."""
    text = text.replace(str(run.resolve()), "<run>").replace(str(run), "<run>")
    home = os.path.expanduser("~")
    return text.replace(home, "~") if home not in ("", "/") else text


def collect(run: str | Path, dest: str | Path) -> list[Path]:
    """Copy the compact results of every finished run under `run` into `dest` (same relative layout)."""
    run, dest = Path(run), Path(dest)
    if not run.is_dir():
        raise LlmlabError(f"{run}: no such run directory")
    written = []
    for results in sorted(run.rglob("results.json")):
        src = results.parent
        if any(part in ("checkpoints", "model", "wandb") for part in src.relative_to(run).parts):
            continue
        out = dest / src.relative_to(run)
        for name in PLAIN:
            if (src / name).is_file():
                atomic_write(out / name, scrub((src / name).read_text(encoding="utf-8"), run))
                written.append(out / name)
        for name in ITEMS:
            gz = src / f"{name}.gz"
            if (src / name).is_file() or gz.is_file():
                text = (
                    (src / name).read_text(encoding="utf-8")
                    if (src / name).is_file()
                    else gzip.decompress(gz.read_bytes()).decode("utf-8")
                )
                data = scrub(text, run).encode("utf-8")
                target = out / f"{name}.gz"
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(gzip.compress(data, mtime=0))
                tmp.replace(target)
                written.append(target)
    if not written:
        raise LlmlabError(f"{run}: no finished runs (no results.json found)")
    return written
