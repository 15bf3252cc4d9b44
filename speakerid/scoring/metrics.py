"""Verification metrics on score sets: EER and the threshold where it occurs."""

from __future__ import annotations

import numpy as np


def det_curve(
    target: np.ndarray, nontarget: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every distinct threshold (accept when score >= t).

    Returns ``(thresholds, p_miss, p_fa)`` with thresholds ascending; ties are handled by
    evaluating only between distinct score values.
    """
    target = np.asarray(target, dtype=np.float64)
    nontarget = np.asarray(nontarget, dtype=np.float64)
    if target.size == 0 or nontarget.size == 0:
        raise ValueError("need at least one target and one non-target score")
    thresholds = np.unique(np.concatenate([target, nontarget, [np.inf]]))
    t_sorted, n_sorted = np.sort(target), np.sort(nontarget)
    p_miss = np.searchsorted(t_sorted, thresholds, side="left") / target.size
    p_fa = (nontarget.size - np.searchsorted(n_sorted, thresholds, side="left")) / nontarget.size
    return thresholds, p_miss, p_fa


def eer(target: np.ndarray, nontarget: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold.

    The EER is taken where miss and false-alarm curves cross: at the first threshold where
    p_miss >= p_fa, averaging the two rates of the neighbouring operating points whose gap is
    smaller (the standard convex-hull-free approximation used by Kaldi/3D-Speaker scoring).
    """
    thr, p_miss, p_fa = det_curve(target, nontarget)
    i = int(np.argmax(p_miss >= p_fa))
    candidates = [i] if i == 0 else [i - 1, i]
    best = min(candidates, key=lambda j: abs(p_miss[j] - p_fa[j]))
    return float((p_miss[best] + p_fa[best]) / 2), float(thr[best])


def min_dcf(
    target: np.ndarray,
    nontarget: np.ndarray,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """Normalized minimum detection cost (NIST SRE) and the threshold achieving it."""
    if not 0.0 < p_target < 1.0:
        raise ValueError("p_target must be in (0, 1)")
    thr, p_miss, p_fa = det_curve(target, nontarget)
    dcf = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    i = int(np.argmin(dcf))
    return float(dcf[i] / norm), float(thr[i])


def threshold_at_far(
    target: np.ndarray, nontarget: np.ndarray, far: float
) -> tuple[float, float, float]:
    """Lowest threshold whose false-accept rate is at most ``far``: (threshold, FAR, FRR).

    The lowest such threshold accepts the most genuine trials for that false-accept budget.
    """
    thr, p_miss, p_fa = det_curve(target, nontarget)
    ok = np.flatnonzero(p_fa <= far + 1e-12)  # rates are count ratios: absorb rounding
    i = int(ok[0])  # p_fa decreases with the threshold, so the first admissible is the lowest
    t = float(thr[i]) if np.isfinite(thr[i]) else float(np.max(nontarget)) + 1e-6
    return t, float(p_fa[i]), float(p_miss[i])
