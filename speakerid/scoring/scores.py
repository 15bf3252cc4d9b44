"""Score normalization: adaptive symmetric normalization (AS-Norm) with a top-N cohort.

For a trial (enrollment e, test t) with raw cosine s, AS-Norm computes the mean and standard
deviation of the N highest cosines of e against a cohort of impostor embeddings (and likewise
for t) and returns ``((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2``. Normalized scores are
z-scores, so they need their own threshold (``speakerid calibrate --asnorm``).

``asnorm_scores`` is the one definition: ``verify``/``identify`` (through ``registry_asnorm``,
the run-time cohort rule) and ``evaluate``/``calibrate`` all score through it, so the same pair
with the same cohort gets the same score everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import SpeakerNotFoundError

DEFAULT_TOP_N = 100


COHORT_BLOCK = 1 << 16  # cohort rows converted to float64 at a time (bounded memory)


def _unit64(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cohort_stats(
    vectors: np.ndarray,
    cohort: np.ndarray,
    top_n: int = DEFAULT_TOP_N,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each vector's ``top_n`` highest cosines against the cohort.

    ``exclude[i]`` (a cohort row index, one per vector) is left out of row i's statistics; with
    an exclusion, ``top_n`` is capped at the cohort size minus one for every row. Computed in
    float64: z-scores divide by a small spread, which float32 rounding would make depend on how
    trials happen to be batched.
    """
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    size = len(cohort) - (exclude is not None)
    if size < 2:
        raise ValueError("AS-Norm needs a cohort of at least 2 embeddings")
    n = min(top_n, size)
    scores = np.empty((len(vectors), len(cohort)), dtype=np.float64)
    for s in range(0, len(cohort), COHORT_BLOCK):
        block = np.asarray(cohort[s : s + COHORT_BLOCK], dtype=np.float64)
        scores[:, s : s + len(block)] = vectors @ block.T
    if exclude is not None:
        scores[np.arange(len(vectors)), np.asarray(exclude)] = -np.inf
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


def asnorm_scores(
    enroll: np.ndarray,
    test: np.ndarray,
    cohort: np.ndarray,
    top_n: int = DEFAULT_TOP_N,
    *,
    exclude: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """AS-Norm scores of trials: THE definition every command uses.

    Without ``pairs``, trial i is ``(enroll[i], test[i])`` and ``exclude[i]`` (optional) is a
    cohort row left out of both sides' statistics (the claimed speaker). With ``pairs=(ia, ib)``,
    trial k is ``(enroll[ia[k]], test[ib[k]])`` and each vector's cohort statistics are computed
    once (``evaluate`` scores every pair of a folder this way). Raw scores are cosines; cohort
    rows are unit embeddings. Float64 throughout, so batching never changes a score.
    """
    same = test is enroll  # evaluate passes one matrix for both sides: its stats once
    enroll = _unit64(enroll)
    test = enroll if same else _unit64(test)
    if pairs is not None:
        if exclude is not None:
            raise ValueError("exclude applies to row-paired trials only")
        ia, ib = (np.asarray(p, dtype=np.int64) for p in pairs)
        mu_e, sd_e = cohort_stats(enroll, cohort, top_n)
        mu_t, sd_t = (mu_e, sd_e) if same else cohort_stats(test, cohort, top_n)
        raw = pair_scores(enroll, test, ia, ib)
        return asnorm(raw, (mu_e[ia], sd_e[ia]), (mu_t[ib], sd_t[ib]))
    if enroll.shape != test.shape:
        raise ValueError(f"{len(enroll)} enrollment rows for {len(test)} test rows")
    raw = np.einsum("ij,ij->i", enroll, test)
    return asnorm(
        raw,
        cohort_stats(enroll, cohort, top_n, exclude),
        cohort_stats(test, cohort, top_n, exclude),
    )


def registry_asnorm(
    voiceprints: np.ndarray,
    names: Sequence[str],
    claimed: Sequence[str],
    probes: np.ndarray,
    top_n: int = DEFAULT_TOP_N,
    rows: Mapping[str, int] | None = None,
) -> np.ndarray:
    """The run-time rule (``verify``/``identify --asnorm``): trial i is the voiceprint of
    ``claimed[i]`` against ``probes[i]``; the cohort is every other registry voiceprint (the
    claimed speaker is left out of both sides' statistics). ``rows`` (name -> row of
    ``voiceprints``) is built from ``names`` unless given (a cached cohort keeps one). A
    claimed name the cohort lacks (removed meanwhile) raises ``SpeakerNotFoundError``."""
    row = rows if rows is not None else {n: i for i, n in enumerate(names)}
    missing = next((c for c in claimed if c not in row), None)
    if missing is not None:
        raise SpeakerNotFoundError(f"no speaker named {missing!r} in the registry")
    idx = np.array([row[c] for c in claimed], dtype=np.int64)
    return asnorm_scores(voiceprints[idx], probes, voiceprints, top_n, exclude=idx)


PAIR_CHUNK = 1 << 18  # trials scored per block when the full score matrix would be too large
FULL_MATRIX_MAX = 4096  # up to this many vectors per side, one matrix product scores every pair


def pair_scores(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Dot products ``a[ia[k]] . b[ib[k]]``: one matrix product for small sets, else blocks."""
    if max(len(a), len(b)) <= FULL_MATRIX_MAX:
        return (a @ b.T)[ia, ib]
    out = np.empty(len(ia), dtype=np.result_type(a, b))
    for s in range(0, len(ia), PAIR_CHUNK):
        sl = slice(s, s + PAIR_CHUNK)
        out[sl] = np.einsum("ij,ij->i", a[ia[sl]], b[ib[sl]])
    return out
