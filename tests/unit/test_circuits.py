"""Circuit selection and shift metrics on hand-made score vectors."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.analysis import circuit_shift
from llmlab.analysis.circuits import circuit, jaccard_shift, layer_mass, shift, spearman_shift, tv_shift
from llmlab.errors import LlmlabError


def test_circuit_is_the_smallest_set_with_the_mass():
    scores = np.array([0.5, -3.0, 1.0, 0.0, 5.5])  # |s| total 10
    assert circuit(scores, 0.8) == {4, 1}  # 5.5 + 3.0 = 8.5 >= 8
    assert circuit(scores, 0.5) == {4}  # 5.5 >= 5
    assert circuit(scores, top_frac=0.6) == {4, 1, 2}
    assert circuit(scores, top_frac=0.01) == {4}  # at least one
    assert circuit(np.zeros(4)) == set()


def test_identical_conditions_do_not_shift():
    s = np.array([3.0, -1.0, 0.5, 2.0])
    assert shift(s, s) == {"jaccard": 0.0, "tv": 0.0, "spearman": pytest.approx(0.0)}
    assert shift(2 * s, s)["tv"] == pytest.approx(0.0)  # scale-free


def test_disjoint_and_reversed_conditions_shift_fully():
    a, b = np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])
    assert jaccard_shift(circuit(a), circuit(b)) == 1.0
    assert tv_shift(a, b) == 1.0
    assert spearman_shift(np.arange(5.0), -np.arange(5.0)) == pytest.approx(2.0)


def test_spearman_handles_ties_like_the_textbook():
    a, b = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    ra = np.array([0.0, 1.5, 1.5, 3.0]) - 1.5
    rb = np.arange(4.0) - 1.5
    rho = (ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum())
    assert spearman_shift(a, b) == pytest.approx(1 - rho)


def test_layer_mass():
    s = np.array([[1.0, -1.0], [0.0, 2.0], [0.0, 0.0]]).ravel()
    assert layer_mass(s, 3) == pytest.approx([0.5, 0.5, 0.0])


# ---- one seed's comparison and the verdict over seeds (llmlab.analysis.circuit_shift) -----------------------------


def synthetic_scores(rng, base_noise: float, pairs: int = 8, tuned_moves: bool = False) -> dict:
    """B0, B2 and F0 per-pair scores (2 layers x 4 heads): B2 moves the mass to other components, F0 is B0 (or
    moves like B2 with `tuned_moves`); `base_noise` sets how much B0's pairs disagree with each other. B2 answers
    every clean prompt right, B0 and F0 half of them."""
    base = np.abs(rng.normal(size=(2, 4))) + np.eye(2, 4) * 3
    b0 = base + base_noise * rng.normal(size=(pairs, 2, 4))
    moved = np.broadcast_to(base[::-1, ::-1], (pairs, 2, 4)).copy()
    half = np.where(np.arange(pairs) % 2 == 0, 1.0, -1.0)
    conds = (("B0", b0, half), ("B2", moved, np.ones(pairs)), ("F0", moved if tuned_moves else b0, half))
    return {c: {"heads": h, "mlps": np.abs(h.sum(-1)), "ld_clean": ld, "ld_corrupt": -ld} for c, h, ld in conds}


def seed_run(seed: int, scores: dict) -> tuple[dict, dict]:
    res = circuit_shift.compare(scores, 2, 0.8, None, 2)
    return {"task": "bool", "seed": seed, "shots": 2, "n_pairs": 8, "circuit": {"mass": 0.8}, **res}, scores


@pytest.mark.parametrize("base_noise,supported", [(0.0, True), (50.0, False)])
def test_a_shift_counts_only_above_the_noise_floor_of_the_base_circuit(base_noise, supported):
    scores = synthetic_scores(np.random.default_rng(0), base_noise)
    res = circuit_shift.compare(scores, 2, 0.8, None, 2)
    halves = [{k: scores["B0"][k][sl].mean(0).ravel() for k in ("heads", "mlps")} for sl in (slice(0, 4), slice(4, 8))]
    assert res["noise_floor"]["heads"]["tv"] == pytest.approx(tv_shift(halves[0]["heads"], halves[1]["heads"]))
    assert all(res["check"]["shift_wins"][f"heads/{x}"] for x in ("tv", "spearman"))  # B2 moved, F0 did not
    assert res["check"]["supporting"] is supported


def test_a_shift_found_in_every_seed_is_supporting_with_a_paired_interval_above_zero():
    rng = np.random.default_rng(1)
    runs = [seed_run(s, synthetic_scores(rng, 0.05)) for s in range(3)]
    out = circuit_shift.across_seeds(runs, n_boot=300)
    assert out["seeds"] == [0, 1, 2] and out["supporting"] is True
    tv = out["checks"]["heads/tv"]
    per_seed = [r["shift"]["B2"]["heads"]["tv"] - r["shift"]["F0"]["heads"]["tv"] for r, _ in runs]
    assert tv["diff"] == pytest.approx(np.mean(per_seed)) and 0 < tv["lo"] <= tv["hi"] and tv["passes"]
    b0 = [s["B0"]["heads"].mean(0).ravel() for _, s in runs]
    pairs = [tv_shift(b0[0], b0[1]), tv_shift(b0[0], b0[2]), tv_shift(b0[1], b0[2])]
    assert out["noise_floor"]["between_seeds"]["heads"]["tv"] == pytest.approx(np.mean(pairs))
    acc = out["accuracy_diff"]  # B2 right on every pair, F0 on every other one
    assert acc["diff"] == pytest.approx(0.5) and acc["lo"] > 0
    assert not out["checks"]["mlps/jaccard"]["passes"]  # both MLPs are in every circuit: that metric cannot move
    assert out["paper_consistent"] is False  # which needs all six


def test_no_difference_between_icl_and_finetuning_gives_no_support():
    rng = np.random.default_rng(2)
    runs = [seed_run(s, synthetic_scores(rng, 0.05, tuned_moves=True)) for s in range(3)]
    out = circuit_shift.across_seeds(runs, n_boot=300)
    assert not any(c["passes"] for c in out["checks"].values())
    assert out["supporting"] is False and out["paper_consistent"] is False


def test_a_shift_under_the_floor_between_seeds_is_not_above_noise():
    # B0's circuit differs between seeds as much as B2 moves: the floor between seeds is what catches it
    rng = np.random.default_rng(3)
    runs = []
    for s in range(3):
        scores = synthetic_scores(rng, 0.0)
        if s % 2:  # this seed's B0 (and F0) sit where the other seeds' B2 sits
            scores["B0"] = {**scores["B0"], "heads": scores["B0"]["heads"][:, ::-1, ::-1].copy()}
            scores["F0"] = scores["B0"]
            scores["B0"]["mlps"] = np.abs(scores["B0"]["heads"].sum(-1))
        runs.append(seed_run(s, scores))
    out = circuit_shift.across_seeds(runs, n_boot=200)
    assert not out["checks"]["heads/tv"]["above_noise"] and out["supporting"] is False
    with pytest.raises(LlmlabError, match="differ in method.shots"):
        circuit_shift.across_seeds([runs[0], ({**runs[1][0], "shots": 4}, runs[1][1])])


def test_the_largest_components_are_named_by_layer_and_head():
    heads = np.zeros((2, 3, 4))  # 2 pairs, 3 layers x 4 heads
    heads[:, 2, 1], heads[:, 0, 3], heads[:, 1, 0] = -5.0, 4.0, 3.0  # |mean| decides, not the sign
    heads[0, 1, 2], heads[1, 1, 2] = 9.0, -9.0  # large per pair, 0 on average
    mlps = np.array([[0.1, -2.0, 0.5], [0.1, -2.0, 0.5]])
    assert circuit_shift.largest({"B0": {"heads": heads, "mlps": mlps}}) == {"B0": "L2H1, L0H3, L1H0 / L1"}


def test_the_half_split_floor_compares_equal_halves():
    rng = np.random.default_rng(4)
    base = {"heads": rng.normal(size=(5, 2, 4)), "mlps": rng.normal(size=(5, 2))}  # odd: pair 5 is left out
    floor = circuit_shift.noise_floor(base, 0.8, None)
    a, b = base["heads"][0:2].mean(0).ravel(), base["heads"][2:4].mean(0).ravel()
    assert floor["heads"]["tv"] == pytest.approx(tv_shift(a, b))
    assert floor["heads"]["spearman"] == pytest.approx(spearman_shift(a, b))
