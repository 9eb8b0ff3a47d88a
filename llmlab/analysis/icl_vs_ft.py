"""The ICL-vs-fine-tuning comparison: accuracies, deltas against base@0, bootstrap intervals and the spec's verdict.

Input: per-item correctness of every condition (base ICL at each k, each fine-tuned arm at 0 shots) for every
(task, variant, seed), aligned by item id. All conditions of one seed share the same test items, so intervals come
from a paired hierarchical bootstrap: resample the seeds, then the items within each drawn seed, and recompute every
condition's mean over seeds from the same draw (`llmlab.analysis.bootstrap`). Deltas and gaps are therefore paired
differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.analysis.bootstrap import resample
from llmlab.errors import LlmlabError
from llmlab.figures import save_figure
from llmlab.io import read_rows

GAP = 0.15  # the spec's "15 points"
METRICS = {"strict": "strict", "loose": "loose", "loglik": "loglik_correct", "label_logit": "label_logit_correct"}


def item_correctness(root: Path, m, task: str, variant: str) -> dict[str, dict[int, np.ndarray]]:
    """`condition -> seed -> 0/1 per item` of an experiment directory (a run, or its collected results), in one item
    order per seed (checked to be the same across conditions)."""
    key = METRICS[m.metric]
    dirs = {f"icl@{k}": f"icl/{task}/k-{k}" for k in m.shots}
    dirs.update({f"ft:{a}": f"ft/{a}/eval/{task}" for a in m.run_arms})
    out: dict[str, dict[int, np.ndarray]] = {c: {} for c in dirs}
    for seed in m.seeds:
        ids = None
        for cond, rel in dirs.items():
            preds = [p for p in read_rows(root / f"seed-{seed}" / rel, "predictions.jsonl") if p["variant"] == variant]
            if not preds:
                raise LlmlabError(f"{root / f'seed-{seed}' / rel}: no predictions for {variant} items")
            preds.sort(key=lambda p: p["id"])
            if ids is None:
                ids = [p["id"] for p in preds]
            elif [p["id"] for p in preds] != ids:
                raise LlmlabError(f"seed {seed}, {task}/{variant}: '{cond}' was scored on different items")
            out[cond][seed] = np.array([float(bool(p[key])) for p in preds])
    return out


def compare(root: Path, m, variants: list[str]) -> dict[tuple[str, str], dict]:
    """Every (task, variant) cell of an experiment directory: `compare_cell` over its per-item predictions."""
    return {
        (task, variant): compare_cell(
            item_correctness(root, m, task, variant), list(m.shots), m.report_k, list(m.run_arms), m.bootstrap
        )
        for task in m.tasks
        for variant in variants
    }


def bootstrap(correct: dict[str, dict[int, np.ndarray]], n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Resampled means per condition (`llmlab.analysis.bootstrap.resample`): `correct[cond][seed]` is a 0/1 vector
    over that seed's items (the same items for every condition of a seed)."""
    seeds = sorted(next(iter(correct.values())))
    return resample({c: [v[s] for s in seeds] for c, v in correct.items()}, n_boot, seed)


def estimate(point: float, samples: np.ndarray) -> dict:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi)}


def point(correct: dict[int, np.ndarray]) -> float:
    """Mean over seeds of the item accuracy."""
    return float(np.mean([v.mean() for v in correct.values()]))


def compare_cell(
    correct: dict[str, dict[int, np.ndarray]], shots: list[int], report_k: int, arms: list[str], n_boot: int
) -> dict:
    """One (task, variant): accuracies, k* = argmax over k >= 1 of the mean, deltas vs `icl@0` and gaps ICL − FT."""
    samples = bootstrap(correct, n_boot)
    acc = {c: estimate(point(v), samples[c]) for c, v in correct.items()}

    def diff(a: str, b: str) -> dict:
        return estimate(acc[a]["mean"] - acc[b]["mean"], samples[a] - samples[b])

    candidates = [k for k in shots if k >= 1]
    k_star = max(candidates, key=lambda k: acc[f"icl@{k}"]["mean"]) if candidates else None
    out = {"accuracy": acc, "k_star": k_star, "delta": {}, "gap": {}}
    for k in sorted({report_k, k_star} - {None}):
        out["delta"][f"icl@{k}"] = diff(f"icl@{k}", "icl@0")
    for arm in arms:
        out["delta"][f"ft:{arm}"] = diff(f"ft:{arm}", "icl@0")
        for k in sorted({report_k, k_star} - {None}):
            out["gap"][f"icl@{k} - ft:{arm}"] = diff(f"icl@{k}", f"ft:{arm}")
    return out


