"""Whole-registry snapshot and restore (backups, copies between databases).

:func:`take_snapshot` reads the binding, every speaker and every utterance in a session that
sees one committed state (the registry gives it one: under the lock on SQLite, a repeatable-read
transaction on PostgreSQL), so a concurrent write can never give a backup half of an enrollment.
:func:`restore_into` writes a snapshot back inside the caller's write transaction, binding a new
registry to the snapshot's model identity without loading any model; the caller logs the changes
like every other write. Stored vectors are written exactly as given (no re-normalisation), so a
round trip is bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from ..errors import (
    DuplicateEnrollmentError,
    InvalidInputError,
    ModelMismatchError,
    SpeakerExistsError,
)
from .schema import RegistryRow, Speaker, Utterance
from .vectors import from_blob, to_blob

CONFLICT_MODES = ("error", "skip", "replace")
_CHUNK = 900  # bound parameters per IN (...) query


@dataclass(frozen=True)
class BindingRecord:
    """The registry row minus its local write counter: model identity and thresholds."""

    model_name: str
    model_ref: str
    model_sha256: str
    dim: int
    created: datetime | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    threshold_asnorm: float | None = None
    threshold_asnorm_source: str | None = None


@dataclass(frozen=True)
class UtteranceRecord:
    vector: np.ndarray  # the stored unit embedding, float32
    source: str | None
    duration: float | None
    sha256: str | None
    created: datetime


@dataclass(frozen=True)
class SpeakerRecord:
    name: str
    metadata: dict | None
    created: datetime
    updated: datetime
    voiceprint: np.ndarray  # the stored voiceprint, float32
    utterances: tuple[UtteranceRecord, ...]


@dataclass(frozen=True)
class RestoreReport:
    restored: list[str]
    skipped: list[str]
    replaced: list[str]
    utterances: int
    thresholds_restored: bool
    bound: bool  # True when this restore bound a new registry


def take_snapshot(s: Session) -> tuple[BindingRecord | None, list[SpeakerRecord]]:
    """The binding and every speaker (by name) with its utterances (in enrollment order)."""
    reg = s.get(RegistryRow, 1)
    if reg is None:
        return None, []
    binding = BindingRecord(
        reg.model_name,
        reg.model_ref,
        reg.model_sha256,
        reg.dim,
        reg.created,
        reg.threshold,
        reg.threshold_source,
        reg.threshold_asnorm,
        reg.threshold_asnorm_source,
    )
    utts: dict[int, list[UtteranceRecord]] = {}
    for sid, emb, src, dur, sha, created in s.execute(
        select(
            Utterance.speaker_id,
            Utterance.embedding,
            Utterance.source,
            Utterance.duration,
            Utterance.audio_sha256,
            Utterance.created,
        ).order_by(Utterance.speaker_id, Utterance.id)
    ):
        utts.setdefault(sid, []).append(UtteranceRecord(from_blob(emb), src, dur, sha, created))
    rows = s.execute(
        select(
            Speaker.id,
            Speaker.name,
            Speaker.meta,
            Speaker.created,
            Speaker.updated,
            Speaker.voiceprint,
        )
    )
    speakers = [
        SpeakerRecord(
            name,
            json.loads(meta) if meta else None,
            created,
            updated,
            from_blob(vp),
            tuple(utts.get(sid, ())),
        )
        for sid, name, meta, created, updated, vp in rows
    ]
    speakers.sort(key=lambda sp: sp.name)  # code-point order, whatever the database's collation
    return binding, speakers


def records_checksum(speakers: Sequence[SpeakerRecord]) -> str:
    """sha256 over every speaker (by name) with its voiceprint and its utterance embeddings in
    enrollment order: equal for two registries that hold the same vectors, on any backend."""
    h = hashlib.sha256()
    for sp in sorted(speakers, key=lambda sp: sp.name):
        h.update(sp.name.encode() + b"\0" + to_blob(sp.voiceprint))
        for u in sp.utterances:
            h.update(to_blob(u.vector))
        h.update(b"\1")
    return h.hexdigest()


def restore_into(
    s: Session,
    binding: BindingRecord,
    speakers: Sequence[SpeakerRecord],
    on_conflict: str = "error",
) -> tuple[RestoreReport, list[int], list[int]]:
    """Write a snapshot inside the caller's write transaction, all or nothing.

    An unbound registry is bound to ``binding`` (thresholds included); a bound one must be
    bound to the same model (sha256). Speakers already present are an error, or are kept
    (``on_conflict="skip"``) or replaced (``"replace"``). Audio already enrolled for a
    speaker that stays is refused, as in enrollment. Returns the report and the ids written
    and removed (for the change log).
    """
    if on_conflict not in CONFLICT_MODES:
        raise InvalidInputError(
            f"on_conflict must be one of {', '.join(CONFLICT_MODES)}, got {on_conflict!r}"
        )
    names = [sp.name for sp in speakers]
    if len(set(names)) != len(names):
        raise InvalidInputError("the same speaker name appears twice in the backup")
    reg = s.get(RegistryRow, 1)
    bound = reg is None
    if reg is None:
        reg = _bind_row(s, binding)
    elif reg.model_sha256 != binding.model_sha256 or reg.dim != binding.dim:
        raise ModelMismatchError(
            f"registry is bound to model {reg.model_name!r} (sha256 "
            f"{reg.model_sha256[:12]}); the backup holds embeddings of "
            f"{binding.model_name!r} (sha256 {binding.model_sha256[:12]}), which "
            f"are not comparable: import it into another --db"
        )
    fill = bound or s.scalar(select(Speaker.id).limit(1)) is None
    if fill:  # a restore, not a merge: the backup's thresholds apply
        _copy_thresholds(reg, binding)
    existing: set[str] = set()
    for chunk in _chunks(names):
        existing.update(s.scalars(select(Speaker.name).where(Speaker.name.in_(chunk))))
    if existing and on_conflict == "error":
        shown = ", ".join(repr(n) for n in sorted(existing)[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise SpeakerExistsError(
            f"{len(existing)} {'speaker' if len(existing) == 1 else 'speakers'} of the backup "
            f"already {'exists' if len(existing) == 1 else 'exist'} in the "
            f"registry ({shown}{more}); use --skip-existing to keep them or "
            f"--replace to overwrite them"
        )
    removed = _delete_speakers(s, existing) if on_conflict == "replace" else []
    keep = on_conflict == "skip"
    todo = [sp for sp in speakers if not (keep and sp.name in existing)]
    _refuse_enrolled_audio(s, todo)
    ids = _insert_speakers(s, todo)
    report = RestoreReport(
        [sp.name for sp in todo],
        sorted(existing) if on_conflict == "skip" else [],
        sorted(existing) if on_conflict == "replace" else [],
        sum(len(sp.utterances) for sp in todo),
        fill,
        bound,
    )
    return report, ids, removed


def _bind_row(s: Session, b: BindingRecord) -> RegistryRow:
    """Bind an unbound registry inside the caller's transaction (no model is loaded)."""
    row = RegistryRow(
        id=1,
        model_name=b.model_name,
        model_ref=b.model_ref,
        model_sha256=b.model_sha256,
        dim=b.dim,
        generation=0,
        uid=uuid.uuid4().hex,
    )
    if b.created is not None:
        row.created = b.created
    s.add(row)
    s.flush()
    return row


