"""Circuits from per-component attribution scores, and how much a circuit shifts between two conditions.

A score vector holds one number per component (attention head or MLP) of one condition, e.g. the mean patching
effect over prompt pairs. Heads and MLPs are compared separately by the callers.
"""

from __future__ import annotations

import numpy as np


def circuit(scores: np.ndarray, mass: float = 0.8, top_frac: float | None = None) -> set[int]:
    """Indices of the smallest set of components holding `mass` of the total |score| (or, with `top_frac`, the
    largest `top_frac` of the components, at least one)."""
    mag = np.abs(np.asarray(scores, dtype=float))
    order = np.argsort(-mag, kind="stable")
    if top_frac is not None:
        return set(order[: max(1, round(top_frac * len(mag)))].tolist())
    total = mag.sum()
    if total == 0:
        return set()
    cumulative = np.cumsum(mag[order])
    return set(order[: int(np.searchsorted(cumulative, mass * total - 1e-12)) + 1].tolist())


def jaccard_shift(a: set[int], b: set[int]) -> float:
    """1 − |a ∩ b| / |a ∪ b| (0: the same circuit, 1: disjoint)."""
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


def tv_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between the normalised |score| distributions (0 … 1)."""
    pa, pb = np.abs(np.asarray(a, dtype=float)), np.abs(np.asarray(b, dtype=float))
    if pa.sum() == 0 or pb.sum() == 0:
        return float(pa.sum() != pb.sum())
    return 0.5 * float(np.abs(pa / pa.sum() - pb / pb.sum()).sum())


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks from 0 (ties share the mean of their positions)."""
    ordered = np.sort(x)
    return (np.searchsorted(ordered, x, "left") + np.searchsorted(ordered, x, "right") - 1) / 2


def spearman_shift(a: np.ndarray, b: np.ndarray) -> float:
    """1 − Spearman's ρ between the two score vectors (0: same ranking, 2: reversed)."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return 1.0 - float((ra * rb).sum() / denom) if denom else 0.0


def shift(scores: np.ndarray, base: np.ndarray, mass: float = 0.8, top_frac: float | None = None) -> dict[str, float]:
    """All three shift metrics of a condition's scores against the base condition's (circuits as in `circuit`)."""
    return {
        "jaccard": jaccard_shift(circuit(scores, mass, top_frac), circuit(base, mass, top_frac)),
        "tv": tv_shift(scores, base),
        "spearman": spearman_shift(scores, base),
    }


def layer_mass(scores: np.ndarray, n_layers: int) -> np.ndarray:
    """Share of the total |score| in each layer; `scores` is laid out layer-major (n_layers x per-layer)."""
    mag = np.abs(np.asarray(scores, dtype=float)).reshape(n_layers, -1).sum(axis=1)
    return mag / mag.sum() if mag.sum() else mag
