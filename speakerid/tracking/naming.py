"""Naming voices from the registry.

Window embeddings (``windows.py``) are normalized over the whole recording, so they are not
comparable with registry voiceprints. A voice is named instead from a *standard* embedding of
its own speech, exactly as ``identify`` would embed a recording of that voice alone: up to
``NAME_SECONDS`` of its most typical windows (those closest to its centroid, not overlapping
each other), concatenated, embedded by the ``Embedder``, and searched in the registry.

Open-set naming by sparse representation (after Wright et al., "Robust Face Recognition via
Sparse Representation", 2009, used for speaker identification by Naseem et al., 2010): the
voice's embedding is written as a non-negative combination of its ``CANDIDATES`` nearest
voiceprints (non-negative least squares). An enrolled voice is explained by its own voiceprint
(its weight dominates, even when another voiceprint lies close to it and scores almost as
high); an unknown voice is a mixture of several. A voice is named when the voiceprint with the
largest weight holds at least ``CONCENTRATION`` of the weights and scores at least the threshold
plus ``NAME_RAISE`` (the best of N impostor scores runs higher than one 1:1 trial, and a voice
is compared with the whole registry). Without voiceprints the older rule applies: the best
candidate reaches the threshold and leads the runner-up by ``NAME_MARGIN``. Two voices given
the same name merge when they also verify against each other (a voice split in two); otherwise
only the better-scoring one keeps the name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..audio import SAMPLE_RATE, AudioClip, AudioSource
from . import cluster
from .windows import Analysis, Span, read_spans

#: Most speech per voice embedded for naming (chosen on the dev conversations: at the same
#: margin 40 s gave far fewer false names than 20 s; docs/tracking.md).
NAME_SECONDS = 40.0
#: A voice takes its best candidate's name only if that candidate beats the runner-up by at
#: least this much (cosine): a voice about as close to two enrolled people is ambiguous, and an
#: unknown voice is most often named wrongly that way (docs/tracking.md).
NAME_MARGIN = 0.15
#: Voiceprints the sparse representation uses: the voice's nearest ones (bounded work, and a
#: weight share that does not depend on the registry's size beyond them).
CANDIDATES = 10
#: Share of the non-negative weights the named voiceprint must hold (dev conversations:
#: docs/tracking.md).
CONCENTRATION = 0.4
#: Naming needs this much more cosine than the registry's threshold (dev conversations).
NAME_RAISE = 0.08


@dataclass(frozen=True)
class VoiceName:
    """What the registry says about one voice: its name (None: unknown), the score of the best
    candidate, and that candidate (below the threshold for an unknown voice); ``vector`` is the
    voice's standard embedding."""

    name: str | None
    score: float | None
    candidate: str | None
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)


def typical_spans(an: Analysis, labels: np.ndarray, seconds: float | None = None):
    """Per voice, non-overlapping windows closest to its centroid, up to ``seconds`` in all
    -> ``{voice: [(start, end), ...]}`` sorted in time."""
    refs = cluster.centroids(an.vectors, labels)
    limit = int((NAME_SECONDS if seconds is None else seconds) * SAMPLE_RATE)
    out: dict[int, list[Span]] = {}
    for v in range(len(refs)):
        idx = np.flatnonzero(labels == v)
        idx = idx[np.argsort(-(an.vectors[idx] @ refs[v]), kind="stable")]
        chosen: list[Span] = []
        total = 0
        for i in idx:
            a, b = (int(t) for t in an.windows[i])
            if any(a < d and c < b for c, d in chosen):
                continue
            chosen.append((a, b))
            total += b - a
            if total >= limit:
                break
        out[v] = sorted(chosen)
    return out


def voice_clips(source: AudioSource, name: str, spans: dict[int, list[Span]]) -> dict:
    """Each voice's spans read from the file and concatenated, as clips to embed."""
    flat = [(v, s) for v, ss in spans.items() for s in ss]
    pieces = read_spans(source, [s for _, s in flat])
    out: dict[int, AudioClip] = {}
    for v in spans:
        parts = [p for (w, _), p in zip(flat, pieces) if w == v]
        if parts:
            samples = np.concatenate(parts).astype(np.float32)
            out[v] = AudioClip(samples, f"{name}#voice{v + 1}", SAMPLE_RATE, 1, "")
    return out