def _copy_thresholds(row: RegistryRow, b: BindingRecord) -> None:
    row.threshold, row.threshold_source = b.threshold, b.threshold_source
    row.threshold_asnorm, row.threshold_asnorm_source = (
        b.threshold_asnorm,
        b.threshold_asnorm_source,
    )


def _chunks(items: list, size: int = _CHUNK):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _delete_speakers(s: Session, names: set[str]) -> list[int]:
    """Delete the named speakers with their utterances; returns their ids (for the index)."""
    ids: list[int] = []
    for chunk in _chunks(sorted(names)):
        ids.extend(s.scalars(select(Speaker.id).where(Speaker.name.in_(chunk))))
    for chunk in _chunks(ids):
        s.execute(delete(Utterance).where(Utterance.speaker_id.in_(chunk)))
        s.execute(delete(Speaker).where(Speaker.id.in_(chunk)))
    return ids


def _refuse_enrolled_audio(s: Session, speakers: Sequence[SpeakerRecord]) -> None:
    """Same rule as enrollment: one recording belongs to one speaker."""
    where = {u.sha256: (sp.name, u.source) for sp in speakers for u in sp.utterances if u.sha256}
    for chunk in _chunks(list(where)):
        row = s.execute(
            select(Utterance.audio_sha256, Speaker.name)
            .join(Speaker)
            .where(Utterance.audio_sha256.in_(chunk))
            .limit(1)
        ).first()
        if row is not None:
            name, source = where[row[0]]
            raise DuplicateEnrollmentError(
                f"{source or 'audio'} of {name!r} in the backup is already enrolled for "
                f"speaker {row[1]!r}"
            )


def _insert_speakers(s: Session, speakers: Sequence[SpeakerRecord]) -> list[int]:
    """Core bulk inserts with the snapshot's own values and timestamps, blobs verbatim."""
    rows = [
        {
            "name": sp.name,
            "meta": json.dumps(sp.metadata, ensure_ascii=False) if sp.metadata else None,
            "voiceprint": to_blob(sp.voiceprint),
            "created": sp.created,
            "updated": sp.updated,
        }
        for sp in speakers
    ]
    ids: list[int] = []
    stmt = insert(Speaker).returning(Speaker.id, sort_by_parameter_order=True)
    for chunk in _chunks(rows, 10000):
        ids.extend(s.scalars(stmt, chunk))
    utt_rows = [
        {
            "speaker_id": sid,
            "embedding": to_blob(u.vector),
            "source": u.source,
            "duration": u.duration,
            "audio_sha256": u.sha256,
            "created": u.created,
        }
        for sid, sp in zip(ids, speakers)
        for u in sp.utterances
    ]
    for chunk in _chunks(utt_rows, 10000):
        s.execute(insert(Utterance), chunk)
    return ids
