"""Circuit selection and shift metrics on hand-made score vectors."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.analysis.circuits import circuit, jaccard_shift, layer_mass, shift, spearman_shift, tv_shift


def test_circuit_is_the_smallest_set_with_the_mass():
    scores = np.array([0.5, -3.0, 1.0, 0.0, 5.5])  # |s| total 10
    assert circuit(scores, 0.8) == {4, 1}  # 5.5 + 3.0 = 8.5 >= 8
    assert circuit(scores, 0.5) == {4}  # 5.5 >= 5
    assert circuit(scores, top_k=3) == {4, 1, 2}
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
