"""The FAISS index cache of a registry and 1:N search: follows the database's change log.

The database is the truth; every process keeps its own FAISS index (in memory, persisted to a
cache file) that records the last change-log sequence it applied. Before answering a search the
cache asks the database for its head (one primary-key query); when something is new it applies
the changes since its sequence (one indexed query), and it rebuilds from the voiceprints only
when it finds a gap (pruned log, another registry, a newer index than the database) or is too
far behind. Writers go through the same path after their commit, so every backend and every
replica shares one code path. Search re-scores the index's candidates exactly against the
voiceprints in the database, so an approximate or slightly old index can cost recall, never a
wrong score.

The cache's inputs are explicit: a :class:`ChangeFeed` (the registry's storage), the cache file
and the requested index kind.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EmptyRegistryError, InvalidInputError, RegistryCorruptError
from ..results import Candidate, IndexReport
from .index import LARGE_SPEAKERS, VectorIndex, choose_kind
from .vectors import unit

log = logging.getLogger("speakerid")

#: Rebuild an HNSW index once this fraction of its entries is outdated.
STALE_REBUILD_FRACTION = 0.2
#: Applying more changes than this (or a quarter of the index, if larger) costs more than a
#: rebuild: such a cache rebuilds instead.
MIN_APPLY_LIMIT = 10_000
#: Below this many entries the cache file is rewritten after each write (cheap); larger indexes
#: are saved after a rebuild, on ``flush``/``close`` and by ``index check``.
SAVE_EVERY_WRITE_MAX = LARGE_SPEAKERS
#: After the change log failed to apply (e.g. out of memory while ``pq`` compacts), searches
#: use the index as it is for this long before one tries again (bounded work per search).
APPLY_RETRY_S = 5.0


@dataclass(frozen=True)
class Head:
    """The database's position: last change sequence, registry identity, vector dimension."""

    generation: int
    uid: str | None
    dim: int | None  # None while the registry is not bound to a model


@dataclass(frozen=True)
class Changes:
    """Changes with sequence numbers in ``seqs``: current voiceprints of upserted speakers and
    the ids of removed ones (state as of the read, so replaying is harmless)."""

    seqs: frozenset[int]
    ids: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray


class ChangeFeed(Protocol):
    """What the cache needs from storage (``Registry`` provides it)."""

    def head(self) -> Head: ...

    def changes_since(self, seq: int, limit: int) -> Changes | None:
        """Changes after ``seq``; None when more than ``limit`` speakers changed."""

    def all_voiceprints(self) -> tuple[np.ndarray, np.ndarray, list[str]]: ...

    def voiceprints_by_id(self, ids: list[int]) -> dict[int, tuple[str, np.ndarray]]: ...

    def is_empty(self) -> bool: ...


