"""Metrics of the MRE runners: TL macro-F1 / accuracy and WL set-based micro-F1 over (label, span) items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    """Mean F1 over `labels`; a prediction outside them (None: unparseable) counts as wrong."""
    if not labels:
        return 0.0
    return float(macro_f1_statistic(len(labels))(class_codes(gold, pred, labels)[None])[0])


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0


def wl_micro_f1(gold: Sequence[Sequence[tuple]], pred: Sequence[Sequence[tuple] | None]) -> dict:
    """Exact-match micro precision/recall/F1 over WL item sets (None: unparseable = nothing predicted), and the
    share of examples whose whole set is exact."""
    counts = wl_counts(gold, pred)
    tp, fp, fn = counts.sum(axis=0)
    exact = sum(p is not None and fp_ == fn_ == 0 for p, (_, fp_, fn_) in zip(pred, counts))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": float(prec),
        "recall": float(rec),
        "f1": float(micro_f1_statistic(counts[None])[0]),
        "set_exact": exact / len(gold) if gold else 0.0,
    }


def macro_f1_statistic(n_classes: int):
    """`macro_f1` of resampled items `[draws, items, 2]` (gold class, predicted class; a prediction outside the
    labels is `n_classes`), one value per draw: the statistic for `llmlab.analysis.bootstrap`."""

    def statistic(items: np.ndarray) -> np.ndarray:
        gold, pred = items[..., 0], items[..., 1]
        scores = []
        for c in range(n_classes):
            tp = ((gold == c) & (pred == c)).sum(axis=1)
            fp = ((gold != c) & (pred == c)).sum(axis=1)
            fn = ((gold == c) & (pred != c)).sum(axis=1)
            denom = 2 * tp + fp + fn
            scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        return np.mean(scores, axis=0)

    return statistic


def class_codes(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Items `[n, 2]` for `macro_f1_statistic`: label indices, `len(labels)` for a prediction outside them."""
    index = {c: i for i, c in enumerate(labels)}
    return np.array([[index[g], index.get(p, len(labels))] for g, p in zip(gold, pred)], dtype=float)


def micro_f1_statistic(items: np.ndarray) -> np.ndarray:
    """`wl_micro_f1`'s F1 of resampled items `[draws, items, 3]` (true positives, false positives, false negatives
    per example), one value per draw."""
    tp, fp, fn = (items[..., k].sum(axis=1) for k in range(3))
    denom = 2 * tp + fp + fn
    return np.where(tp > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def wl_counts(gold: Sequence[Sequence], pred: Sequence[Sequence | None]) -> np.ndarray:
    """Items `[n, 3]` for `micro_f1_statistic`: each example's true positives, false positives, false negatives."""
    rows = []
    for g, p in zip(gold, pred):
        gs, ps = {tuple(x) for x in g}, {tuple(x) for x in (p or [])}
        rows.append([len(gs & ps), len(ps - gs), len(gs - ps)])
    return np.array(rows, dtype=float).reshape(-1, 3)
