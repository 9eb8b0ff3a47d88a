"""Circuit shift from per-pair component scores: one seed's comparison of the conditions, and the verdict over seeds.

Scores of a condition are arrays over clean/corrupt pairs: `heads` [pairs, layers, heads], `mlps` [pairs, layers] and
the logit differences `ld_clean`, `ld_corrupt` [pairs]. Conditions: B0 (base, 0-shot), B<k> (base, k
demonstrations) and F0 (fine-tuned, 0-shot). A shift compares a condition's mean scores with B0's
(`llmlab.analysis.circuits.shift`: 1 - Jaccard of the circuits, total variation, 1 - Spearman rho), for heads and
MLPs separately. Two noise floors say how far B0 lies from itself: between two disjoint halves of one seed's pairs,
and between the pairs of two seeds.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from llmlab.analysis import bootstrap, circuits
from llmlab.errors import LlmlabError

METRICS = ("jaccard", "tv", "spearman")
KINDS = ("heads", "mlps")
COLUMNS = tuple((k, x) for k in KINDS for x in METRICS)
Scores = dict[str, dict[str, np.ndarray]]  # condition -> heads / mlps / ld_clean / ld_corrupt per pair


def load_scores(path) -> Scores:
    """A run's `scores.npz` (arrays named `<condition>_<key>`) as float64 arrays per condition."""
    out: Scores = {}
    with np.load(path) as saved:
        for name in saved.files:
            cond, key = name.split("_", 1)
            out.setdefault(cond, {})[key] = saved[name].astype(float)
    return out


def means(scores: Scores) -> dict[str, dict[str, np.ndarray]]:
    """Each condition's mean score vector over pairs, per kind (heads flattened layer-major)."""
    return {c: {"heads": s["heads"].mean(0).ravel(), "mlps": s["mlps"].mean(0)} for c, s in scores.items()}


def largest(scores: Scores, n: int = 3) -> dict[str, str]:
    """Per condition its `n` heads and its MLP with the largest |mean score| over pairs, as "L13H3, L12H1, L11H2 /
    L3" (layer and head from 0)."""
    out = {}
    for c, s in scores.items():
        heads = np.abs(s["heads"].mean(0))
        top = np.argsort(-heads.ravel(), kind="stable")[:n]
        names = ", ".join(f"L{i // heads.shape[1]}H{i % heads.shape[1]}" for i in top)
        out[c] = f"{names} / L{int(np.argmax(np.abs(s['mlps'].mean(0))))}"
    return out


def shifts(a: dict[str, np.ndarray], b: dict[str, np.ndarray], mass: float, top_frac: float | None) -> dict:
    return {k: circuits.shift(a[k], b[k], mass, top_frac) for k in KINDS}


def noise_floor(base: dict[str, np.ndarray], mass: float, top_frac: float | None) -> dict[str, dict[str, float]]:
    """The shift between the B0 circuits of the first and the second half of the pairs: how far two samples of the
    same condition lie apart. Each half has half the pairs, so this errs high (a conservative floor)."""
    half = len(base["heads"]) // 2  # with an odd number of pairs the last one is left out: equal halves
    halves = (slice(0, half), slice(half, 2 * half))
    first, second = (means({"B0": {k: base[k][sl] for k in KINDS}})["B0"] for sl in halves)
    return shifts(first, second, mass, top_frac)


def compare(scores: Scores, shots: int, mass: float, top_frac: float | None, n_layers: int) -> dict:
    """One seed: accuracy, logit differences, circuit size and layer mass per condition; every condition's shift
    from B0; the half-split noise floor; and, with F0, the check of B<shots> against F0."""
    mean = means(scores)
    conds = {
        c: {
            "accuracy": float((s["ld_clean"] > 0).mean()),
            "mean_ld_clean": float(s["ld_clean"].mean()),
            "mean_ld_corrupt": float(s["ld_corrupt"].mean()),
            "circuit_size": {k: len(circuits.circuit(mean[c][k], mass, top_frac)) for k in KINDS},
            "layer_mass": {k: circuits.layer_mass(mean[c][k], n_layers).tolist() for k in KINDS},
        }
        for c, s in scores.items()
    }
    shift = {c: shifts(mean[c], mean["B0"], mass, top_frac) for c in scores if c != "B0"}
    floor = noise_floor(scores["B0"], mass, top_frac)
    bk, check = f"B{shots}", None
    if "F0" in shift:
        wins = {f"{k}/{x}": shift[bk][k][x] > shift["F0"][k][x] for k, x in COLUMNS}
        above = {f"{k}/{x}": shift[bk][k][x] > floor[k][x] for k, x in COLUMNS}
        acc = conds[bk]["accuracy"] > conds["F0"]["accuracy"]
        check = {
            "rule": f"shift({bk}) > shift(F0) and > the noise floor on every metric, and acc({bk}) > acc(F0); "
            f"supporting: shift({bk}) > shift(F0) and > the noise floor on >= 2 metrics of heads or MLPs",
            "shift_wins": wins,
            "above_noise": above,
            "acc_wins": acc,
            "paper_consistent": all(wins.values()) and all(above.values()) and acc,
            "supporting": any(sum(wins[f"{k}/{x}"] and above[f"{k}/{x}"] for x in METRICS) >= 2 for k in KINDS),
        }
    return {"conditions": conds, "shift": shift, "noise_floor": floor, "check": check}


