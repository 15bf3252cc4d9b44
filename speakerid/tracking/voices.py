"""Voices of one recording: cluster the windows, then refine, prune and merge the clusters.

1. Initial clusters: spectral clustering of the windows (``cluster.spectral``; the number of
   voices from the eigengap, or ``num``), or average-linkage agglomerative clustering below
   ``cluster.MIN_SPECTRAL`` windows. Recordings with more than ``MAX_EXACT`` windows are
   clustered on an evenly spread subset (bounded time and memory: the affinity is quadratic);
   every window is assigned in step 2.
2. Refinement: every window is given the voice whose centroid it is closest to, decoded jointly
   in time (``segments.smooth_labels``), and the centroids recomputed, until nothing changes.
3. Pruning and merging (only when the number of voices is not given): voices with fewer than
   ``MIN_WINDOWS`` windows (in short recordings: fewer than 2, or 10 % of the windows) are
   dissolved into the others, and two voices whose centroids are
   closer than ``MERGE_COS`` become one (a voice split in two), refining after each change.
"""

from __future__ import annotations

import numpy as np

from ..embedding.windows import Analysis
from . import cluster
from .segments import smooth_labels

MAX_EXACT = 1500
MIN_WINDOWS = 4
MERGE_COS = 0.6
AHC_THRESHOLD = 0.2
#: Extra clusters asked of the spectral step before merging (over-clustering then merging
#: separated similar voices more often than the eigengap alone on the dev conversations).
EXTRA = 1


def refine(
    an: Analysis, labels: np.ndarray, iterations: int = 10, keep_count: bool = False
) -> np.ndarray:
    """Nearest-centroid labels decoded in time, repeated until they stop changing
    (``keep_count``: stop before a step that would lose a voice)."""
    labels = cluster.relabel(labels)
    for _ in range(iterations):
        refs = cluster.centroids(an.vectors, labels)
        new = cluster.relabel(smooth_labels(an.vectors, an.windows, an.speech, refs))
        if np.array_equal(new, labels) or (keep_count and new.max() < labels.max()):
            break
        labels = new
    return labels


def assign(an: Analysis, refs: np.ndarray) -> np.ndarray:
    """Windows decoded against fixed voice centroids ``refs`` (labels index ``refs``)."""
    return smooth_labels(an.vectors, an.windows, an.speech, refs)


def _initial(an: Analysis, num: int | None, max_k: int) -> np.ndarray:
    x = an.vectors
    if len(x) > MAX_EXACT:
        pick = np.linspace(0, len(x) - 1, MAX_EXACT).round().astype(int)
        sub = _initial_exact(x[pick], num, max_k)
        return assign(an, cluster.centroids(x[pick], sub))
    return _initial_exact(x, num, max_k)


def _initial_exact(x: np.ndarray, num: int | None, max_k: int) -> np.ndarray:
    if num is not None and num >= len(x):
        return np.arange(len(x))
    if len(x) < cluster.MIN_SPECTRAL:
        return cluster.ahc(x, AHC_THRESHOLD, num=num, max_k=max_k)
    return cluster.spectral(x, num=num, max_k=max_k, extra=0 if num else EXTRA)


def find_voices(an: Analysis, num: int | None = None, max_k: int = 10) -> np.ndarray:
    """Voice label (0, 1, ... in order of first appearance) of every window."""
    n = len(an.vectors)
    if n == 0:
        return np.zeros(0, int)
    if n == 1 or num == 1:
        return np.zeros(n, int)
    labels = refine(an, _initial(an, num, max_k), keep_count=num is not None)
    if num is not None:  # exactly the voices asked for
        return _in_time_order(an, labels)
    while True:
        counts = np.bincount(labels)
        refs = cluster.centroids(an.vectors, labels)
        small = counts < min(MIN_WINDOWS, max(2, int(0.1 * n)))  # short files: keep pairs
        if small.any() and not small.all():
            labels = refine(an, assign(an, refs[~small]))
            continue
        if len(refs) < 2:
            break
        sim = refs @ refs.T
        np.fill_diagonal(sim, -1.0)
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[i, j] < MERGE_COS:
            break
        labels = refine(an, np.where(labels == j, i, labels))
    return _in_time_order(an, labels)


def _in_time_order(an: Analysis, labels: np.ndarray) -> np.ndarray:
    """Relabel so that voice 0 speaks first, then voice 1, ..."""
    order = np.argsort(an.windows[:, 0], kind="stable")
    first: dict[int, int] = {}
    for i in order:
        first.setdefault(int(labels[i]), len(first))
    return np.array([first[int(v)] for v in labels], int)
