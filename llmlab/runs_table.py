"""The table of finished runs: every results.json under a folder, grouped by the fields that vary across runs, each
metric as its mean over seeds with a 95% interval (`llmlab report` explains which), as markdown."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmlab.analysis import bootstrap
from llmlab.errors import LlmlabError
from llmlab.io import read_rows

T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}  # two-sided 95% Student t quantiles by degrees of freedom
METRIC_ORDER = ("strict", "loose", "loglik", "label_logit")
PROPORTIONS = {"strict", "loose", "accuracy"}  # shares of items: one seed without item rows gets a binomial interval
SKIP = {"seed", "metrics", "timing", "runner", "time", "_dir", "truncated"}  # truncated: a count per run, not a setting


def t95(df: int) -> float:
    return T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96


def load_runs(root: Path) -> tuple[list[dict], int]:
    """Every results.json under root, and the number of run directories without one (unfinished runs)."""
    if not root.exists():
        raise LlmlabError(f"{root}: no such directory")
    runs = []
    for path in sorted(root.rglob("results.json")):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LlmlabError(f"{path}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise LlmlabError(f"{path}: not UTF-8 text") from None
        if not isinstance(run, dict):
            raise LlmlabError(f"{path}: expected a JSON object, got {type(run).__name__}")
        if isinstance(run.get("metrics"), dict):  # evaluation runs (not fine-tuning or experiment summaries)
            bad = [
                v
                for v, mets in run["metrics"].items()
                if not isinstance(mets, dict) or not all(isinstance(x, (int, float)) for x in mets.values())
            ]
            if bad:
                raise LlmlabError(f"{path}: metrics of '{bad[0]}' must be an object of numbers")
            run["_dir"] = path.parent
            runs.append(run)
    unfinished = sum(1 for meta in root.rglob("meta.json") if not (meta.parent / "results.json").exists())
    return runs, unfinished


def _cell(value):
    """A hashable table cell: lists (e.g. reward components) as `a+b`."""
    return "+".join(map(str, value)) if isinstance(value, list) else value


def aggregate(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """Rows keyed by the varying fields + variant, with per-metric (mean, half-width, n_seeds, kind)."""
    nested = {  # objects, and lists of objects (e.g. per-length evaluations), in any run: not table cells
        k
        for r in runs
        for k, v in r.items()
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v))
    }
    fields = list(dict.fromkeys(k for r in runs for k in r if k not in SKIP and k not in nested))  # first seen first
    varying = [k for k in fields if len({json.dumps(r.get(k)) for r in runs}) > 1] or fields[:2]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    dirs: dict[tuple, list[Path | None]] = defaultdict(list)
    for r in runs:
        for variant, mets in r["metrics"].items():
            key = tuple(_cell(r.get(k)) for k in varying) + (variant,)
            groups[key].append(mets)
            dirs[key].append(r.get("_dir"))
    rows = []
    for key in sorted(
        groups, key=lambda k: tuple((v is None, str(v) if not isinstance(v, int) else f"{v:08d}") for v in k)
    ):
        seeds = groups[key]
        row = dict(zip(varying + ["variant"], key))
        metrics = [m for m in METRIC_ORDER if m in seeds[0]] + sorted(set(seeds[0]) - set(METRIC_ORDER) - {"n"})
        for m in metrics:
            vals = [s[m] for s in seeds if m in s]
            mean = sum(vals) / len(vals)
            per_seed = [item_values(d, key[-1], m) for d in dirs[key]]
            if per_seed and all(v is not None and len(v) for v in per_seed):
                e = bootstrap.estimate(per_seed)
                row[m] = (e["mean"], (e["lo"], e["hi"]), len(per_seed), "bootstrap")
            elif len(vals) > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                row[m] = (mean, t95(len(vals) - 1) * sd / math.sqrt(len(vals)), len(vals), "seeds")
            else:
                n = seeds[0].get("n", 0) if m in PROPORTIONS else 0  # a timing in [0, 1] is not a proportion
                half = 1.96 * math.sqrt(mean * (1 - mean) / n) if n and 0 <= mean <= 1 else float("nan")
                row[m] = (mean, half, 1, "items")
        row["n"] = seeds[0].get("n")
        rows.append(row)
    return varying + ["variant"], rows


def method_note(runs: list[dict]) -> str:
    """How the table's intervals were computed."""
    return (
        f"Values: mean over seeds [{bootstrap.METHOD}; 2000 resamples]; where a run kept no per-item verdicts, "
        "± the 95% Student t half-width over seeds, or with one seed the normal approximation over items (shares of "
        "items only; other metrics of one seed have no interval)."
    )


def markdown(keys: list[str], rows: list[dict]) -> str:
    metrics = [m for m in dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, tuple))]
    head = keys + ["n"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[x]) if r.get(x) is not None else "–" for x in [*keys, "n"]]  # –: a run without this field
        for m in metrics:
            if m in r:
                mean, half, n, kind = r[m]
                if kind == "bootstrap":
                    cells.append(f"{mean:.3f} [{half[0]:.3f}, {half[1]:.3f}]" + (f" ({n} seeds)" if n > 1 else ""))
                elif math.isnan(half):  # one seed and not a proportion over items: no interval
                    cells.append(f"{mean:.3f} (1 seed)")
                else:
                    cells.append(f"{mean:.3f} ± {half:.3f}" + (f" ({n} seeds)" if kind == "seeds" else " (items)"))
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def item_values(run_dir: Path | None, variant: str, metric: str) -> np.ndarray | None:
    """Per-item values of `metric` for one variant of a run, from its kept predictions; None if it kept none."""
    if run_dir is None:
        return None
    rows = read_rows(run_dir, "predictions.jsonl")
    if not rows:
        return None
    if any("variant" in r for r in rows):
        rows = [r for r in rows if r.get("variant") == variant]
    for key in (metric, f"{metric}_correct", "correct" if metric == "accuracy" else None):
        if key and rows and all(isinstance(r.get(key), (bool, int, float)) for r in rows):
            return np.array([float(r[key]) for r in rows])
    return None