ACROSS_SEEDS_RULE = (
    "per kind and metric, a pass needs the paired B{k} - F0 shift difference's 95% interval (two-level bootstrap: "
    "seeds, then pairs) above 0 and shift(B{k}) above the noise floor in every seed (the floor: the larger of that "
    "seed's half-split floor and the mean B0 shift between seeds); supporting: >= 2 passes among heads' or MLPs' "
    "metrics; paper_consistent: all 6 pass and the acc(B{k}) - acc(F0) interval lies above 0"
)


def across_seeds(runs: list[tuple[dict, Scores]], n_boot: int = 2000) -> dict:
    """The verdict over seeds of one task from each seed's `results.json` and per-pair scores (`ACROSS_SEEDS_RULE`).

    Per kind and metric: every seed's shift of B<k> and F0 and its half-split floor; the floor between seeds (B0's
    mean scores of each pair of seeds, i.e. other pairs drawn from other data); the paired difference
    shift(B<k>) - shift(F0) with a two-level bootstrap interval (seeds, then pairs within a seed, all conditions
    resampled with the same pairs). Shifts of resampled means are biased upwards for every condition alike, so
    only the difference gets an interval."""
    results = [r for r, _ in runs]
    shots, circuit = results[0]["shots"], results[0]["circuit"]
    mass, top_frac = circuit.get("mass", 0.8), circuit.get("top_frac")
    bk = f"B{shots}"
    if any(r["shots"] != shots or r["circuit"] != circuit or "F0" not in r["shift"] for r in results):
        raise LlmlabError(
            f"circuit shift of {results[0]['task']} over seeds: the runs differ in method.shots or the circuit rule, "
            "or one has no fine-tuned model (F0)"
        )
    base = [means(s)["B0"] for _, s in runs]
    between = [shifts(base[i], base[j], mass, top_frac) for i, j in combinations(range(len(base)), 2)]
    per_seed = {c: {k: {x: [r["shift"][c][k][x] for r in results] for x in METRICS} for k in KINDS} for c in (bk, "F0")}
    halves = {k: {x: [r["noise_floor"][k][x] for r in results] for x in METRICS} for k in KINDS}
    seeds_floor = {k: {x: float(np.mean([b[k][x] for b in between])) for x in METRICS} for k in KINDS}

    def statistic(rows: np.ndarray) -> np.ndarray:
        """Resampled pairs of one seed ([draws, pairs, 2]: seed index, pair index) -> per draw the 6 shift
        differences and the accuracy difference."""
        seed_scores = runs[int(rows[0, 0, 0])][1]
        n = rows.shape[1]
        weights = np.stack([np.bincount(r, minlength=n) for r in rows[:, :, 1].astype(int)]) / n
        mean = {c: {k: weights @ seed_scores[c][k].reshape(n, -1) for k in KINDS} for c in ("B0", bk, "F0")}
        out = np.empty((len(rows), len(COLUMNS) + 1))
        for d in range(len(rows)):
            row = {c: {k: mean[c][k][d] for k in KINDS} for c in mean}
            moved, tuned = shifts(row[bk], row["B0"], mass, top_frac), shifts(row["F0"], row["B0"], mass, top_frac)
            out[d, :-1] = [moved[k][x] - tuned[k][x] for k, x in COLUMNS]
        correct = {c: (seed_scores[c]["ld_clean"] > 0).astype(float) for c in (bk, "F0")}
        out[:, -1] = weights @ (correct[bk] - correct["F0"])
        return out

    items = [
        np.stack([np.full(len(s["B0"]["heads"]), i), np.arange(len(s["B0"]["heads"]))], 1)
        for i, (_, s) in enumerate(runs)
    ]
    draws = bootstrap.resample({"x": items}, n_boot, statistic=statistic)["x"]
    acc = {c: [r["conditions"][c]["accuracy"] for r in results] for c in ("B0", bk, "F0")}
    checks = {}
    for j, (k, x) in enumerate(COLUMNS):
        lo, hi = bootstrap.interval(draws[:, j])
        floors = [max(h, seeds_floor[k][x]) for h in halves[k][x]]
        checks[f"{k}/{x}"] = {
            "diff": float(np.mean(per_seed[bk][k][x]) - np.mean(per_seed["F0"][k][x])),
            "lo": lo,
            "hi": hi,
            "above_noise": all(s > f for s, f in zip(per_seed[bk][k][x], floors)),
        }
        checks[f"{k}/{x}"]["passes"] = lo > 0 and checks[f"{k}/{x}"]["above_noise"]
    acc_lo, acc_hi = bootstrap.interval(draws[:, -1])
    acc_diff = {"diff": float(np.mean(acc[bk]) - np.mean(acc["F0"])), "lo": acc_lo, "hi": acc_hi}
    passes = {k: sum(checks[f"{k}/{x}"]["passes"] for x in METRICS) for k in KINDS}
    return {
        "task": results[0]["task"],
        "seeds": [r["seed"] for r in results],
        "n_pairs": [r["n_pairs"] for r in results],
        "condition": bk,
        "accuracy": acc,
        "shift": per_seed,
        "noise_floor": {"halves": halves, "between_seeds": seeds_floor},
        "checks": checks,
        "accuracy_diff": acc_diff,
        "rule": ACROSS_SEEDS_RULE.format(k=shots),
        "supporting": any(n >= 2 for n in passes.values()),
        "paper_consistent": all(c["passes"] for c in checks.values()) and acc_lo > 0,
    }
