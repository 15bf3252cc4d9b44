"""Multi-speaker guard: does one recording hold more than one voice for a significant share?

``enroll`` refuses such a file (a voiceprint of a mixture matches nobody well and everybody a
little) and ``identify`` answers that several speakers were found, pointing to ``track``.

1. The check rides on the embedding the command computes anyway: the recording's fbank goes
   through the network's trunk once, the embedding is pooled over all its frames (exactly
   ``Embedder.embed``), and the same frames pooled over ``WINDOW_SECONDS`` windows inside the
   speech give window embeddings for free. The candidate second voice is the contiguous
   stretch of windows least similar to the rest (one person then another, or someone in the
   middle), as found by their mean embeddings.
2. Most single-voice recordings stop there: the split leaves one side with less than
   ``MIN_SHARE`` of the speech or less than ``MIN_PART_SECONDS``. Otherwise the two sides are
   verified against each other like two recordings: each side's speech is embedded on its own
   (the standard embedding, comparable with the model's threshold), and the recording counts as
   several speakers when their cosine is below ``SAME_FACTOR`` times the threshold, i.e. they
   fail verification clearly.

Window embeddings alone separate voices too poorly for a yes/no answer (they share the
recording's normalization, docs/tracking.md), hence step 2. Recordings with less than
``MIN_SPEECH`` seconds of speech are not checked. Thresholds and the recordings they were
calibrated on: docs/tracking.md (``bench/track_guard.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioClip
from ..embedding.windows import window_embedder
from ..tracking.segments import to_segments

MIN_SPEECH = 4.0
MIN_SHARE = 0.2
MIN_PART_SECONDS = 2.0
SAME_FACTOR = 0.5
WINDOW_SECONDS = 1.5
HOP_SECONDS = 0.75


@dataclass(frozen=True)
class VoiceCheck:
    """Outcome for one recording: ``several`` voices or not; ``share`` of the speech held by
    the second voice and ``similarity`` of the two sides (None when not compared)."""

    checked: bool
    several: bool = False
    share: float = 0.0
    similarity: float | None = None
    speech: float = 0.0

    def message(self, source: str) -> str:
        return (
            f"several speakers in {source}: a second voice holds {100 * self.share:.0f}% of "
            f"the speech (the two voices score {self.similarity:.2f} against each other)"
        )


def two_sides(x: np.ndarray, windows: np.ndarray, speech: list) -> tuple[list, list, float]:
    """The most different split of the speech into a contiguous stretch and the rest (one
    voice then another, or another voice in the middle): of all stretches of whole windows
    holding ``MIN_SHARE`` to ``1 - MIN_SHARE`` of the windows, the one whose mean embedding is
    least similar to the rest's -> (stretch spans, rest spans, smaller side's share of the
    speech)."""
    order = np.argsort(windows[:, 0], kind="stable")
    x, windows = x[order], windows[order]
    n = len(x)
    lo = max(1, int(np.ceil(MIN_SHARE * n)))
    csum = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    total = csum[-1]
    best, pick = np.inf, None
    for i in range(n):
        for j in range(i + lo, min(n, i + n - lo) + 1):  # stretch [i, j), rest >= lo windows
            inner = csum[j] - csum[i]
            rest = total - inner
            c = float(inner @ rest) / max(np.linalg.norm(inner) * np.linalg.norm(rest), 1e-12)
            if c < best:
                best, pick = c, (i, j)
    if pick is None:
        return list(speech), [], 0.0
    labels = np.zeros(n, int)
    labels[pick[0] : pick[1]] = 1
    sides: list[list] = [[], []]
    for a, b, v, _ in to_segments(windows, speech, labels, bridge=0.0):
        sides[v].append((a, b))
    time = [sum(b - a for a, b in side) for side in sides]
    return sides[1], sides[0], min(time) / max(sum(time), 1)


def check_clip(embedder, clip: AudioClip, x, windows, speech, threshold: float) -> VoiceCheck:
    """Steps 1-2 above for one clip, given its window embeddings and speech."""
    seconds = sum(b - a for a, b in speech) / SAMPLE_RATE
    if seconds < MIN_SPEECH or len(x) < 4:
        return VoiceCheck(False, speech=seconds)
    one, two, share = two_sides(x, windows, speech)
    small = min(sum(b - a for a, b in side) for side in (one, two)) / SAMPLE_RATE
    if share < MIN_SHARE or small < MIN_PART_SECONDS:
        return VoiceCheck(True, False, share, None, seconds)
    parts = [
        AudioClip(
            np.concatenate([clip.samples[a:b] for a, b in side]), clip.source, SAMPLE_RATE, 1, ""
        )
        for side in (one, two)
    ]
    e1, e2 = embedder.embed_clips(parts)
    sim = float(e1.vector @ e2.vector)
    return VoiceCheck(True, sim < SAME_FACTOR * threshold, share, sim, seconds)


def embed_checked(
    embedder,
    clips: Sequence[AudioClip],
    threshold: float,
    on_progress: Callable[[int], None] | None = None,
    speech: Sequence[list | None] | None = None,
):
    """Embeddings of ``clips`` (as ``embedder.embed_many``) and a ``VoiceCheck`` for each;
    ``threshold``: the verification threshold of the model (registry or card). Clips too short
    to check go through ``embed_many`` unchanged (batched as usual). ``speech``: each clip's
    speech segments where the caller's gate already ran the VAD (None entries: run here)."""
    from ..audio.vad import speech_segments

    known = list(speech) if speech is not None else [None] * len(clips)
    speech = [sp if sp is not None else speech_segments(c.samples) for c, sp in zip(clips, known)]
    seconds = [sum(b - a for a, b in sp) / SAMPLE_RATE for sp in speech]
    short = [i for i, s in enumerate(seconds) if s < MIN_SPEECH]
    embs: list = [None] * len(clips)
    checks: list = [VoiceCheck(False, speech=s) for s in seconds]
    if short:
        for i, e in zip(
            short, embedder.embed_many([clips[i] for i in short], on_progress=on_progress)
        ):
            embs[i] = e
    fe = None  # built only for a clip long enough to check (it loads the trunk)
    for i, clip in enumerate(clips):
        if seconds[i] < MIN_SPEECH:
            continue
        fe = fe or window_embedder(embedder)  # the server's: on its embedding worker
        embs[i], x, w = fe.embed_clip(clip, speech[i], WINDOW_SECONDS, HOP_SECONDS)
        checks[i] = check_clip(embedder, clip, x, w, speech[i], threshold)
        if on_progress:
            on_progress(1)
    return embs, checks
