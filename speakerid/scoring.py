"""Score normalization: adaptive symmetric normalization (AS-Norm) with a top-N cohort.

For a trial (enrollment e, test t) with raw cosine s, AS-Norm computes the mean and standard
deviation of the N highest cosines of e against a cohort of impostor embeddings (and likewise
for t) and returns ``((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2``. Normalized scores are
z-scores, so they need their own threshold (``speakerid calibrate --asnorm``).
"""

from __future__ import annotations

import numpy as np

DEFAULT_TOP_N = 100


def cohort_stats(
    vectors: np.ndarray, cohort: np.ndarray, top_n: int = DEFAULT_TOP_N
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each vector's ``top_n`` highest cosines against the cohort."""
    vectors = np.atleast_2d(vectors).astype(np.float32)
    if len(cohort) < 2:
        raise ValueError("AS-Norm needs a cohort of at least 2 embeddings")
    n = min(top_n, len(cohort))
    scores = vectors @ cohort.T
    top = np.partition(scores, -n, axis=1)[:, -n:]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def asnorm(
    raw: np.ndarray,
    enroll_stats: tuple[np.ndarray, np.ndarray],
    test_stats: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Normalize raw scores given per-trial (mean, std) of enrollment and test sides."""
    (mu_e, sd_e), (mu_t, sd_t) = enroll_stats, test_stats
    return 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)
