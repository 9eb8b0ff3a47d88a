"""Plots of finished pretraining runs (`method=pretrain`): loss curves, the extrapolation curve, attention-sink bars.

    python -m llmlab.analysis.pretrain_plots DIR [DIR ...] --out FOLDER [--arms "lm-tiny softmax rope,rwkv4-tiny"]

Runs are found recursively (`results.json` with runner `pretrain`) and grouped into arms by model, attention and
position; seeds are drawn as thin lines and their mean as a thick one. Writes `loss_curves.png` (training loss every
logged step, validation loss at each evaluation), `extrapolation.png` (perplexity vs context multiple) and, when the
runs measured it, `attention_sink.png` (first-token attention mass per arm, one dot per seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.figures import save_figure
from llmlab.io import read_jsonl


def arm(result: dict) -> str:
    return " ".join(str(result[k]) for k in ("model", "attention", "position") if result.get(k))


def load(dirs: list[Path], arms: list[str] | None) -> dict[str, list[tuple[dict, list[dict]]]]:
    """{arm: [(results, metric rows), ...]} for every finished pretraining run under `dirs` (one entry per seed)."""
    found: dict[str, list[tuple[dict, list[dict]]]] = defaultdict(list)
    for root in dirs:
        if not root.is_dir():
            raise LlmlabError(f"{root}: no such directory")
        for path in sorted(root.rglob("results.json")):
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise LlmlabError(f"{path}: not a results file ({e})") from None
            if not isinstance(result, dict) or result.get("runner") != "pretrain":
                continue
            if arms is None or arm(result) in arms:
                metrics = path.with_name("metrics.jsonl")
                found[arm(result)].append((result, read_jsonl(metrics) if metrics.exists() else []))
    if not found:
        raise LlmlabError(
            f"no finished pretraining runs under {', '.join(map(str, dirs))}" + (f" for arms {arms}" if arms else "")
        )
    return dict(sorted(found.items()))


def _mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [sum(c[s] for c in curves) / len(curves) for s in steps]


def plot_losses(runs: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, seeds) in enumerate(runs.items()):
        color = f"C{i}"
        for ax, key in zip(axes, ("train/loss", "val/loss")):
            curves = [{r["step"]: r[key] for r in rows if key in r} for _, rows in seeds]
            curves = [c for c in curves if c]
            for c in curves:
                ax.plot(sorted(c), [c[s] for s in sorted(c)], color=color, lw=0.6, alpha=0.35)
            if curves:
                steps, mean = _mean_curve(curves)
                ax.plot(
                    steps,
                    mean,
                    color=color,
                    lw=2,
                    marker="o" if key == "val/loss" else None,
                    label=f"{name} ({len(curves)} seed{'s' * (len(curves) > 1)})",
                )
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("nats per token")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 4.0))
    axes[1].legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_extrapolation(runs: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (name, seeds) in enumerate(runs.items()):
        curves = [
            {row["multiple"]: row["ppl"] for row in res.get("extrapolation", []) if not row.get("window")}
            for res, _ in seeds
        ]
        curves = [c for c in curves if c]
        for c in curves:
            ax.plot(sorted(c), [c[m] for m in sorted(c)], color=f"C{i}", lw=0.6, alpha=0.35)
        if curves:
            mults, mean = _mean_curve(curves)
            ax.plot(mults, mean, color=f"C{i}", lw=2, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context / training length")
    ax.set_ylabel("validation perplexity")
    ax.set_title("length extrapolation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_sink(runs: dict, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    masses = {
        name: [res["sink"]["mean"]["first_token_mass"] for res, _ in seeds if "sink" in res]
        for name, seeds in runs.items()
    }
    masses = {k: v for k, v in masses.items() if v}
    if not masses:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(masses), 4))
    for i, values in enumerate(masses.values()):
        ax.bar(i, sum(values) / len(values), color=f"C{i}", alpha=0.6)
        ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(masses)), [n.replace(" ", "\n") for n in masses], fontsize=7)
    ax.set_ylabel("attention on the first token")
    ax.set_title("attention sink (mean over layers and heads)", fontsize=10)
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmlab.analysis.pretrain_plots", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--arms", help="comma-separated arm names to keep (as in the legend)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        runs = load(args.dirs, args.arms.split(",") if args.arms else None)
        args.out.mkdir(parents=True, exist_ok=True)
        written = [
            plot_losses(runs, args.out / "loss_curves.png"),
            plot_extrapolation(runs, args.out / "extrapolation.png"),
            plot_sink(runs, args.out / "attention_sink.png"),
        ]
    except LlmlabError as e:
        print(f"pretrain_plots: error: {e}", file=sys.stderr)
        return 2
    for name, seeds in runs.items():
        print(f"{name}: {len(seeds)} run(s)")
    print("\n".join(str(p) for p in written if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
