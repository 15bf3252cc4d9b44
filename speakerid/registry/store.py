"""The speaker registry's storage: speakers, utterances, binding and the change log.

The database (SQLite or PostgreSQL, see ``database.py``) is the truth. Every write is one
transaction under the registry's write lock that also appends the speakers whose voiceprint it
wrote or removed to the change log, under a new sequence number (``registry.generation``).
Search is a separate object, the :class:`~.cache.IndexCache`, which this registry feeds
(``head``, ``changes_since``, ``all_voiceprints``, ``voiceprints_by_id``) and asks to follow
each commit. Whole-registry snapshot/restore for backups and copies live in ``snapshot.py``,
the blob format in ``vectors.py``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ..errors import (
    DuplicateEnrollmentError,
    EmptyRegistryError,
    InvalidInputError,
    InvalidNameError,
    ModelMismatchError,
    RegistryCorruptError,
    SpeakerExistsError,
    SpeakerNotFoundError,
)
from ..results import Candidate, EnrollResult, IndexReport, SpeakerInfo, UtteranceInfo
from . import database
from .cache import Changes, Head, IndexCache
from .cohort import Cohort, CohortCache
from .database import Database, DatabaseURL
from .index import VectorIndex
from .schema import Change, RegistryRow, Speaker, Utterance, utcnow
from .snapshot import (
    BindingRecord,
    RestoreReport,
    SpeakerRecord,
    records_checksum,
    restore_into,
    take_snapshot,
)
from .vectors import from_blob, to_blob, unit

log = logging.getLogger("speakerid")

MAX_NAME_LENGTH = 200
#: Writes whose change-log entries are kept; an index cache further behind rebuilds.
LOG_KEEP = 10_000
_CHUNK = 900  # bound parameters per IN (...) query
#: "Did you mean" compares against every name only up to this many speakers (difflib costs up
#: to ~1 s per 50k similar names: an unknown name must not cost a request that much). Larger
#: registries compare the names next to the unknown one in code-point order (as given, lower,
#: upper, title case), ``SUGGEST_NEIGHBOURS`` on each side, read through the name index:
#: typos late in a name and case differences are found, a typo in its first letters may not.
SUGGEST_SCAN_MAX = 2_000
SUGGEST_NEIGHBOURS = 50


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


class Registry:
    """Speakers and their embeddings in one database, searchable through an index cache."""

    def __init__(
        self,
        location: str | os.PathLike | DatabaseURL,
        index_kind: str = "auto",
        create: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        location = DatabaseURL.parse(location)
        if cache_dir is None:
            from .. import config

            cache_dir = config.home_dir()
        index_path = location.index_path(cache_dir)
        self.cache = IndexCache(self, index_path, index_kind, keep=LOG_KEEP)  # validates kind
        self.db = Database(location, create=create)
        self.location = self.db.location
        #: The SQLite file (None for a server database).
        self.path = self.location.path
        self.last_binding: RegistryRow | None = None
        self._cohort = CohortCache(self)

    @property
    def backend(self) -> str:
        return self.db.backend

    @property
    def index_kind(self) -> str:
        return self.cache.kind

    @property
    def index_path(self) -> Path:
        return self.cache.path

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- binding ---------------------------------------------------------------------------
    def binding(self) -> RegistryRow | None:
        with self.db.Session() as s:
            return s.get(RegistryRow, 1)

    def bind(
        self,
        model_name: str,
        model_ref: str,
        sha256: str,
        dim: int,
        repair_ref: bool = False,
    ) -> RegistryRow:
        """The one place a registry meets a model: bind an unbound registry, or check that
        ``sha256`` is the bound model's (``ModelMismatchError`` otherwise).

        ``model_ref`` must be resolvable later (a model name or an absolute path). With
        ``repair_ref`` a bound registry whose stored reference no longer resolves (the file
        moved) remembers the new one, since the sha256 proves it is the same model.
        """
        with self.db.write() as s:
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
                    uid=uuid.uuid4().hex,
                )
                s.add(row)
            elif row.model_sha256 != sha256:
                raise ModelMismatchError(
                    f"registry {self.location} is bound to model {row.model_name!r} (sha256 "
                    f"{row.model_sha256[:12]}); {model_name!r} (sha256 {sha256[:12]}) gives "
                    f"embeddings that are not comparable: use the registry's model or another --db"
                )
            elif repair_ref and row.model_ref != model_ref:
                log.info("registry model moved: %s -> %s", row.model_ref, model_ref)
                row.model_ref = model_ref
            return row

    def set_threshold(
        self, threshold: float | None, source: str | None, asnorm: bool = False
    ) -> None:
        with self.db.write() as s:
            row = s.get(RegistryRow, 1)
            if row is None:
                raise EmptyRegistryError("registry has no model yet: enroll speakers first")
            if asnorm:
                row.threshold_asnorm, row.threshold_asnorm_source = threshold, source
            else:
                row.threshold, row.threshold_source = threshold, source

    def generation(self) -> int:
        return self.head().generation

    # --- change log (the index cache's feed) -------------------------------------------------
    def head(self) -> Head:
        """Last change sequence, identity and dimension: one primary-key lookup. The whole
        registry row it read stays in ``last_binding`` (a search's threshold needs no query)."""
        with self.db.Session() as s:
            row = s.get(RegistryRow, 1)
        self.last_binding = row
        return Head(0, None, None) if row is None else Head(row.generation, row.uid, row.dim)

    def changes_since(self, seq: int, limit: int) -> Changes | None:
        """Speakers changed after ``seq`` with their current voiceprints (None for removed
        ones), read in one statement; None when more than ``limit`` rows are pending."""
        # a scalar subquery, not a join: one primary-key lookup per change whatever the
        # planner's statistics say (a hash join would scan every voiceprint)
        current = (
            select(Speaker.voiceprint).where(Speaker.id == Change.speaker_id).scalar_subquery()
        )
        with self.db.Session() as s:
            rows = s.execute(
                select(Change.seq, Change.speaker_id, current)
                .where(Change.seq > seq)
                .order_by(Change.seq)
                .limit(limit + 1)
            ).all()
        if len(rows) > limit:
            return None
        latest: dict[int, bytes | None] = {}
        for _, sid, vp in rows:
            latest[sid] = vp
        ups = [(sid, vp) for sid, vp in latest.items() if vp is not None]
        dim = len(ups[0][1]) // 4 if ups else 1
        return Changes(
            frozenset(r[0] for r in rows),
            np.fromiter((sid for sid, _ in ups), np.int64, len(ups)),
            np.frombuffer(b"".join(vp for _, vp in ups), "<f4").reshape(len(ups), dim),
            np.fromiter((sid for sid, vp in latest.items() if vp is None), np.int64),
        )

    def _log_changes(self, s: Session, upserted, removed) -> int:
        """Append one write's changes under the next sequence number (same transaction) and
        prune entries older than ``LOG_KEEP`` writes. Returns the new sequence number."""
        reg = s.get(RegistryRow, 1)
        reg.generation += 1
        seq = reg.generation
        rows = [{"seq": seq, "speaker_id": int(i), "op": "u"} for i in upserted]
        gone = {int(i) for i in removed} - {int(i) for i in upserted}
        rows += [{"seq": seq, "speaker_id": i, "op": "r"} for i in sorted(gone)]
        for i in range(0, len(rows), 10000):
            s.execute(insert(Change), rows[i : i + 10000])
        if seq > LOG_KEEP:
            s.execute(delete(Change).where(Change.seq <= seq - LOG_KEEP))
        return seq

    def _follow(self) -> None:
        """After a commit: bring this process's index up to it. The write is committed
        whatever happens here, so a failure is logged, not raised (the index keeps its
        generation and the next search follows the log again)."""
        try:
            self.cache.after_write()
        except Exception as exc:
            log.warning(
                "the index cache could not follow a write to %s (%s: %s): the write is "
                "committed; the next search applies it again",
                self.location,
                type(exc).__name__,
                exc,
            )

    def voiceprints_by_id(self, ids: list[int]) -> dict[int, tuple[str, np.ndarray]]:
        out: dict[int, tuple[str, np.ndarray]] = {}
        with self.db.Session() as s:
            for i in range(0, len(ids), _CHUNK):
                for sid, name, vp in s.execute(
                    select(Speaker.id, Speaker.name, Speaker.voiceprint).where(
                        Speaker.id.in_(ids[i : i + _CHUNK])
                    )
                ):
                    out[sid] = (name, from_blob(vp))
        return out

    def cohort(self) -> Cohort:
        """Every voiceprint by name for AS-Norm, read once per registry generation."""
        return self._cohort.get()

    # --- search (delegated to the index cache) -------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        """Top-``k`` speakers per query by cosine, exactly re-scored against the database."""
        return self.cache.search(queries, k)

    def ensure_index(self) -> VectorIndex:
        """The index as of the database's current state (applied or rebuilt as needed)."""
        return self.cache.sync()

    def rebuild_index(self) -> IndexReport:
        return self.cache.rebuild(self.counts()[0])

    def check_index(self) -> IndexReport:
        return self.cache.check(self.counts()[0])

    # --- snapshots (backups, copies) --------------------------------------------------------
    def snapshot(self) -> tuple[BindingRecord | None, list[SpeakerRecord]]:
        """The binding and every speaker with its utterances, as of one committed state."""
        with self.db.snapshot() as s:
            return take_snapshot(s)

    def restore(
        self,
        binding: BindingRecord,
        speakers: Sequence[SpeakerRecord],
        on_conflict: str = "error",
    ) -> RestoreReport:
        """Write a snapshot back, all or nothing (see :func:`.snapshot.restore_into`)."""
        with self.db.write() as s:
            report, ids, removed = restore_into(s, binding, speakers, on_conflict)
            if ids or removed:
                self._log_changes(s, ids, removed)
        if ids or removed:
            self._follow()
        self._after_bulk(len(ids) + len(removed))
        return report

    def checksum(self) -> str:
        """:func:`.snapshot.records_checksum` of the whole registry (one committed state)."""
        return records_checksum(self.snapshot()[1])

    def copy_in(self, binding: BindingRecord, speakers: Sequence[SpeakerRecord]) -> str:
        """Fill an empty registry with another registry's snapshot. The copy is read back and
        compared (counts, checksum of all vectors) inside the transaction: a mismatch rolls it
        back. Returns the checksum."""
        want = records_checksum(speakers)
        with self.db.write() as s:
            if s.scalar(select(Speaker.id).limit(1)) is not None:
                raise SpeakerExistsError(
                    f"registry {self.location} already holds speakers: copy into a new or "
                    f"empty registry"
                )
            _, ids, _ = restore_into(s, binding, speakers, "error")
            s.flush()
            _, written = take_snapshot(s)
            counts = (len(written), sum(len(sp.utterances) for sp in written))
            expected = (len(speakers), sum(len(sp.utterances) for sp in speakers))
            got = records_checksum(written)
            if counts != expected or got != want:
                raise RegistryCorruptError(
                    f"copy to {self.location} does not read back identically ({counts[0]} "
                    f"speakers, {counts[1]} utterances, checksum {got[:12]}; expected "
                    f"{expected[0]}, {expected[1]}, {want[:12]}): nothing was written"
                )
            if ids:
                self._log_changes(s, ids, [])
        if ids:
            self._follow()
        self._after_bulk(len(ids))
        return want

    # --- reads -----------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        with self.db.Session() as s:
            return (
                s.scalar(select(func.count(Speaker.id))) or 0,
                s.scalar(select(func.count(Utterance.id))) or 0,
            )

    def is_empty(self) -> bool:
        """O(1), unlike ``counts()`` (a full count is milliseconds at 1M speakers)."""
        with self.db.Session() as s:
            return s.scalar(select(Speaker.id).limit(1)) is None

    def speakers(self, limit: int | None = None, after: str | None = None) -> list[SpeakerInfo]:
        """Every speaker in code-point order of names; with ``limit``, one page of at most
        that many speakers after the name ``after`` (read through the name index)."""
        if limit is not None or after is not None:
            return self._speakers_page(limit, after)
        with self.db.Session() as s:
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
            ).all()
        rows.sort(key=lambda r: r[0])  # code-point order, whatever the database's collation
        return [SpeakerInfo(n, c, cr, up, json.loads(m) if m else None) for n, c, cr, up, m in rows]

    def _ordered_name(self):
        """The name column in code-point order, whatever the database's collation (SQLite
        compares UTF-8 bytes; PostgreSQL is told "C", which index ``ix_speakers_name_c``
        serves)."""
        return Speaker.name.collate("C") if self.backend == "postgresql" else Speaker.name

    def _speakers_page(self, limit: int | None, after: str | None) -> list[SpeakerInfo]:
        if limit is not None and limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        key = self._ordered_name()
        query = select(Speaker.id, Speaker.name, Speaker.created, Speaker.updated, Speaker.meta)
        if after is not None:
            query = query.where(key > unicodedata.normalize("NFC", str(after)))
        counts: dict[int, int] = {}
        with self.db.Session() as s:
            rows = s.execute(query.order_by(key).limit(limit)).all()
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), _CHUNK):
                counts.update(
                    s.execute(
                        select(Utterance.speaker_id, func.count(Utterance.id))
                        .where(Utterance.speaker_id.in_(ids[i : i + _CHUNK]))
                        .group_by(Utterance.speaker_id)
                    ).all()
                )
        return [
            SpeakerInfo(n, counts.get(i, 0), cr, up, json.loads(m) if m else None)
            for i, n, cr, up, m in rows
        ]

    def exists(self, name: str) -> bool:
        with self.db.Session() as s:
            return s.scalar(select(Speaker.id).where(Speaker.name == check_name(name))) is not None

    def _get(self, s: Session, name: str) -> Speaker:
        spk = s.scalar(select(Speaker).where(Speaker.name == check_name(name)))
        if spk is None:
            raise self._not_found(s, name)
        return spk

    def similar_names(self, name: str, n: int = 3) -> list[str]:
        """Enrolled names close to ``name`` (case and small typos), best first."""
        with self.db.Session() as s:
            return self._similar(s, check_name(name), n)

    def _similar(self, s: Session, name: str, n: int) -> list[str]:
        """Close names, reading a bounded number of them (see ``SUGGEST_SCAN_MAX``)."""
        names = s.scalars(select(Speaker.name).limit(SUGGEST_SCAN_MAX + 1)).all()
        if len(names) > SUGGEST_SCAN_MAX:
            names = self._neighbours(s, name)
        folded: dict[str, list[str]] = {}
        for other in names:
            folded.setdefault(other.casefold(), []).append(other)
        close = difflib.get_close_matches(name.casefold(), list(folded), n=n, cutoff=0.75)
        return [other for key in close for other in folded[key]][:n]

    def _neighbours(self, s: Session, name: str) -> list[str]:
        """Names next to ``name`` and to its case variants in code-point order: a few index
        range scans of ``SUGGEST_NEIGHBOURS`` rows each, whatever the registry's size."""
        key = self._ordered_name()
        found: dict[str, None] = {}
        for variant in dict.fromkeys((name, name.lower(), name.upper(), name.title())):
            before = select(Speaker.name).where(key < variant).order_by(key.desc())
            after = select(Speaker.name).where(key >= variant).order_by(key)
            for query in (before, after):
                found.update((r, None) for r in s.scalars(query.limit(SUGGEST_NEIGHBOURS)))
        return list(found)

    def _not_found(self, s: Session, name: str) -> SpeakerNotFoundError:
        """The one-line error for an unknown name, with close matches. Nothing here touches
        the file system: a name may come from a request (the CLI adds its own hint when the
        name is a local file, e.g. ``verify claim.wav alice``)."""
        clean = check_name(name)
        message = f"no speaker named {clean!r} in the registry"
        close = self._similar(s, clean, 3)
        if close:
            message += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        return SpeakerNotFoundError(message)

    def speaker(self, name: str) -> SpeakerInfo:
        with self.db.Session() as s:
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
        with self.db.Session() as s:
            return from_blob(self._get(s, name).voiceprint).copy()

    def utterance_embeddings(self, name: str) -> np.ndarray:
        with self.db.Session() as s:
            spk = self._get(s, name)
            return np.stack([from_blob(u.embedding) for u in spk.utterances])

    def all_voiceprints(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids, [n, dim] voiceprints, names) of every speaker."""
        with self.db.Session() as s:
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

    def enrolled_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """``{sha256: speaker}`` for those of ``hashes`` (audio file digests) already enrolled.

        Lets bulk enrollment skip known files before the costly embedding (indexed lookup).
        """
        wanted = list(dict.fromkeys(h for h in hashes if h))
        found: dict[str, str] = {}
        with self.db.Session() as s:
            for i in range(0, len(wanted), 900):
                rows = s.execute(
                    select(Utterance.audio_sha256, Speaker.name)
                    .join(Speaker)
                    .where(Utterance.audio_sha256.in_(wanted[i : i + 900]))
                ).all()
                found.update({h: n for h, n in rows})
        return found

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
        results, upserts = [], {}
        with self.db.write() as s:
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
                for res, sid, _vp in self._insert_new(s, reg.dim, plain, metadata):
                    results.append(res)
                    upserts[sid] = True
                done = {n for n, _ in plain}
            for name, (_, utts) in zip(names, items):
                if name in done:
                    continue
                res, sid, _vp, _existed = self._enroll_one(s, reg.dim, name, utts, append, metadata)
                results.append(res)
                if res.added:
                    upserts[sid] = True
            order = {n: i for i, n in enumerate(names)}
            results.sort(key=lambda r: order[r.speaker])
            if upserts:
                self._log_changes(s, list(upserts), [])
        if upserts:
            self._follow()
        self._after_bulk(len(upserts))
        return results

    def _after_bulk(self, speakers: int) -> None:
        """A write of many speakers leaves the planner's statistics stale: refresh them."""
        if speakers >= database.BULK_ROWS:
            self.db.refresh_statistics()

    @staticmethod
    def _existing_names(s: Session, names: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(names), _CHUNK):
            chunk = names[i : i + _CHUNK]
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
        with self.db.write() as s:
            spk = self._get(s, name)
            sid, count = spk.id, len(spk.utterances)
            s.execute(delete(Utterance).where(Utterance.speaker_id == sid))
            s.execute(delete(Speaker).where(Speaker.id == sid))
            self._log_changes(s, [], [sid])
        self._follow()
        return count

    def rename(self, old: str, new: str) -> None:
        new = check_name(new)
        with self.db.write() as s:
            spk = self._get(s, old)
            if spk.name == new:
                return
            if s.scalar(select(Speaker.id).where(Speaker.name == new)) is not None:
                raise SpeakerExistsError(f"speaker {new!r} already exists")
            spk.name, spk.updated = new, utcnow()
            # a logged write like any other: caches that know speakers by name (the AS-Norm
            # cohort, in every process) see the generation move
            self._log_changes(s, [spk.id], [])
        self._follow()
