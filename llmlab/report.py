"""`llmlab-report DIR` (or `llmlab report DIR`): aggregate finished runs under DIR into a table and a plot.

Runs are grouped by every field of `results.json` that varies across them (except the seed); each metric is shown as
the mean over seeds with its 95% interval. Where the runs kept their per-item verdicts (`predictions.jsonl`, also
gzipped) the interval is a two-level bootstrap (seeds, then items within seeds: `llmlab.analysis.bootstrap`), so
it accounts for both; otherwise it is Student t over seeds, or with one seed the binomial normal approximation over
items, and says so. Writes `report.md` and `report.png` into DIR.

    llmlab report DIR                         # table + plot of the runs under DIR
    llmlab report --readme experiments/icl_vs_ft   # regenerate the README's marked tables from results/
    llmlab report --check experiments         # exit 1, naming the table, if a committed table is stale
    llmlab report --collect RUN DEST          # copy a run's compact raw results (no weights) or a bench JSON
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.figures import save_figure
from llmlab.io import atomic_write
from llmlab.runs_table import aggregate, load_runs, markdown, method_note

PLOT_METRICS = ("strict", "loglik")


def plot(keys: list[str], rows: list[dict], path: Path) -> Path | None:
    """Accuracy vs shots, one panel per task (or per remaining group), one line per variant x metric."""
    rows = [r for r in rows if isinstance(r.get("shots"), (int, float))]  # runs without a shot count: table only
    if "shots" not in keys or not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_keys = [k for k in keys if k not in ("shots", "variant")]
    panels = sorted({tuple(str(r[k]) for k in panel_keys) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = [r for r in rows if tuple(str(r[k]) for k in panel_keys) == panel]
        for variant in sorted({r["variant"] for r in sub}):
            for metric in [m for m in PLOT_METRICS if any(m in r for r in sub)]:
                pts = sorted((r["shots"], *r[metric][:2]) for r in sub if r["variant"] == variant and metric in r)
                xs, ys, err = zip(*pts)
                err = (
                    [[y - e[0] for y, e in zip(ys, err)], [e[1] - y for y, e in zip(ys, err)]]
                    if isinstance(err[0], tuple)
                    else err
                )
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{variant} / {metric}")
        ax.set_title(" / ".join(panel) or "all", fontsize=9)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(sorted({r["shots"] for r in sub}), [str(x) for x in sorted({r["shots"] for r in sub})])
        ax.set_xlabel("shots")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="best")
    save_figure(fig, path)
    return path


def report(root: str | Path) -> tuple[str, Path | None]:
    root = Path(root)
    runs, unfinished = load_runs(root)
    if not runs:
        raise LlmlabError(f"{root}: no finished runs (no results.json found)")
    keys, rows = aggregate(runs)
    table = markdown(keys, rows)
    note = f"\n{len(runs)} finished run(s)" + (f", {unfinished} unfinished (left out)" if unfinished else "") + ". "
    note += method_note(runs) + "\n"
    atomic_write(root / "report.md", table + note)
    return table + note, plot(keys, rows, root / "report.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmlab report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run or sweep directory (searched for results.json)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--readme", metavar="DIR", help="regenerate the marked tables of DIR/README.md from DIR/results")
    mode.add_argument("--check", metavar="ROOT", help="fail if a README table under ROOT differs from its results")
    mode.add_argument("--collect", nargs=2, metavar=("RUN", "DEST"), help="copy RUN's compact raw results to DEST")
    args = parser.parse_args(argv)
    from llmlab import collect, readme_tables

    try:
        if args.readme:
            names = readme_tables.write(args.readme)
            print(f"{Path(args.readme) / 'README.md'}: {len(names)} table(s) regenerated")
        elif args.check:
            problems = readme_tables.check(args.check)
            for p in problems:
                print(f"llmlab report: {p}", file=sys.stderr)
            if problems:
                sys.exit(1)
            print(f"{args.check}: every table matches its results")
        elif args.collect:
            files = collect.collect(*args.collect)
            print(f"{len(files)} file(s) in {args.collect[1]}")
        elif args.run_dir:
            table, png = report(args.run_dir)
            print(table)
            print(f"table: {Path(args.run_dir) / 'report.md'}")
            if png:
                print(f"plot: {png}")
        else:
            parser.error("give a run directory, --readme, --check or --collect")
    except LlmlabError as e:
        print(f"llmlab-report: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
