"""The speaker registry: SQLite (truth) + FAISS (derived cache), all writes atomic and locked.

Every write runs under the registry's file lock in one database transaction that also bumps the
registry's ``generation``; only after the commit is the index updated and saved with the new
generation. A crash between the two leaves an index whose generation is behind the database's,
which the next reader detects and rebuilds. Index maintenance and search live in
``cache.py`` (mixed in), the blob format in ``vectors.py``.
"""

from __future__ import annotations

import difflib
import json
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import (
    DuplicateEnrollmentError,
    EmptyRegistryError,
    InvalidInputError,
    InvalidNameError,
    SpeakerExistsError,
    SpeakerNotFoundError,
)
from ..results import EnrollResult, SpeakerInfo, UtteranceInfo
from .cache import IndexedSearch
from .database import FileLock, open_engine
from .index import VectorIndex, choose_kind
from .schema import RegistryRow, Speaker, Utterance, utcnow
from .vectors import from_blob, to_blob, unit

MAX_NAME_LENGTH = 200
#: "Did you mean" compares against every name only up to this many speakers (difflib is O(n),
#: ~0.1 s per 50k names); larger registries suggest case-insensitive matches only.
SUGGEST_MAX_SPEAKERS = 50_000


@dataclass(frozen=True)
class NewUtterance:
    vector: np.ndarray
    source: str | None = None
    duration: float | None = None
    sha256: str | None = None


