"""EER against hand-computed values, including ties and degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from speakerid.metrics import det_curve, eer


def test_perfect_separation_has_zero_eer():
    rate, thr = eer([0.9, 0.8, 0.7], [0.1, 0.2, 0.3])
    assert rate == 0.0 and 0.3 < thr <= 0.7


def test_hand_computed_overlap():
    # targets 0.4 0.6 0.8 ; non-targets 0.3 0.5 0.7 : at t=0.6 miss 1/3, fa 1/3
    rate, thr = eer([0.4, 0.6, 0.8], [0.3, 0.5, 0.7])
    assert rate == pytest.approx(1 / 3) and thr == pytest.approx(0.6)


def test_ties_between_classes():
    # all scores equal: accepting everything gives fa 1, rejecting gives miss 1 -> EER 0.5
    rate, _ = eer([0.5, 0.5], [0.5, 0.5])
    assert rate == pytest.approx(0.5)


def test_fully_inverted_scores():
    rate, _ = eer([0.1, 0.2], [0.8, 0.9])
    assert rate == pytest.approx(1.0)


def test_det_curve_values_and_empty_input():
    thr, miss, fa = det_curve([0.2, 0.6], [0.4])
    np.testing.assert_allclose(thr, [0.2, 0.4, 0.6, np.inf])
    np.testing.assert_allclose(miss, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(fa, [1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        eer([], [0.1])
