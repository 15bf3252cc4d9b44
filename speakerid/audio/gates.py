"""Speech gates of the service: what audio is good enough to enroll, and to be scored at all.

One rule for both sides, on net speech measured by the Silero VAD (``speakerid.audio.vad``):
- an enrollment file with less than ``min_speech`` seconds of speech is refused (``force``
  overrides), clipping and low SNR give warnings (``enrollment_gate``);
- a probe (``verify``, ``identify``, ``compare``) with less than ``min_speech`` seconds is
  rejected without a match, with a reason that starts with "no speech" (``probe_rejection``):
  noise, music and silence embed to vectors that can land close to a voiceprint, so they must
  never be scored.
Bulk enrollment also skips files already enrolled before decoding them (``split_enrolled``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import AudioError, AudioQualityError, DuplicateEnrollmentError, InvalidInputError
from ..results import FileError, IdentifyResult
from .decode import MIN_SECONDS, SAMPLE_RATE, AudioClip, file_sha256, load_audio, source_name

T = TypeVar("T")

#: Score reported for a probe rejected without scoring (the lowest cosine).
REJECTED_SCORE = -1.0


def check_min_speech(value: float) -> float:
    """A minimum-speech argument: finite, 0 or more seconds (0 disables the gates)."""
    value = float(value)
    if not (np.isfinite(value) and value >= 0.0):
        raise InvalidInputError(f"minimum speech must be 0 or more seconds, got {value}")
    return value


def probe_rejection(
    clip: AudioClip, min_speech: float
) -> tuple[str | None, list[tuple[int, int]] | None]:
    """Why a probe gets no match (less speech than ``min_speech``), or None when it may be
    scored, and the speech segments the VAD found (kept for the multi-speaker guard, which
    needs them too: one VAD pass per probe). ``min_speech`` 0 disables the check (the VAD is
    then not run, and the segments are None)."""
    if min_speech <= 0:
        return None, None
    from .vad import speech_segments

    speech = speech_segments(clip.samples)
    seconds = sum(b - a for a, b in speech) / SAMPLE_RATE
    if seconds >= min_speech:
        return None, speech
    why = f"no speech: {seconds:.2f} s of speech in {clip.source} (minimum {min_speech:.2f} s)"
    return why, speech


def each_file(
    answer: Callable[[Any], T],
    files: Sequence,
    fail_fast: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> list[T | FileError]:
    """``answer(file)`` for each file, in order. A file whose audio is bad raises its
    ``AudioError`` when ``fail_fast``, else gets a ``FileError`` in its place, so that one bad
    file of a batch does not cost the others their answers. ``on_progress(1)`` per file."""
    out: list[T | FileError] = []
    for f in files:
        try:
            out.append(answer(f))
        except AudioError as exc:
            if fail_fast:
                raise
            out.append(FileError(source_name(f), str(exc)))
        if on_progress:
            on_progress(1)
    return out


def load_probes(
    files: Sequence, min_speech: float, fail_fast: bool = True
) -> tuple[list[AudioClip | FileError], list[str | None], list[list[tuple[int, int]] | None]]:
    """Decode probes (all first, so a bad file fails before any work) and gate each one ->
    (clips, rejection reasons, speech segments; see ``probe_rejection``).

    With ``fail_fast`` off, a file that cannot be decoded gets a ``FileError`` in its place
    (and no reason) instead of raising."""
    min_speech = check_min_speech(min_speech)
    items = each_file(load_audio, files, fail_fast)
    gated = [
        (None, None) if isinstance(c, FileError) else probe_rejection(c, min_speech) for c in items
    ]
    return items, [g[0] for g in gated], [g[1] for g in gated]


def with_rejected(
    found: list[IdentifyResult],
    clips: Sequence[AudioClip | FileError],
    reasons: Sequence[str | None],
    threshold: float,
) -> list[IdentifyResult | FileError]:
    """Identification results in input order: ``found`` for the scored probes, and an answer
    without a match (speaker None, no candidates, ``reason``) for each rejected one."""
    scored = iter(found)
    out: list[IdentifyResult | FileError] = []
    for c, why in zip(clips, reasons):
        if isinstance(c, FileError):
            out.append(c)
        elif why is None:
            out.append(next(scored))
        else:
            out.append(IdentifyResult(c.source, None, REJECTED_SCORE, False, threshold, [], why))
    return out


@dataclass(frozen=True)
class Gated:
    """An enrollment clip that passed the gate: the ``clip`` to embed (trimmed to its speech
    with ``vad``), its ``warnings`` and quality report ``row``, and ``spans``, the sample
    ranges the trimming kept (None: the whole clip), so that the file can be decoded again and
    trimmed the same way without running the VAD again (``trimmed``). ``speech``: the speech
    segments of ``clip`` when it was not trimmed (the multi-speaker guard needs them: one VAD
    pass per file), else None."""

    clip: AudioClip
    warnings: list[str]
    row: dict
    spans: list[tuple[int, int]] | None = None
    speech: list[tuple[int, int]] | None = None


def trimmed(clip: AudioClip, spans: list[tuple[int, int]] | None) -> AudioClip:
    """``clip`` cut to ``spans`` (from ``Gated.spans``); unchanged for None."""
    from .vad import keep_speech

    if spans is None:
        return clip
    samples = keep_speech(clip.samples, spans)
    return AudioClip(samples, clip.source, clip.original_sample_rate, clip.channels, clip.sha256)


def enrollment_gate(clip: AudioClip, vad: bool, force: bool, min_speech: float) -> Gated:
    """Quality of one enrollment clip. Refuses too little speech unless ``force``; with
    ``vad`` the clip is trimmed to its speech (when that leaves at least ``MIN_SECONDS``)."""
    from .quality import TRIM_PAD_MS, measure
    from .vad import keep_speech, segments_from_probs, speech_probs

    probs = speech_probs(clip.samples)  # run the network once for the gate and the trimming
    q = measure(clip.samples, probs)
    if q.speech_seconds < min_speech and not force:
        raise AudioQualityError(
            f"{clip.source}: only {q.speech_seconds:.2f} s of speech (minimum "
            f"{min_speech:.2f} s); use --force to enroll it anyway"
        )
    row = {"file": clip.source, **q.to_dict()}
    warnings = [f"{clip.source}: {w}" for w in q.warnings()]
    spans = None
    if vad:  # the speech with TRIM_PAD_MS of context (quality.trim_silence), if enough
        segments = segments_from_probs(probs, len(clip.samples), pad_ms=TRIM_PAD_MS)
        if len(keep_speech(clip.samples, segments)) >= MIN_SECONDS * SAMPLE_RATE:
            spans = segments
    speech = segments_from_probs(probs, len(clip.samples)) if spans is None else None
    return Gated(trimmed(clip, spans), warnings, row, spans, speech)


def gated_files(
    files: Sequence, vad: bool, force: bool, min_speech: float, errors: list[str] | None = None
) -> Iterator[Gated]:
    """Load and gate enrollment files (or decoded clips), one at a time. The first unreadable
    or refused file raises, unless ``errors`` is given: then its message is appended there and
    the file left out."""
    min_speech = check_min_speech(min_speech)
    for f in files:
        try:
            audio = f if isinstance(f, AudioClip) else load_audio(f)
            gated = enrollment_gate(audio, vad, force, min_speech)
        except AudioError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            continue
        yield gated


def split_enrolled(
    enrolled_hashes: Callable[[list[str]], dict[str, str]],
    plan: dict[str, list[Path]],
    errors: list[str] | None = None,
) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    """Split each speaker's files into new ones and ones whose bytes (sha256 of the file,
    computed before decoding; ``enrolled_hashes`` maps digests to their speakers, e.g.
    ``Registry.enrolled_hashes``) are already enrolled for that speaker, so re-runs never embed
    them again. A file enrolled for another speaker is refused, as ``enroll`` refuses it. An
    unreadable file raises, or with ``errors`` is reported there and left out."""
    digests: dict[Path, str] = {}
    for files in plan.values():
        for f in files:
            try:
                digests[f] = file_sha256(f)
            except AudioError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
    known = enrolled_hashes(list(digests.values()))
    todo: dict[str, list[Path]] = {}
    skipped: dict[str, list[str]] = {}
    for name, files in plan.items():
        todo[name], skipped[name] = [], []
        for f in (f for f in files if f in digests):
            owner = known.get(digests[f])
            if owner is None:
                todo[name].append(f)
            elif owner == name:
                skipped[name].append(str(f))
            else:
                raise DuplicateEnrollmentError(f"{f} is already enrolled for speaker {owner!r}")
    return todo, skipped
