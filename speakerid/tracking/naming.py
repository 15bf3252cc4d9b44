"""Naming voices from the registry.

Window embeddings (``windows.py``) are normalized over the whole recording, so they are not
comparable with registry voiceprints. A voice is named instead from a *standard* embedding of
its own speech, exactly as ``identify`` would embed a recording of that voice alone: up to
``NAME_SECONDS`` of its most typical windows (those closest to its centroid, not overlapping
each other), concatenated, embedded by the ``Embedder``, and searched in the registry (open set
at the threshold, and ``NAME_MARGIN`` ahead of the runner-up). Two voices given the same name
merge when they also verify against each other (a voice split in two); otherwise only the
better-scoring one keeps the name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioClip, AudioSource
from ..embedding.windows import Analysis, Span, read_spans
from . import cluster

#: Most speech per voice embedded for naming (chosen on the dev conversations: at the same
#: margin 40 s gave far fewer false names than 20 s; docs/tracking.md).
NAME_SECONDS = 40.0
#: A voice takes its best candidate's name only if that candidate beats the runner-up by at
#: least this much (cosine): a voice about as close to two enrolled people is ambiguous, and an
#: unknown voice is most often named wrongly that way (docs/tracking.md).
NAME_MARGIN = 0.15


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


def name_voices(
    embedder,
    clips: dict[int, AudioClip],
    identify: Identify | None,
    margin: float | None = None,
) -> dict[int, VoiceName]:
    """Registry answers for each voice's clip (all unknown without a registry): the best
    candidate's name when it reaches the threshold and leads the runner-up by ``margin``.
    ``identify`` must return at least two candidates per row when there are two."""
    if identify is None or not clips:
        return {v: VoiceName(None, None, None) for v in clips}
    margin = NAME_MARGIN if margin is None else margin
    voices = sorted(clips)
    embs = embedder.embed_clips([clips[v] for v in voices])
    answers = identify(np.stack([e.vector for e in embs]))
    out = {}
    for v, r, e in zip(voices, answers, embs):
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