def check_name(name: str) -> str:
    """Speaker names: any printable Unicode (spaces too), trimmed, 1-200 characters."""
    clean = unicodedata.normalize("NFC", str(name)).strip()
    if not clean:
        raise InvalidNameError("speaker name must not be empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"speaker name is longer than {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in clean):
        raise InvalidNameError(f"speaker name {clean!r} contains control characters")
    return clean


class Registry(IndexedSearch):
    """Speakers and their embeddings in one SQLite file, searchable through FAISS."""

    def __init__(self, path: str | Path, index_kind: str = "auto") -> None:
        self.path = Path(path)
        self.index_path = self.path.with_name(self.path.name + ".index")
        self.lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        self.index_kind = index_kind
        choose_kind(0, index_kind)  # validate early
        self.engine = open_engine(self.path, self.lock)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._index: VectorIndex | None = None

    def close(self) -> None:
        self.engine.dispose()

    # --- binding ---------------------------------------------------------------------------
    def binding(self) -> RegistryRow | None:
        with self.Session() as s:
            return s.get(RegistryRow, 1)

    def bind(self, model_name: str, model_ref: str, sha256: str, dim: int) -> RegistryRow:
        """Bind an empty registry to a model (no-op when already bound)."""
        with self.lock.hold(), self.Session.begin() as s:
            row = s.get(RegistryRow, 1)
            if row is None:
                row = RegistryRow(
                    id=1,
                    model_name=model_name,
                    model_ref=model_ref,
                    model_sha256=sha256,
                    dim=dim,
                    generation=0,
                    created=utcnow(),
                )
                s.add(row)
            return row

    def set_threshold(
        self, threshold: float | None, source: str | None, asnorm: bool = False
    ) -> None:
        with self.lock.hold(), self.Session.begin() as s:
            row = s.get(RegistryRow, 1)
            if row is None:
                raise EmptyRegistryError("registry has no model yet: enroll speakers first")
            if asnorm:
                row.threshold_asnorm, row.threshold_asnorm_source = threshold, source
            else:
                row.threshold, row.threshold_source = threshold, source

    def generation(self) -> int:
        with self.Session() as s:
            return s.scalar(select(RegistryRow.generation).where(RegistryRow.id == 1)) or 0

    # --- reads -----------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        with self.Session() as s:
            return (
                s.scalar(select(func.count(Speaker.id))) or 0,
                s.scalar(select(func.count(Utterance.id))) or 0,
            )

    def is_empty(self) -> bool:
        """O(1), unlike ``counts()`` (a full count is milliseconds at 1M speakers)."""
        with self.Session() as s:
            return s.scalar(select(Speaker.id).limit(1)) is None

    def speakers(self) -> list[SpeakerInfo]:
        with self.Session() as s:
            rows = s.execute(
                select(
                    Speaker.name,
                    func.count(Utterance.id),
                    Speaker.created,
                    Speaker.updated,
                    Speaker.meta,
                )
                .outerjoin(Utterance)
                .group_by(Speaker.id)
                .order_by(Speaker.name)
            ).all()
        return [SpeakerInfo(n, c, cr, up, json.loads(m) if m else None) for n, c, cr, up, m in rows]

    def exists(self, name: str) -> bool:
        with self.Session() as s:
            return s.scalar(select(Speaker.id).where(Speaker.name == check_name(name))) is not None

    def _get(self, s: Session, name: str) -> Speaker:
        spk = s.scalar(select(Speaker).where(Speaker.name == check_name(name)))
        if spk is None:
            raise self._not_found(s, name)
        return spk

    def similar_names(self, name: str, n: int = 3) -> list[str]:
        """Enrolled names close to ``name`` (case and small typos), best first."""
        with self.Session() as s:
            return self._similar(s, check_name(name), n)

    @staticmethod
    def _similar(s: Session, name: str, n: int) -> list[str]:
        names = s.scalars(select(Speaker.name).limit(SUGGEST_MAX_SPEAKERS + 1)).all()
        if len(names) > SUGGEST_MAX_SPEAKERS:
            return list(
                s.scalars(
                    select(Speaker.name).where(func.lower(Speaker.name) == name.lower()).limit(n)
                )
            )
        folded: dict[str, list[str]] = {}
        for other in names:
            folded.setdefault(other.casefold(), []).append(other)
        close = difflib.get_close_matches(name.casefold(), list(folded), n=n, cutoff=0.75)
        return [other for key in close for other in folded[key]][:n]

    def _not_found(self, s: Session, name: str) -> SpeakerNotFoundError:
        """The one-line error for an unknown name, with close matches and a swapped-args hint."""
        clean = check_name(name)
        message = f"no speaker named {clean!r} in the registry"
        close = self._similar(s, clean, 3)
        if close:
            message += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        if os.path.isfile(name):  # e.g. `verify claim.wav alice`: the name goes first
            message += f"; {clean!r} is a file: the speaker name comes first, then the audio"
        return SpeakerNotFoundError(message)

    def speaker(self, name: str) -> SpeakerInfo:
        with self.Session() as s:
            spk = self._get(s, name)
            utts = [
                UtteranceInfo(u.source, u.duration, u.audio_sha256, u.created)
                for u in sorted(spk.utterances, key=lambda u: u.id)
            ]
            return SpeakerInfo(
                spk.name,
                len(utts),
                spk.created,
                spk.updated,
                json.loads(spk.meta) if spk.meta else None,
                utts,
            )

    def voiceprint(self, name: str) -> np.ndarray:
        with self.Session() as s:
            return from_blob(self._get(s, name).voiceprint).copy()

    def utterance_embeddings(self, name: str) -> np.ndarray:
        with self.Session() as s:
            spk = self._get(s, name)
            return np.stack([from_blob(u.embedding) for u in spk.utterances])

    def all_voiceprints(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids, [n, dim] voiceprints, names) of every speaker."""
        with self.Session() as s:
            rows = s.execute(
                select(Speaker.id, Speaker.voiceprint, Speaker.name).order_by(Speaker.id)
            ).all()
        dim = self.binding().dim if rows else 0
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            if rows
            else np.zeros((0, dim), np.float32)
        )
        return ids, vecs, [r[2] for r in rows]

    def export_rows(self) -> list[tuple[str, str | None, list[tuple]]]:
        """Every speaker with metadata and (embedding, source, duration, sha256) utterances."""
        with self.Session() as s:
            out = []
            for spk in s.scalars(select(Speaker).order_by(Speaker.name)):
                utts = [
                    (from_blob(u.embedding).copy(), u.source, u.duration, u.audio_sha256)
                    for u in sorted(spk.utterances, key=lambda u: u.id)
                ]
                out.append((spk.name, spk.meta, utts))
            return out

    # --- writes ----------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        utterances: Sequence[NewUtterance],
        append: bool = False,
        metadata: dict | None = None,
    ) -> EnrollResult:
        """Add a speaker (or, with ``append``, utterances to one) in one transaction."""
        return self.enroll_many([(name, utterances)], append=append, metadata=metadata)[0]

    def enroll_many(
        self,
        items: Sequence[tuple[str, Sequence[NewUtterance]]],
        append: bool = False,
        metadata: dict | None = None,
    ) -> list[EnrollResult]:
        """Several speakers in one all-or-nothing transaction (bulk import, enroll-dir)."""
        names = [check_name(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise InvalidInputError("the same speaker name appears twice in one enrollment")
        for name, (_, utts) in zip(names, items):
            if not utts:
                raise InvalidInputError(f"no utterances given for {name!r}")
        with self.lock.hold():
            index = self._loaded_index_locked()
            results, upserts, replaced = [], {}, []
            with self.Session.begin() as s:
                reg = s.get(RegistryRow, 1)
                if reg is None:
                    raise EmptyRegistryError("registry has no model binding; bind it first")
                existing = self._existing_names(s, names)
                plain = [
                    (n, u)
                    for n, (_, u) in zip(names, items)
                    if n not in existing and all(x.sha256 is None for x in u)
                ]
                done: set[str] = set()
                if len(plain) > 1:  # bulk path: many new speakers without audio hashes
                    for res, sid, vp in self._insert_new(s, reg.dim, plain, metadata):
                        results.append(res)
                        upserts[sid] = vp
                    done = {n for n, _ in plain}
                for name, (_, utts) in zip(names, items):
                    if name in done:
                        continue
                    res, sid, vp, existed = self._enroll_one(
                        s, reg.dim, name, utts, append, metadata
                    )
                    results.append(res)
                    if res.added:
                        upserts[sid] = vp
                        if existed:
                            replaced.append(sid)
                order = {n: i for i, n in enumerate(names)}
                results.sort(key=lambda r: order[r.speaker])
                if upserts:
                    reg.generation += 1
                generation = reg.generation
            if upserts:
                ids = np.fromiter(upserts, dtype=np.int64, count=len(upserts))
                vecs = np.stack(list(upserts.values()))
                self._update_index_locked(
                    index, generation, ids, vecs, np.asarray(replaced, np.int64)
                )
        return results

    @staticmethod
    def _existing_names(s: Session, names: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(names), 900):
            chunk = names[i : i + 900]
            found.update(s.scalars(select(Speaker.name).where(Speaker.name.in_(chunk))))
        return found

    def _insert_new(self, s: Session, dim: int, plain, metadata: dict | None):
        """Insert many new speakers with Core bulk inserts (import-embeddings at scale)."""
        now = utcnow()
        meta = json.dumps(metadata, ensure_ascii=False) if metadata else None
        prepared = []
        for name, utts in plain:
            vecs = np.stack([self._check_vector(u, dim, name) for u in utts])
            prepared.append((name, utts, vecs, unit(vecs.mean(axis=0))))
        rows = [
            {"name": n, "meta": meta, "voiceprint": to_blob(vp), "created": now, "updated": now}
            for n, _, _, vp in prepared
        ]
        ids: list[int] = []
        stmt = insert(Speaker).returning(Speaker.id, sort_by_parameter_order=True)
        for i in range(0, len(rows), 10000):
            ids.extend(s.scalars(stmt, rows[i : i + 10000]))
        utt_rows = [
            {
                "speaker_id": sid,
                "embedding": to_blob(v),
                "source": u.source,
                "duration": u.duration,
                "audio_sha256": None,
                "created": now,
            }
            for sid, (_, utts, vecs, _) in zip(ids, prepared)
            for u, v in zip(utts, vecs)
        ]
        for i in range(0, len(utt_rows), 10000):
            s.execute(insert(Utterance), utt_rows[i : i + 10000])
        return [
            (EnrollResult(n, True, len(u), [], len(u)), sid, vp)
            for sid, (n, u, _, vp) in zip(ids, prepared)
        ]

    @staticmethod
    def _check_vector(u: NewUtterance, dim: int, name: str) -> np.ndarray:
        vec = np.asarray(u.vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != dim:
            raise InvalidInputError(
                f"embedding of {u.source or name!r} has {vec.shape[0]} dimensions; "
                f"the registry's model has {dim}"
            )
        if not np.isfinite(vec).all() or not np.any(vec):
            raise InvalidInputError(f"embedding of {u.source or name!r} is zero or not finite")
        return unit(vec)

    def _enroll_one(
        self,
        s: Session,
        dim: int,
        name: str,
        utts: Sequence[NewUtterance],
        append: bool,
        metadata: dict | None,
    ):
        spk = s.scalar(select(Speaker).where(Speaker.name == name))
        if spk is not None and not append:
            raise SpeakerExistsError(
                f"speaker {name!r} already exists; use --append to add utterances to it"
            )
        existing = {u.audio_sha256 for u in spk.utterances} if spk else set()
        fresh, skipped, seen = [], [], set()
        for u in utts:
            vec = self._check_vector(u, dim, name)
            if u.sha256 and (u.sha256 in existing or u.sha256 in seen):
                skipped.append(u.source or u.sha256)
                continue
            if u.sha256:
                owner = s.scalar(
                    select(Speaker.name)
                    .join(Utterance)
                    .where(Utterance.audio_sha256 == u.sha256)
                    .limit(1)
                )
                if owner is not None:
                    raise DuplicateEnrollmentError(
                        f"{u.source or 'audio'} is already enrolled for speaker {owner!r}"
                    )
                seen.add(u.sha256)
            fresh.append((vec, u))
        created = spk is None
        if not fresh:
            total = len(existing) if spk else 0
            return EnrollResult(name, False, 0, skipped, total), None, None, not created
        now = utcnow()
        if created:
            spk = Speaker(
                name=name,
                created=now,
                updated=now,
                voiceprint=b"",
                meta=json.dumps(metadata, ensure_ascii=False) if metadata else None,
            )
            s.add(spk)
        elif metadata:
            merged = {**(json.loads(spk.meta) if spk.meta else {}), **metadata}
            spk.meta = json.dumps(merged, ensure_ascii=False)
        for vec, u in fresh:
            spk.utterances.append(
                Utterance(
                    embedding=to_blob(vec),
                    source=u.source,
                    duration=u.duration,
                    audio_sha256=u.sha256,
                    created=now,
                )
            )
        all_vecs = np.stack([from_blob(u.embedding) for u in spk.utterances])
        vp = unit(all_vecs.mean(axis=0))
        spk.voiceprint, spk.updated = to_blob(vp), now
        s.flush()
        total = len(spk.utterances)
        return EnrollResult(name, created, len(fresh), skipped, total), spk.id, vp, not created

    def remove(self, name: str) -> int:
        """Delete a speaker and all its embeddings (database and index). Returns utterances."""
        with self.lock.hold():
            index = self._loaded_index_locked()
            with self.Session.begin() as s:
                spk = self._get(s, name)
                sid, count = spk.id, len(spk.utterances)
                s.execute(delete(Utterance).where(Utterance.speaker_id == sid))
                s.execute(delete(Speaker).where(Speaker.id == sid))
                reg = s.get(RegistryRow, 1)
                reg.generation += 1
                generation = reg.generation
            self._update_index_locked(
                index,
                generation,
                np.zeros(0, np.int64),
                np.zeros((0, 1), np.float32),
                np.asarray([sid], np.int64),
            )
        return count

    def rename(self, old: str, new: str) -> None:
        new = check_name(new)
        with self.lock.hold(), self.Session.begin() as s:
            spk = self._get(s, old)
            if spk.name == new:
                return
            if s.scalar(select(Speaker.id).where(Speaker.name == new)) is not None:
                raise SpeakerExistsError(f"speaker {new!r} already exists")
            spk.name, spk.updated = new, utcnow()
