"""Clustering of window embeddings into voices (numpy only; no scipy/scikit-learn at run time).

Spectral clustering on the cosine affinity, as in 3D-Speaker's diarization: each row of the
affinity keeps only its strongest ``p`` share of entries (p-pruning, so that weak cross-speaker
similarities do not connect the graph), the matrix is symmetrized, and the eigengap of the
graph Laplacian's smallest eigenvalues gives the number of voices. ``p`` is chosen per recording
(auto-tuning after Park et al., "Auto-Tuning Spectral Clustering for Speaker Diarization Using
Normalized Maximum Eigengap", 2020): the ``p`` with the clearest gap relative to its pruning.
The voices are then k-means clusters of the spectral embedding (k-means++ seeding, restarts).
Very short recordings (fewer than ``MIN_SPECTRAL`` windows) use average-linkage agglomerative
clustering instead.
"""

from __future__ import annotations

import numpy as np

#: Below this many windows, agglomerative clustering (spectral statistics are unreliable).
MIN_SPECTRAL = 20
#: Pruning shares tried by the auto-tuning.
P_GRID = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25)


def _kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = 5, iters: int = 50):
    """Plain k-means (k-means++ seeding); the best of ``restarts`` by inertia."""
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    n = len(x)
    for _ in range(restarts):
        centers = [x[rng.integers(n)]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
            total = d.sum()
            idx = rng.choice(n, p=d / total) if total > 0 else rng.integers(n)
            centers.append(x[idx])
        c = np.asarray(centers)
        labels = np.zeros(n, int)
        for it in range(iters):
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            new = d.argmin(1)
            if it and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if (labels == j).any():
                    c[j] = x[labels == j].mean(0)
        cost = float(((x - c[labels]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = labels.copy(), cost
    return best


def _pruned(sim: np.ndarray, p: float) -> np.ndarray:
    n = len(sim)
    keep = max(2, int(np.ceil(p * n)))
    a = sim.copy()
    if keep < n:
        thr = np.partition(a, n - keep, axis=1)[:, n - keep][:, None]
        a[a < thr] = 0.0
    a = 0.5 * (a + a.T)
    np.fill_diagonal(a, 0.0)
    return np.maximum(a, 0.0)


def _auto_prune(sim: np.ndarray, max_k: int) -> tuple[np.ndarray, int]:
    """The pruned affinity with the clearest eigengap (NME) and the number of clusters it
    suggests."""
    best = None
    for p in P_GRID:
        a = _pruned(sim, p)
        vals = np.linalg.eigvalsh(np.diag(a.sum(1)) - a)
        gaps = np.diff(vals[: max_k + 1])
        k = int(np.argmax(gaps)) + 1
        ratio = p / max(gaps[k - 1] / max(vals[-1], 1e-12), 1e-12)
        if best is None or ratio < best[0]:
            best = (ratio, a, k)
    return best[1], best[2]


def spectral(
    x: np.ndarray, num: int | None = None, max_k: int = 10, extra: int = 0, seed: int = 0
) -> np.ndarray:
    """Cluster labels of unit rows ``x``: ``num`` clusters if given, else the eigengap's
    estimate plus ``extra`` (at most ``max_k``); k-means on the row-normalized eigenvectors of
    the normalized Laplacian (Ng, Jordan and Weiss)."""
    n = len(x)
    max_k = max(1, min(max_k, n - 1))
    a, k = _auto_prune(x @ x.T, max_k)
    k = num if num is not None else min(max_k, k + extra)
    if k <= 1:
        return np.zeros(n, int)
    d = 1.0 / np.sqrt(np.maximum(a.sum(1), 1e-12))
    _, vecs = np.linalg.eigh(np.eye(n) - d[:, None] * a * d[None, :])
    e = vecs[:, :k]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return relabel(_kmeans(e, k, seed))


def ahc(x: np.ndarray, threshold: float, num: int | None = None, max_k: int = 10) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine similarity: merge while the best
    linkage is at least ``threshold`` (or until ``num`` clusters)."""
    n = len(x)
    sim = (x @ x.T).astype(np.float64)
    size = np.ones(n)
    alive = np.ones(n, bool)
    members = [[i] for i in range(n)]
    np.fill_diagonal(sim, -np.inf)
    clusters = n
    while clusters > 1:
        masked = np.where(alive[:, None] & alive[None, :], sim, -np.inf)
        i, j = np.unravel_index(np.argmax(masked), masked.shape)
        best = masked[i, j]
        if num is not None:
            if clusters <= num:
                break
        elif best < threshold and clusters <= max_k:
            break
        # Lance-Williams update for average linkage
        row = (size[i] * sim[i] + size[j] * sim[j]) / (size[i] + size[j])
        sim[i], sim[:, i] = row, row
        sim[i, i] = -np.inf
        size[i] += size[j]
        alive[j] = False
        sim[j, :], sim[:, j] = -np.inf, -np.inf
        members[i].extend(members[j])
        clusters -= 1
    labels = np.zeros(n, int)
    for c, i in enumerate(np.flatnonzero(alive)):
        labels[members[i]] = c
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance."""
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(v), len(order)) for v in labels], int)


def centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean vector of each label ``0..max``."""
    k = int(labels.max()) + 1 if len(labels) else 0
    c = np.zeros((k, x.shape[1]))
    np.add.at(c, labels, x)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