Identify = Callable[[np.ndarray], Sequence]  # unit rows -> IdentifyResult per row
Voiceprint = Callable[[str], np.ndarray]  # registry name -> its unit voiceprint


def nnls(gram: np.ndarray, scores: np.ndarray, sweeps: int = 1000, tol: float = 1e-10):
    """Non-negative least squares ``min ||P^T w - x||, w >= 0`` from ``gram = P P^T`` and
    ``scores = P x`` (cyclic coordinate descent on the convex quadratic: exact at
    convergence; a handful of rows here)."""
    w = np.zeros(len(scores))
    diag = np.maximum(np.diag(gram), 1e-12)
    for _ in range(sweeps):
        delta = 0.0
        for i in range(len(w)):
            new = max(0.0, w[i] - (gram[i] @ w - scores[i]) / diag[i])
            delta = max(delta, abs(new - w[i]))
            w[i] = new
        if delta < tol:
            break
    return w


def sparse_name(
    x: np.ndarray, candidates: Sequence, voiceprint: Voiceprint, threshold: float
) -> tuple[str | None, float, str]:
    """(name or None, score, candidate) of one unit embedding against its candidates (the
    registry's nearest voiceprints, best first): the candidate with the largest non-negative
    weight, named when it holds ``CONCENTRATION`` of the weights and scores at least
    ``threshold + NAME_RAISE``."""
    names = [c.speaker for c in candidates]
    p = np.stack([np.asarray(voiceprint(n), np.float64) for n in names])
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    s = p @ np.asarray(x, np.float64)
    w = nnls(p @ p.T, s)
    j = int(np.argmax(w)) if w.sum() > 0 else 0
    share = w[j] / w.sum() if w.sum() > 0 else 0.0
    ok = share >= CONCENTRATION and s[j] >= threshold + NAME_RAISE
    return (names[j] if ok else None), float(s[j]), names[j]


def name_voices(
    embedder,
    clips: dict[int, AudioClip],
    identify: Identify | None,
    margin: float | None = None,
    voiceprint: Voiceprint | None = None,
) -> dict[int, VoiceName]:
    """Registry answers for each voice's clip (all unknown without a registry). With
    ``voiceprint``: the sparse-representation rule (``identify`` returns up to
    ``CANDIDATES`` candidates per row); without: the best candidate's name when it reaches the
    threshold and leads the runner-up by ``margin`` (at least two candidates when there are)."""
    if identify is None or not clips:
        return {v: VoiceName(None, None, None) for v in clips}
    margin = NAME_MARGIN if margin is None else margin
    voices = sorted(clips)
    embs = embedder.embed_clips([clips[v] for v in voices])
    answers = identify(np.stack([e.vector for e in embs]))
    out = {}
    for v, r, e in zip(voices, answers, embs):
        if voiceprint is not None and r.candidates:
            name, score, cand = sparse_name(e.vector, r.candidates, voiceprint, r.threshold)
            out[v] = VoiceName(name, score, cand, e.vector)
            continue
        best = r.candidates[0].speaker if r.candidates else None
        lead = r.candidates[0].score - r.candidates[1].score if len(r.candidates) > 1 else 2.0
        name = r.speaker if r.accepted and lead >= margin else None
        out[v] = VoiceName(name, float(r.score), best, e.vector)
    return out


def merge_same_names(labels: np.ndarray, names: dict[int, VoiceName], threshold: float | None):
    """Voices given the same name: the best-scoring one keeps it; another merges into it when
    the two voices' embeddings verify as one speaker (cosine at least ``threshold``: a voice
    split in two), else it stays unknown (two people, one only enrolled). -> (labels, names of
    the voices left)."""
    mapping = {v: v for v in names}
    names = dict(names)
    by_name: dict[str, list[int]] = {}
    for v in sorted(names):
        if names[v].name is not None:
            by_name.setdefault(names[v].name, []).append(v)
    for group in by_name.values():
        group.sort(key=lambda v: -(names[v].score or -1.0))
        top = group[0]
        for v in group[1:]:
            a, b = names[v].vector, names[top].vector
            same = a is not None and b is not None and threshold is not None
            if same and float(a @ b) >= threshold:
                mapping[v] = top
            else:
                names[v] = replace(names[v], name=None)
    merged = np.array([mapping[int(v)] for v in labels], int)
    return merged, {v: names[v] for v in names if mapping[v] == v}
