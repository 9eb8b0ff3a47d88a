"""Multi-RM regions fitted instead of picked by eye: a 1-D Gaussian mixture with K = 1, 2, 3 components (EM), K
chosen by BIC, regions cut where the posteriors of neighbouring components cross (SC-MCTS* spec 7.4; the paper
picks the boundaries by hand from histograms)."""

from __future__ import annotations

import math

import numpy as np


def fit_gmm(
    x: np.ndarray, k: int, iters: int = 300, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """EM for a 1-D mixture of `k` Gaussians, initialised at quantiles; returns (weights, means, variances,
    log-likelihood)."""
    n = len(x)
    mu = np.quantile(x, (np.arange(k) + 0.5) / k)
    floor = max(float(np.var(x)) * 1e-4, 1e-12)
    var = np.full(k, max(float(np.var(x)), floor))
    w = np.full(k, 1.0 / k)
    prev = -math.inf
    for _ in range(iters):
        logp = np.log(w) - 0.5 * (np.log(2 * math.pi * var) + (x[:, None] - mu) ** 2 / var)
        top = logp.max(1, keepdims=True)
        norm = top[:, 0] + np.log(np.exp(logp - top).sum(1))
        ll = float(norm.sum())
        resp = np.exp(logp - norm[:, None])
        nk = resp.sum(0) + 1e-12
        w, mu = nk / n, (resp * x[:, None]).sum(0) / nk
        var = np.maximum((resp * (x[:, None] - mu) ** 2).sum(0) / nk, floor)
        if ll - prev < tol * abs(ll):
            break
        prev = ll
    return w, mu, var, ll


def region_cuts(values: list[float], max_k: int = 3, grid: int = 2001) -> list[float]:
    """Region edges `[b_1, ..., b_{K+1}]` for `Normaliser` (empty: one region, a plain z-score). Fewer than 10
    distinct values always give one region."""
    x = np.asarray(values, dtype=float)
    if len(np.unique(x)) < 10:
        return []
    best_k, best_bic, best = 1, math.inf, None
    for k in range(1, max_k + 1):
        w, mu, var, ll = fit_gmm(x, k)
        bic = -2 * ll + (3 * k - 1) * math.log(len(x))
        if bic < best_bic:
            best_k, best_bic, best = k, bic, (w, mu, var)
    if best_k == 1:
        return []
    w, mu, var = best
    order = np.argsort(mu)
    xs = np.linspace(x.min(), x.max(), grid)
    logp = np.log(w[order]) - 0.5 * (np.log(2 * math.pi * var[order]) + (xs[:, None] - mu[order]) ** 2 / var[order])
    winner = logp.argmax(1)
    inner = [float((xs[i] + xs[i + 1]) / 2) for i in range(grid - 1) if winner[i + 1] != winner[i]]
    return [float(x.min()), *inner, float(x.max())] if inner else []
