"""Result dataclasses returned by the Python API (and printed by the CLI, ``--json`` included)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") + "Z" if dt else None


@dataclass(frozen=True)
class Candidate:
    speaker: str
    score: float


@dataclass(frozen=True)
class IdentifyResult:
    """Open-set answer: ``speaker`` is None when the best score is below ``threshold``.

    ``reason`` is set when the probe was rejected without a match (e.g. "no speech: ..."):
    then ``speaker`` is None, ``score`` -1.0 and ``candidates`` empty.
    """

    file: str
    speaker: str | None
    score: float
    accepted: bool
    threshold: float
    candidates: list[Candidate] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "speaker": self.speaker,
            "score": round(self.score, 6),
            "accepted": self.accepted,
            "threshold": self.threshold,
            "candidates": [
                {"speaker": c.speaker, "score": round(c.score, 6)} for c in self.candidates
            ],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FileError:
    """One input of a batch that could not be answered (bad audio); the others still were."""

    file: str
    error: str  # the one-line message, as the CLI prints it after "error: "

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "error": self.error}


@dataclass(frozen=True)
class VerifyResult:
    """``reason`` is set (and ``score`` -1.0) when the probe was rejected without scoring."""

    speaker: str
    file: str
    score: float
    threshold: float
    accepted: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        return d


@dataclass(frozen=True)
class CompareResult:
    """``reason`` is set (and ``score`` -1.0) when a file was rejected without scoring."""

    file1: str
    file2: str
    score: float
    threshold: float
    accepted: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        return d


@dataclass(frozen=True)
class TrackSegment:
    """One stretch of one voice. ``score``: the voice's cosine to its registry voiceprint when
    enrolled; for an unknown voice its best registry candidate's (below the threshold), None
    without a registry."""

    start: float  # seconds
    end: float
    speaker: str  # registry name, or unknown-1, unknown-2, ... within one file
    enrolled: bool
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return _stretch(self)


def _stretch(s: Any) -> dict[str, Any]:
    """The JSON of a stretch of one voice (``track``'s segments, live turns)."""
    return {
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "speaker": s.speaker,
        "enrolled": s.enrolled,
        "score": None if s.score is None else round(s.score, 6),
    }


@dataclass(frozen=True)
class TrackSpeaker:
    speaker: str
    enrolled: bool
    seconds: float  # speech time of this voice in the file

    def to_dict(self) -> dict[str, Any]:
        return {
            "speaker": self.speaker,
            "enrolled": self.enrolled,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TrackResult:
    """Who speaks when in one file (``speakerid track``): segments sorted and not overlapping,
    speakers in order of first appearance. ``threshold`` is None when no registry named voices."""

    file: str
    duration: float
    segments: list[TrackSegment]
    speakers: list[TrackSpeaker]
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "duration": round(self.duration, 3),
            "segments": [s.to_dict() for s in self.segments],
            "speakers": [s.to_dict() for s in self.speakers],
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class EnrollResult:
    speaker: str
    created: bool
    added: int
    skipped: list[str]
    utterances: int
    warnings: list[str] = field(default_factory=list)
    quality: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UtteranceInfo:
    source: str | None
    duration: float | None
    sha256: str | None
    created: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "duration": self.duration,
            "sha256": self.sha256,
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class SpeakerInfo:
    name: str
    utterances: int
    created: datetime
    updated: datetime
    metadata: dict[str, Any] | None = None
    details: list[UtteranceInfo] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "utterances": self.utterances,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
        }
        if self.metadata is not None:
            d["metadata"] = self.metadata
        if self.details is not None:
            d["sources"] = [u.to_dict() for u in self.details]
        return d


@dataclass(frozen=True)
class IndexReport:
    ok: bool
    kind: str
    generation: int
    entries: int
    speakers: int
    problems: list[str]
    rebuilt: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RegistryInfo:
    path: str
    model: str | None
    model_sha256: str | None
    dim: int | None
    speakers: int
    utterances: int
    threshold: float
    threshold_source: str
    index_kind: str | None
    generation: int
    backend: str = "sqlite"  # "sqlite" | "postgresql"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    """What ``speakerid import DIR`` wrote (``--json``)."""

    directory: str
    model: str
    speakers: int
    utterances: int
    skipped: list[str]  # already in the registry, kept (--skip-existing)
    replaced: list[str]  # already in the registry, overwritten (--replace)
    thresholds_restored: bool  # False when merged into a registry that has speakers
    bound: bool  # this import bound a new registry to the backup's model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CopyResult:
    """What ``speakerid registry copy SRC DST`` copied and verified (``--json``)."""

    source: str
    destination: str
    source_backend: str
    destination_backend: str
    speakers: int
    utterances: int
    checksum: str  # sha256 of all names and vectors, equal on both sides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- live streams (SpeakerID.stream, GET /v1/stream, speakerid listen) ----------------------
@dataclass(frozen=True)
class ReadyEvent:
    """First event of a live stream: what it listens at and names with."""

    sample_rate: int  # of the audio the client sends
    model: str
    threshold: float
    type: str = "ready"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "sample_rate": self.sample_rate,
            "model": self.model,
            "threshold": round(self.threshold, 6),
        }


@dataclass(frozen=True)
class TurnEvent:
    """A turn of one voice in a live stream. ``type`` "partial": the provisional answer for
    the turn in progress (``speaker`` None until there is enough speech to say); "segment":
    the final answer for a turn that ended (``speaker`` None only when it held too little
    speech to name). Times are seconds of the stream's own audio."""

    type: str  # "partial" | "segment"
    start: float
    end: float
    speaker: str | None  # registry name, or unknown-1, unknown-2, ... within one stream
    enrolled: bool
    score: float | None  # best registry candidate's cosine (None: not scored)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **_stretch(self)}


@dataclass(frozen=True)
class StreamErrorEvent:
    """Sent before a front closes a live stream for a reason (HTTP-style ``status``)."""

    status: int
    detail: str
    type: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "detail": self.detail}


StreamEvent = ReadyEvent | TurnEvent | StreamErrorEvent


def event_from_dict(d: dict[str, Any]) -> StreamEvent:
    """The event a front received as JSON (the client's and ``listen --server``'s view)."""
    kind = d.get("type")
    if kind == "ready":
        return ReadyEvent(int(d["sample_rate"]), str(d["model"]), float(d["threshold"]))
    if kind in ("partial", "segment"):
        score = d.get("score")
        return TurnEvent(
            kind,
            float(d["start"]),
            float(d["end"]),
            d.get("speaker"),
            bool(d.get("enrolled")),
            None if score is None else float(score),
        )
    if kind == "error":
        return StreamErrorEvent(int(d.get("status", 500)), str(d.get("detail", "")))
    from .errors import ServerError

    raise ServerError(f"not a stream event: {str(d)[:200]}")
