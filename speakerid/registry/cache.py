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
            limit = max(MIN_APPLY_LIMIT, idx.live // 4)
            changes = self.feed.changes_since(idx.generation, limit)
            if changes is None or not _contiguous(changes.seqs, idx.generation):
                log.info("index at %d cannot follow the change log: rebuilding", idx.generation)
                return self._rebuild(head)
            return self._apply(idx, changes, head)

    def _apply(self, idx: VectorIndex, ch: Changes, head: Head) -> VectorIndex:
        idx.remove(ch.removed, purge=True)  # no trace of a removed voice stays
        idx.remove(ch.ids, purge=False)  # old vectors of updated speakers (if present)
        idx.add(ch.ids, ch.vectors)
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

    def flush(self) -> None:
        """Save the in-memory index to the cache file unless the file is as new already."""
        with self._mutex:
            idx = self._index
            if idx is None or not self._dirty:
                return
            on_disk = VectorIndex.read_header(self.path) if self.path.exists() else None
            newer = (
                on_disk
                and on_disk.get("uid") == idx.uid
                and on_disk.get("generation", -1) >= idx.generation
            )
            try:
                if not newer:
                    idx.save(self.path)
            except BaseException:
                self._index = None  # interrupted: forget it; the file and the log still agree
                raise
            finally:
                self._dirty = False

    def close(self) -> None:
        self.flush()

    # --- maintenance --------------------------------------------------------------------------
    def rebuild(self, speakers: int) -> IndexReport:
        with self._mutex:
            idx = self._rebuild(self.feed.head())
        return IndexReport(True, idx.kind, idx.generation, idx.ntotal, speakers, [], True)

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