def verdict(cells: dict[tuple[str, str], dict], report_k: int, reference_arm: str = "faithful") -> dict:
    """The spec's pre-registered outcome (ICL-vs-FT spec 6.3) on the pattern sets, gap = Δ_ICL(report_k) − Δ_FT."""
    pattern = {task: c for (task, variant), c in cells.items() if variant == "pattern"}
    key = f"icl@{report_k} - ft:{reference_arm}"
    if "bool" not in pattern or key not in pattern["bool"]["gap"]:
        return {"outcome": "not assessed", "why": f"needs the bool task, k={report_k} and the '{reference_arm}' arm"}

    def holds(task: str) -> bool:
        c = pattern.get(task)
        if not c or key not in c["gap"]:
            return False
        g = c["gap"][key]
        max_key = f"icl@{c['k_star']} - ft:{reference_arm}"
        same_sign = np.sign(c["gap"][max_key]["mean"]) == np.sign(g["mean"])
        return g["mean"] >= GAP and g["lo"] > 0 and bool(same_sign)

    gaps = {t: c["gap"][key] for t, c in pattern.items() if key in c["gap"]}
    if holds("bool") and (holds("expression") or holds("code")):
        outcome = "reproduced"
    elif holds("bool"):
        outcome = "partially reproduced"
    elif gaps["bool"]["mean"] <= 0 or all(g["mean"] <= -GAP for g in gaps.values()):
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    return {
        "outcome": outcome,
        "gap_key": key,
        "gaps": gaps,
        "rule": f"reproduced: gap >= {GAP:.2f} with CI > 0 on bool and on expression or code (max-k gap of the "
        "same sign); partially: bool only; not reproduced: gap <= 0 on bool or FT ahead by >= "
        f"{GAP:.2f} on every task",
    }


def fmt(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def markdown(
    cells: dict[tuple[str, str], dict], shots: list[int], arms: list[str], report_k: int, model: str, metric: str
) -> str:
    """Two tables (accuracies; deltas and gaps), one row per (task, variant)."""
    acc_cols = [f"icl@{k}" for k in shots] + [f"ft:{a}" for a in arms]
    lines = [
        f"### Accuracy ({metric}), {model}: mean over seeds [95% bootstrap interval]",
        "",
        "| task | variant | " + " | ".join(acc_cols) + " |",
        "|---|---|" + "---|" * len(acc_cols),
    ]
    for (task, variant), c in cells.items():
        lines.append(f"| {task} | {variant} | " + " | ".join(fmt(c["accuracy"][col]) for col in acc_cols) + " |")
    delta_cols = [f"icl@{report_k}", "icl@k*"] + [f"ft:{a}" for a in arms]
    gap_cols = [f"icl@{report_k} - ft:{a}" for a in arms]
    lines += [
        "",
        f"### Deltas vs base@0 (Δ) and gaps ICL − FT, {model}",
        "",
        "| task | variant | k* | "
        + " | ".join(f"Δ {c}" for c in delta_cols)
        + " | "
        + " | ".join(f"gap {c}" for c in gap_cols)
        + " |",
        "|---|---|---|" + "---|" * (len(delta_cols) + len(gap_cols)),
    ]
    for (task, variant), c in cells.items():
        d = dict(c["delta"])
        d["icl@k*"] = c["delta"].get(f"icl@{c['k_star']}")
        cells_d = [fmt(d[col]) if d.get(col) else "" for col in delta_cols]
        cells_g = [fmt(c["gap"][col]) if col in c["gap"] else "" for col in gap_cols]
        lines.append(f"| {task} | {variant} | {c['k_star']} | " + " | ".join(cells_d + cells_g) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: dict[tuple[str, str], dict], shots: list[int], arms: list[str], path, metric: str) -> None:
    """Accuracy vs shots per task (pattern and counter), fine-tuned arms at 0 shots as horizontal bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for t, _ in cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, style in (("pattern", "-"), ("counter", "--")):
            c = cells.get((task, variant))
            if not c:
                continue
            a = [c["accuracy"][f"icl@{k}"] for k in shots]
            ax.errorbar(
                shots,
                [e["mean"] for e in a],
                yerr=[[e["mean"] - e["lo"] for e in a], [e["hi"] - e["mean"] for e in a]],
                fmt="o" + style,
                capsize=3,
                label=f"ICL {variant}",
                color="C0",
            )
            for i, arm in enumerate(arms):
                e = c["accuracy"][f"ft:{arm}"]
                ax.axhline(e["mean"], ls=style, color=f"C{i + 1}", label=f"FT {arm} @0 {variant}")
                ax.axhspan(e["lo"], e["hi"], color=f"C{i + 1}", alpha=0.08)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set(title=task, xlabel="shots (base model)", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"accuracy ({metric})")
    axes[0][-1].legend(fontsize=6, loc="best")
    save_figure(fig, path)
