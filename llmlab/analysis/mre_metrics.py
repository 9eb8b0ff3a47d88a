"""Metrics of the MRE runners: TL macro-F1 / accuracy and WL set-based micro-F1 over (label, span) items."""

from __future__ import annotations

from collections.abc import Sequence


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    """Mean F1 over `labels`; a prediction outside them (None: unparseable) counts as wrong."""
    scores = []
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0


def wl_micro_f1(gold: Sequence[Sequence[tuple]], pred: Sequence[Sequence[tuple] | None]) -> dict:
    """Exact-match micro precision/recall/F1 over WL item sets (None: unparseable = nothing predicted), and the
    share of examples whose whole set is exact."""
    tp = fp = fn = exact = 0
    for g, p in zip(gold, pred):
        gs, ps = {tuple(x) for x in g}, {tuple(x) for x in (p or [])}
        tp, fp, fn = tp + len(gs & ps), fp + len(ps - gs), fn + len(gs - ps)
        exact += p is not None and gs == ps
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "set_exact": exact / len(gold) if gold else 0.0}
