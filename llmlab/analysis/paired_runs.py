"""Two runs of the same problems compared item by item: accuracies, discordant pairs, an exact McNemar test and a
paired bootstrap 95% interval of the accuracy difference B - A (problems resampled, 10,000 draws, seed 0).

    python -m llmlab.analysis.paired_runs RUN_A RUN_B

Each run directory holds `predictions.jsonl` with one record per problem (`id`, `correct`), as the CoT and MCTS
runners write; only the problems both runs solved or failed are compared.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from llmlab.errors import LlmlabError
from llmlab.io import read_rows


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs as a Binomial(only_a + only_b, 1/2) split."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def outcomes(run: Path) -> dict[str, bool]:
    rows = read_rows(run, "predictions.jsonl")  # or its gzipped copy in collected results
    if not rows:
        raise LlmlabError(f"{run}: no predictions.jsonl (not a finished CoT/MCTS run)")
    return {str(r["id"]): bool(r["correct"]) for r in rows if "id" in r and "correct" in r}


def compare(run_a: Path, run_b: Path) -> dict:
    a, b = outcomes(run_a), outcomes(run_b)
    ids = sorted(set(a) & set(b))
    if not ids:
        raise LlmlabError(f"{run_a} and {run_b} share no problem ids")
    only_a = sum(a[i] and not b[i] for i in ids)
    only_b = sum(b[i] and not a[i] for i in ids)
    diff = np.array([float(b[i]) - float(a[i]) for i in ids])
    lo, hi = bootstrap_interval(diff)
    return {
        "n": len(ids),
        "acc_a": sum(a[i] for i in ids) / len(ids),
        "acc_b": sum(b[i] for i in ids) / len(ids),
        "only_a": only_a,
        "only_b": only_b,
        "p_mcnemar": mcnemar_exact(only_a, only_b),
        "diff_ci95": [lo, hi],
    }


def bootstrap_means(diff: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `n_boot` resamples (items drawn with replacement) of per-item paired differences."""
    rng = np.random.default_rng(seed)
    return diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)


def bootstrap_interval(diff: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of per-problem differences."""
    means = bootstrap_means(diff, n_boot, seed)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llmlab.analysis.paired_runs RUN_A RUN_B", file=sys.stderr)
        return 2
    try:
        r = compare(Path(args[0]), Path(args[1]))
    except LlmlabError as e:
        print(f"paired_runs: error: {e}", file=sys.stderr)
        return 2
    print(
        f"n={r['n']}  A {r['acc_a']:.3f}  B {r['acc_b']:.3f}  solved only by A: {r['only_a']}, only by B: "
        f"{r['only_b']}  exact McNemar p={r['p_mcnemar']:.3g}  B-A {r['acc_b'] - r['acc_a']:+.3f} "
        f"[{r['diff_ci95'][0]:+.3f}, {r['diff_ci95'][1]:+.3f}] (paired bootstrap 95%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
