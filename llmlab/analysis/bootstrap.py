"""Intervals that account for items and seeds: a two-level (hierarchical) bootstrap.

An accuracy measured over several seeds, each scoring its own test items, varies with both. One resample draws the
seeds with replacement and then, independently for every drawn seed, that seed's items with replacement; the
statistic is the mean over drawn seeds of the item means. A single seed reduces to the item bootstrap. Conditions
scored on the same items (the same seeds and item order) are resampled with the same draws, so a difference between
them is a paired difference. The interval is the 2.5-97.5 percentile range of the resampled statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

METHOD = "95% two-level bootstrap: seeds resampled, then items within each drawn seed"


Statistic = Callable[[np.ndarray], np.ndarray]  # resampled items [draws, items, ...] -> [draws] or [draws, values]


def _mean(items: np.ndarray) -> np.ndarray:
    return items.mean(axis=1)


def point(per_seed: Sequence[np.ndarray], statistic: Statistic = _mean) -> float:
    """Mean over seeds of the statistic of each seed's items (by default the item mean)."""
    return float(np.mean([statistic(np.asarray(v, dtype=float)[None])[0] for v in per_seed]))


def resample(
    conditions: Mapping[str, Sequence[np.ndarray]], n_boot: int = 2000, seed: int = 0, statistic: Statistic = _mean
) -> dict[str, np.ndarray]:
    """`n_boot` resampled statistics per condition, from one shared set of draws. `conditions[c][s]` holds the
    per-item values of seed `s` (the same number of items in every condition for a given seed): one number per item
    for the default statistic (the mean), or a row per item for another (e.g. gold and predicted class for a
    macro-F1, `llmlab.analysis.mre_metrics`)."""
    names = list(conditions)
    n_seeds = len(conditions[names[0]])
    sizes = [len(v) for v in conditions[names[0]]]
    for c in names:
        if [len(v) for v in conditions[c]] != sizes:
            raise ValueError(f"condition '{c}' is not scored on the same items as '{names[0]}'")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    out: dict[str, np.ndarray] = {}
    for s in range(n_seeds):
        where = np.nonzero(drawn == s)  # every (resample, slot) that drew seed s gets its own item draw
        if not len(where[0]):
            continue
        idx = rng.integers(0, sizes[s], size=(len(where[0]), sizes[s]))
        for c in names:
            values = statistic(np.asarray(conditions[c][s], dtype=float)[idx])
            if c not in out:  # a statistic may return several values per draw: [draws, ...]
                out[c] = np.empty((n_boot, n_seeds, *values.shape[1:]))
            out[c][where] = values
    return {c: v.mean(axis=1) for c, v in out.items()}


def interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def estimate(per_seed: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0, statistic: Statistic = _mean) -> dict:
    """Statistic and 95% interval of one condition: `{"mean", "lo", "hi", "seeds", "items"}`."""
    lo, hi = interval(resample({"x": per_seed}, n_boot, seed, statistic)["x"])
    return {
        "mean": point(per_seed, statistic),
        "lo": lo,
        "hi": hi,
        "seeds": len(per_seed),
        "items": int(sum(len(v) for v in per_seed)),
    }
