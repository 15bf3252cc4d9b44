"""The API's bodies as pydantic models, for the OpenAPI document only.

Responses are the results' ``to_dict()`` (the CLI's ``--json`` contract) sent as they are; these
models describe them and allow additional fields, so that fields the library adds later reach
clients without a change here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    """RFC 9457 problem details; ``detail`` is the CLI's one-line message."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    error: str | None = Field(None, description="The typed error (speakerid.errors)")


class Candidate(_Open):
    speaker: str
    score: float


class IdentifyItem(_Open):
    file: str
    speaker: str | None
    score: float
    accepted: bool
    threshold: float
    candidates: list[Candidate]
    reason: str | None = Field(None, description="Why the probe was rejected unscored")


class FileErrorRow(_Open):
    """A file of a batch that could not be answered (``fail_fast=false``)."""

    file: str
    error: str


class VerifyOut(_Open):
    speaker: str
    file: str
    score: float
    threshold: float
    accepted: bool
    reason: str | None = None


class CompareOut(_Open):
    file1: str
    file2: str
    score: float
    threshold: float
    accepted: bool
    reason: str | None = None


class EnrollOut(_Open):
    speaker: str
    created: bool
    added: int
    skipped: list[str]
    utterances: int
    warnings: list[str] = []
    quality: list[dict[str, Any]] = []


class TrackSegmentOut(_Open):
    start: float
    end: float
    speaker: str = Field(..., description="Registry name, or unknown-1, unknown-2, ...")
    enrolled: bool
    score: float | None


class TrackSpeakerOut(_Open):
    speaker: str
    enrolled: bool
    seconds: float


class TrackOut(_Open):
    file: str
    duration: float
    segments: list[TrackSegmentOut]
    speakers: list[TrackSpeakerOut]
    threshold: float | None = Field(..., description="None when no registry named voices")


class SpeakerRow(_Open):
    name: str
    utterances: int
    created: str
    updated: str
    metadata: dict[str, Any] | None = Field(None, description="Only with ?metadata=true")


class SourceRow(_Open):
    source: str | None
    duration: float | None
    sha256: str | None
    created: str | None


class SpeakerDetail(SpeakerRow):
    metadata: dict[str, Any] | None = Field(None, description="When the speaker has metadata")
    sources: list[SourceRow] = []


class Removed(_Open):
    removed: str
    utterances: int


class RenameIn(BaseModel):
    name: str = Field(..., description="The new name")


class Renamed(_Open):
    old: str
    new: str


class EmbedRow(_Open):
    file: str
    model: str
    dim: int
    embedding: list[float]


class Info(_Open):
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


class ThresholdOut(_Open):
    threshold: float
    source: str


class ThresholdIn(BaseModel):
    threshold: float | None = Field(
        ..., description="The registry's new threshold; null forgets it (the model card's)"
    )
    asnorm: bool = Field(False, description="Set the AS-Norm (z-score) threshold instead")
    source: str = Field("set by user", description="How it was obtained (shown by info)")


class KeyRow(_Open):
    name: str
    scope: str
    created: str | None


class KeyIn(BaseModel):
    name: str
    scope: Literal["read", "write", "admin"]


class KeyCreated(_Open):
    name: str
    scope: str
    key: str = Field(..., description="The secret: shown once, stored only as its sha256")


class Revoked(_Open):
    revoked: str


class Health(_Open):
    status: str


class Ready(_Open):
    """``status`` for everyone; the rest only for a caller with a key (or an open server)."""

    status: str
    model: str | None = None
    speakers: int | None = None
    auth: str | None = Field(None, description="keys | open (loopback, no keys yet) | disabled")
