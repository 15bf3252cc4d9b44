"""EER against hand-computed values, including ties and degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from speakerid.scoring.metrics import det_curve, eer, min_dcf


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


def test_min_dcf_hand_computed():
    # targets 0.4 0.6 0.8 ; non-targets 0.3 0.5 0.7
    # p_target 0.5: dcf = 0.5*miss + 0.5*fa, normalized by 0.5 -> miss + fa, min at t=0.4
    # (miss 0, fa 2/3) or t=0.6 (1/3 + 1/3) or t=0.8 (2/3 + 0): min 2/3
    value, _ = min_dcf([0.4, 0.6, 0.8], [0.3, 0.5, 0.7], p_target=0.5)
    assert value == pytest.approx(2 / 3)
    # p_target 0.01: norm = 0.01; dcf = 0.01*miss + 0.99*fa; any fa costs 0.99/0.01 = 99
    # normalized, so the best is t=0.8 (miss 2/3, fa 0): 0.01 * 2/3 / 0.01 = 2/3
    value, thr = min_dcf([0.4, 0.6, 0.8], [0.3, 0.5, 0.7], p_target=0.01)
    assert value == pytest.approx(2 / 3) and thr == pytest.approx(0.8)
    # fully inverted scores: rejecting everything (miss 1, fa 0) gives the normalized 1.0
    value, thr = min_dcf([0.1], [0.9], p_target=0.01)
    assert value == pytest.approx(1.0) and thr == np.inf
    value, _ = min_dcf([0.9], [0.1], p_target=0.05)
    assert value == 0.0
    with pytest.raises(ValueError):
        min_dcf([0.9], [0.1], p_target=0.0)


def test_threshold_at_far():
    from speakerid.scoring.metrics import threshold_at_far

    non = np.arange(100) / 100.0  # 0.00 .. 0.99
    tgt = np.array([0.5, 0.95, 0.99, 1.0])
    thr, far, frr = threshold_at_far(tgt, non, 0.01)
    assert thr == pytest.approx(0.99) and far == pytest.approx(0.01) and frr == 0.5
    thr, far, frr = threshold_at_far(tgt, non, 0.0)
    assert thr == pytest.approx(1.0) and far == 0.0 and frr == 0.75
