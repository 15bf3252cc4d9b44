"""``track``: who speaks when in a recording, named by the registry where it can.

    speech (Silero VAD)  ->  windows + embeddings (one trunk pass)  ->  voices (clustering,
    smoothing)  ->  names (standard embedding of each voice vs the registry)  ->  segments

Three streamed passes over the file (speech detection, embedding, naming), so memory stays
bounded whatever the length; see the modules for each step and docs/tracking.md for numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioSource
from ..embedding.windows import FRAME_STEP, Analysis, analyse, window_embedder
from ..errors import InvalidInputError
from ..results import TrackResult, TrackSegment, TrackSpeaker
from . import cluster, naming, voices
from .segments import to_segments

log = logging.getLogger("speakerid")

MAX_SPEAKERS = 10


def check_counts(num_speakers: int | None, max_speakers: int | None) -> tuple[int | None, int]:
    """Validate ``--num-speakers`` / ``--max-speakers`` (one or the other, at least 1)."""
    if num_speakers is not None and max_speakers is not None:
        raise InvalidInputError("give --num-speakers or --max-speakers, not both")
    for label, v in (("--num-speakers", num_speakers), ("--max-speakers", max_speakers)):
        if v is not None and v < 1:
            raise InvalidInputError(f"{label} must be at least 1, got {v}")
    return num_speakers, max_speakers or max(MAX_SPEAKERS, num_speakers or 0)


def decide(
    an: Analysis,
    embedder,
    source: AudioSource,
    identify: naming.Identify | None,
    threshold: float | None,
    num_speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
) -> TrackResult:
    """Voices, names and segments from an analysis (the cheap part after the embeddings)."""
    labels = voices.find_voices(an, num_speakers, max_speakers)
    names: dict[int, naming.VoiceName] = {}
    if len(labels):
        spans = naming.typical_spans(an, labels)
        clips = naming.voice_clips(source, an.source, spans)
        names = naming.name_voices(embedder, clips, identify)
        labels, names = naming.merge_same_names(labels, names, threshold)
        kept = sorted(names)
        refs = cluster.centroids(an.vectors, labels)[kept]
        final = np.asarray(kept)[voices.assign(an, refs)]
        if len(set(final.tolist())) == len(kept):  # a voice may not vanish here
            labels = final
    return result_from_labels(an, labels, names, threshold)


def result_from_labels(
    an: Analysis,
    labels: np.ndarray,
    names: dict[int, naming.VoiceName],
    threshold: float | None,
) -> TrackResult:
    """Segments and speakers: enrolled voices by name, the others unknown-1, unknown-2, ...
    in order of first appearance."""
    segs = to_segments(an.windows, an.speech, labels)
    display: dict[int, str] = {}
    unknown = 0
    for _, _, v, _ in segs:
        if v in display:
            continue
        vn = names.get(v, naming.VoiceName(None, None, None))
        if vn.name is None:
            unknown += 1
        display[v] = vn.name or f"unknown-{unknown}"
    out_segs = []
    seconds: dict[int, float] = {}
    for a, b, v, _ in segs:
        vn = names.get(v, naming.VoiceName(None, None, None))
        out_segs.append(
            TrackSegment(
                a / SAMPLE_RATE, b / SAMPLE_RATE, display[v], vn.name is not None, vn.score
            )
        )
        seconds[v] = seconds.get(v, 0.0) + (b - a) / SAMPLE_RATE
    speakers = [
        TrackSpeaker(
            display[v],
            names.get(v, naming.VoiceName(None, None, None)).name is not None,
            seconds[v],
        )
        for v in display
    ]
    return TrackResult(an.source, an.duration, out_segs, speakers, threshold)


def track(
    source: AudioSource,
    embedder,
    identify: naming.Identify | None = None,
    threshold: float | None = None,
    num_speakers: int | None = None,
    max_speakers: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> TrackResult:
    """Track the voices of one recording (see the module docstring).

    ``identify(vectors)``: registry answers for unit embeddings (``SpeakerID``'s
    ``identify_embeddings``); without it every voice is unknown (plain diarization).
    ``on_progress(seconds)``: audio seconds done, twice the duration in all."""
    num, max_k = check_counts(num_speakers, max_speakers)
    an = analyse(source, window_embedder(embedder, FRAME_STEP), on_progress=on_progress)
    log.info(
        "%s: %.1f s, %.1f s of speech, %d windows",
        an.source,
        an.duration,
        an.speech_seconds,
        len(an.windows),
    )
    return decide(an, embedder, source, identify, threshold, num, max_k)