class IndexCache:
    """One process's FAISS index over a registry, kept in step with its change log."""

    def __init__(self, feed: ChangeFeed, path: Path, kind: str = "auto", keep: int = 0) -> None:
        choose_kind(0, kind)  # validate early
        self.feed = feed
        self.path = path
        self.kind = kind
        self.keep = keep  # generations the change log retains (0: unknown, trust the gap check)
        self._index: VectorIndex | None = None
        self._dirty = False
        #: Why the last save of the cache file failed (None: the last save worked).
        self.save_error: str | None = None
        #: Why the last try to apply the change log failed (None: it is applied).
        self.apply_error: str | None = None
        self._retry_at = 0.0
        self._mutex = threading.RLock()

    # --- following the database -------------------------------------------------------------
    def sync(self) -> VectorIndex:
        """The index as of the database's current head (applying or rebuilding as needed)."""
        with self._mutex:
            head = self.feed.head()
            idx = self._index
            if idx is None:
                idx = self._try_load()
            if idx is None or idx.uid != head.uid or idx.generation > head.generation:
                return self._rebuild(head)
            if idx.generation == head.generation:
                self._index = idx
                return idx
            if self.keep and head.generation - idx.generation > self.keep:
                return self._rebuild(head)
            if self.apply_error is not None and time.monotonic() < self._retry_at:
                self._index = idx  # failed a moment ago: search it as it is meanwhile
                return idx
            limit = max(MIN_APPLY_LIMIT, idx.live // 4)
            changes = self.feed.changes_since(idx.generation, limit)
            if changes is None or not _contiguous(changes.seqs, idx.generation):
                log.info("index at %d cannot follow the change log: rebuilding", idx.generation)
                return self._rebuild(head)
            try:
                idx = self._apply(idx, changes, head)
            except Exception as exc:
                if not idx.consistent():
                    raise
                # degraded, not down: search the index as it is (candidates are re-scored
                # against the database, so a removed speaker is never answered); the next
                # sync applies the changes again
                self._index = idx
                self._apply_failed(idx, head, exc)
                return idx
            if self.apply_error is not None:
                log.info("index cache %s follows the change log again", self.path)
                self.apply_error = None
            return idx

    def _apply_failed(self, idx: VectorIndex, head: Head, exc: Exception) -> None:
        first = self.apply_error is None
        self.apply_error = f"{type(exc).__name__}: {exc}"
        self._retry_at = time.monotonic() + APPLY_RETRY_S
        (log.warning if first else log.debug)(
            "the index cache could not apply writes %d-%d (%s): searches use it as of write "
            "%d, re-scored against the database, and a search tries again after %g s",
            idx.generation + 1,
            head.generation,
            self.apply_error,
            idx.generation,
            APPLY_RETRY_S,
        )

    def _apply(self, idx: VectorIndex, ch: Changes, head: Head) -> VectorIndex:
        try:
            idx.remove(ch.removed, purge=True)  # no trace of a removed voice stays
            idx.remove(ch.ids, purge=False)  # old vectors of updated speakers (if present)
            idx.add(ch.ids, ch.vectors)
        except BaseException:
            # The index keeps its generation, so the next sync applies these changes again:
            # each step is keyed by speaker id and replays harmlessly, and compaction swaps in
            # a finished copy. Only a FAISS add that stopped half-way can leave the index's
            # layers apart: such an index is dropped (the file and the log rebuild it).
            if not idx.consistent():
                self._index = None
            raise
        idx.generation = max(ch.seqs)
        if idx.kind != choose_kind(idx.live, self.kind) or (
            idx.kind == "hnsw" and idx.stale > STALE_REBUILD_FRACTION * max(idx.ntotal, 1)
        ):
            return self._rebuild(head)
        self._index, self._dirty = idx, True
        return idx

    def _rebuild(self, head: Head) -> VectorIndex:
        # head first, then the voiceprints: a write in between is replayed later (harmless)
        ids, vecs, _ = self.feed.all_voiceprints()
        idx = VectorIndex.build(ids, vecs, head.dim or 1, head.generation, self.kind)
        idx.uid = head.uid
        self._index, self._dirty = idx, True
        self.flush()
        return idx

    def _try_load(self) -> VectorIndex | None:
        if not self.path.exists():
            return None
        try:
            return VectorIndex.load(self.path)
        except RegistryCorruptError as exc:
            log.warning("%s; rebuilding it from the database", exc)
            return None

    def after_write(self) -> None:
        """Called by the registry after each commit: follow it, save the file when cheap."""
        idx = self.sync()
        if idx.ntotal < SAVE_EVERY_WRITE_MAX:
            self.flush()

    def flush(self) -> bool:
        """Save the in-memory index to the cache file unless the file is as new already.

        The file is a cache (the database is the truth): a save that fails (read-only or full
        disk) is logged once per failing streak and the index stays in memory, unsaved, for
        the next write, ``flush`` or ``close`` to try again. Returns whether the file is
        current."""
        with self._mutex:
            idx = self._index
            if idx is None or not self._dirty:
                return True
            try:
                on_disk = VectorIndex.read_header(self.path) if self.path.exists() else None
                newer = (
                    on_disk
                    and on_disk.get("uid") == idx.uid
                    and on_disk.get("generation", -1) >= idx.generation
                )
                if not newer:
                    idx.save(self.path)
            except OSError as exc:
                self._save_failed(exc)
                return False
            except BaseException:  # interrupted: forget it; the file and the log still agree
                self._index, self._dirty = None, False
                raise
            self._dirty = False
            if self.save_error is not None:
                log.info("index cache %s saved again", self.path)
                self.save_error = None
            return True

    def _save_failed(self, exc: OSError) -> None:
        first = self.save_error is None
        where = exc.filename2 or exc.filename  # a rename names its target second
        self.save_error = f"{exc.strerror or exc or type(exc).__name__}" + (
            f": {where}" if where and str(where) != str(self.path) else ""
        )
        (log.warning if first else log.debug)(
            "could not save the index cache %s (%s): searches go on from memory, the "
            "registry is unchanged; the save is retried after the next write",
            self.path,
            self.save_error,
        )

    def close(self) -> None:
        self.flush()

    # --- maintenance --------------------------------------------------------------------------
    def rebuild(self, speakers: int) -> IndexReport:
        with self._mutex:
            idx = self._rebuild(self.feed.head())
            problems = []
            if self._dirty:  # the save failed (logged): this process alone has the new index
                problems.append(
                    f"index file {self.path} could not be saved ({self.save_error}); the "
                    f"rebuilt index serves this process only"
                )
        return IndexReport(
            not problems, idx.kind, idx.generation, idx.ntotal, speakers, problems, True
        )

    def check(self, speakers: int) -> IndexReport:
        """Compare the cache file with the database entry by entry (flat) or by sampling."""
        self.flush()
        problems: list[str] = []
        head = self.feed.head()
        idx = None
        if not self.path.exists():
            problems.append("index file is missing")
        else:
            try:
                idx = VectorIndex.load(self.path)
            except RegistryCorruptError as exc:
                problems.append(str(exc))
        if idx is not None:
            if idx.uid != head.uid:
                problems.append("index belongs to another registry (uid differs)")
            if idx.generation != head.generation:
                problems.append(f"index generation {idx.generation} != database {head.generation}")
            ids, vecs, _ = self.feed.all_voiceprints()
            if idx.kind == "flat":
                if idx.ntotal != speakers:
                    problems.append(f"index has {idx.ntotal} entries for {speakers} speakers")
                else:
                    for sid, vec in zip(ids, vecs):
                        try:
                            ok = np.allclose(idx.reconstruct(sid), vec, atol=1e-6)
                        except RuntimeError:
                            ok = False
                        if not ok:
                            problems.append(f"speaker id {sid} is missing or outdated in index")
                            break
            elif idx.ntotal < speakers:
                problems.append(f"index has {idx.ntotal} entries for {speakers} speakers")
            if len(ids) and not problems:
                sample = vecs[:: max(1, len(ids) // 200)]
                _, found = idx.search(sample, 1)
                want = ids[:: max(1, len(ids) // 200)]
                if np.mean(found[:, 0] == want) < 0.95:
                    problems.append("index searches do not find speakers' own voiceprints")
        return IndexReport(
            not problems,
            idx.kind if idx else "none",
            idx.generation if idx else -1,
            idx.ntotal if idx else 0,
            speakers,
            problems,
        )

    # --- search -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        """Top-``k`` speakers per query by cosine, exactly re-scored against the database."""
        if k < 1:
            raise InvalidInputError("top-k must be at least 1")
        q = unit(np.atleast_2d(queries))
        with self._mutex:
            idx = self.sync()
            if idx.live == 0 and self.feed.is_empty():
                raise EmptyRegistryError(
                    "the registry is empty: enroll speakers first (speakerid enroll NAME FILE...)"
                )
            fetch = k if idx.kind == "flat" else min(max(4 * k, 32) + idx.stale, idx.ntotal)
            _, ids = idx.search(q, fetch)
        lookup = self.feed.voiceprints_by_id(sorted({int(i) for i in ids.ravel() if i >= 0}))
        out = []
        for qi, row in enumerate(ids):
            cands = {int(i) for i in row if int(i) in lookup}
            scored = sorted(
                ((min(1.0, max(-1.0, float(lookup[i][1] @ q[qi]))), lookup[i][0]) for i in cands),
                key=lambda t: (-t[0], t[1]),
            )
            out.append([Candidate(name, score) for score, name in scored[:k]])
        return out


def _contiguous(seqs: frozenset[int], after: int) -> bool:
    """Whether ``seqs`` are exactly ``after+1 .. max`` (every write logs at least one row)."""
    return bool(seqs) and min(seqs) == after + 1 and max(seqs) - after == len(seqs)
