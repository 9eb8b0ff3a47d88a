"""Copy a run's compact raw results into the repository (`llmlab report --collect RUN DEST`).

For every run directory under RUN (one holding `results.json`): `results.json`, `config.yaml`, `meta.json`,
`comparison.json`, `metrics.jsonl`, the per-item files (`predictions.jsonl`, `problems.jsonl`) gzipped, and the
per-pair arrays `scores.npz` (circuit shift); never weights, checkpoints, W&B files or locks. Paths of the machine
that ran it are replaced (`<run>` for RUN, and for the run directory a step was first written under when it was
copied into RUN; `<repo>`, `<shared>`, `~`, and `<elsewhere>/a/b` for any other path that exists there), so the copy
can be committed. Existing files in DEST are replaced, others are kept, so runs can be collected as their steps
finish.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.io import atomic_write
from llmlab.paths import REPO_ROOT

PLAIN = ("results.json", "config.yaml", "meta.json", "comparison.json", "metrics.jsonl")
ITEMS = ("predictions.jsonl", "problems.jsonl")
ARRAYS = ("scores.npz",)  # circuit shift's per-pair component scores (float32), for intervals over pairs and seeds


ABSOLUTE = re.compile(r"(?<![\w.:/<>~-])/[\w.+@-]+(?:/[\w.+@-]+)+")  # a POSIX path not inside a word or URL


def scrub(text: str, run: Path, roots: tuple[str, ...] = ()) -> str:
    """`text` without this machine's paths: `run` (and the other `roots` it stands for) as `<run>`, the repository as
    `<repo>`, the `shared` folder beside it as `<shared>`, home as `~`; any other path that exists here keeps its
    last two parts after `<elsewhere>`."""
    places = {root: "<run>" for root in {str(run.resolve()), str(run), *roots}}
    places |= {str(REPO_ROOT): "<repo>", str(REPO_ROOT.parent / "shared"): "<shared>"}
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        places[home] = "~"
    for root in sorted(places, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(?![\w.+@-])", places[root], text)

    def elsewhere(match: re.Match) -> str:
        path = match.group(0)
        if not os.path.exists(path) and not os.path.exists(os.path.dirname(path)):
            return path  # not this machine's
        return "<elsewhere>/" + "/".join(Path(path).parts[-2:])

    return ABSOLUTE.sub(elsewhere, text)


def first_root(step: Path, rel: Path) -> tuple[str, ...]:
    """The run directory a step was written under, read from its config's `output_dir` (`<root>/<rel>`), when the
    step was copied into this run from another one; () otherwise."""
    config = step / "config.yaml"
    lines = config.read_text(encoding="utf-8").splitlines() if config.is_file() else []
    for line in lines:
        if line.startswith("output_dir: "):
            written = line.removeprefix("output_dir: ").strip()
            suffix = "/" + rel.as_posix()
            return (written.removesuffix(suffix),) if written.endswith(suffix) and written != suffix else ()
    return ()


def collect(run: str | Path, dest: str | Path) -> list[Path]:
    """Copy the compact results of every finished run under `run` into `dest` (same relative layout); `run` may also
    be one benchmark's JSON."""
    run, dest = Path(run), Path(dest)
    if run.is_file() and run.suffix == ".json":  # a benchmark's results (`outputs/bench/<name>.json`)
        atomic_write(dest / run.name, scrub(run.read_text(encoding="utf-8"), run.parent))
        return [dest / run.name]
    if not run.is_dir():
        raise LlmlabError(f"{run}: no such run directory")
    written = []
    for results in sorted(run.rglob("results.json")):
        src = results.parent
        if any(part in ("checkpoints", "model", "wandb") for part in src.relative_to(run).parts):
            continue
        out = dest / src.relative_to(run)
        roots = first_root(src, src.relative_to(run))
        for name in PLAIN:
            if (src / name).is_file():
                atomic_write(out / name, scrub((src / name).read_text(encoding="utf-8"), run, roots))
                written.append(out / name)
        for name in ITEMS:
            gz = src / f"{name}.gz"
            if (src / name).is_file() or gz.is_file():
                text = (
                    (src / name).read_text(encoding="utf-8")
                    if (src / name).is_file()
                    else gzip.decompress(gz.read_bytes()).decode("utf-8")
                )
                target = out / f"{name}.gz"
                atomic_write(target, gzip.compress(scrub(text, run, roots).encode("utf-8"), mtime=0))
                written.append(target)
        for name in ARRAYS:
            if (src / name).is_file():
                atomic_write(out / name, (src / name).read_bytes())
                written.append(out / name)
    if not written:
        raise LlmlabError(f"{run}: no finished runs (no results.json found)")
    return written
