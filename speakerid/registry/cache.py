"""The registry's FAISS cache and 1:N search, mixed into :class:`~.store.Registry`.

The index is derived from the database: it is loaded when its generation matches the
database's, rebuilt from the voiceprints otherwise, and updated in place after each committed
write. Search always re-scores the index's candidates exactly against the voiceprints in SQLite,
so an approximate index can cost recall but never a wrong score.

The host class provides ``path``, ``index_path``, ``index_kind``, ``lock``, ``Session``,
``_index`` and the read methods ``generation``, ``counts``, ``is_empty``, ``binding`` and
``all_voiceprints``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from sqlalchemy import select

from ..errors import EmptyRegistryError, InvalidInputError, RegistryCorruptError
from ..results import Candidate, IndexReport
from .index import VectorIndex, choose_kind
from .schema import Speaker
from .vectors import from_blob, unit

log = logging.getLogger("speakerid")

#: Rebuild an HNSW index once this fraction of its entries is outdated.
STALE_REBUILD_FRACTION = 0.2
#: Writes update the in-memory FAISS index in place (add/remove may reallocate its storage), so
#: in a process that searches from several threads (``speakerid serve``) a search must not run
#: during an update. Held only around those calls (searches take milliseconds at most).
_INDEX_GUARD = threading.Lock()


class IndexedSearch:
    """Index maintenance (load, rebuild, incremental update, check) and exact-rescored search."""

    def _try_load(self) -> VectorIndex | None:
        if not self.index_path.exists():
            return None
        try:
            return VectorIndex.load(self.index_path)
        except RegistryCorruptError as exc:
            log.warning("%s; rebuilding it from the database", exc)
            return None

    def _loaded_index_locked(self) -> VectorIndex | None:
        """The current index if one can be had cheaply (caller holds the lock)."""
        gen = self.generation()
        if self._index is not None and self._index.generation == gen:
            return self._index
        idx = self._try_load()
        return idx if idx is not None and idx.generation == gen else None

    def _rebuild_locked(self) -> VectorIndex:
        ids, vecs, _ = self.all_voiceprints()
        b = self.binding()
        idx = VectorIndex.build(ids, vecs, b.dim if b else 1, self.generation(), self.index_kind)
        idx.save(self.index_path)
        self._index = idx
        return idx

    def _update_index_locked(
        self,
        index: VectorIndex | None,
        generation: int,
        ids: np.ndarray,
        vecs: np.ndarray,
        replaced: np.ndarray,
    ) -> None:
        speakers, _ = self.counts()
        wanted = choose_kind(speakers, self.index_kind)
        if index is None or index.generation != generation - 1 or index.kind != wanted:
            self._rebuild_locked()
            return
        gone = np.setdiff1d(replaced, ids)  # speakers removed, not updated: purge them
        with _INDEX_GUARD:
            index.remove(gone, purge=True)
            index.remove(np.intersect1d(replaced, ids), purge=False)
            index.add(ids, vecs)
            index.generation = generation
        if index.kind == "hnsw" and index.stale > STALE_REBUILD_FRACTION * max(index.ntotal, 1):
            self._rebuild_locked()
            return
        index.save(self.index_path)
        self._index = index

    def ensure_index(self) -> VectorIndex:
        """The index matching the database, loading or rebuilding it as needed."""
        gen = self.generation()
        if self._index is not None and self._index.generation == gen:
            return self._index
        idx = self._try_load()
        if idx is not None and idx.generation == gen:
            self._index = idx
            return idx
        with self.lock.hold():
            idx = self._loaded_index_locked()
            if idx is not None:
                self._index = idx
                return idx
            return self._rebuild_locked()

    def rebuild_index(self) -> IndexReport:
        with self.lock.hold():
            idx = self._rebuild_locked()
        speakers, _ = self.counts()
        return IndexReport(True, idx.kind, idx.generation, idx.ntotal, speakers, [], True)

    def check_index(self) -> IndexReport:
        """Compare the index file with the database entry by entry (flat) or by sampling."""
        problems: list[str] = []
        gen = self.generation()
        speakers, _ = self.counts()
        idx = None
        if not self.index_path.exists():
            problems.append("index file is missing")
        else:
            try:
                idx = VectorIndex.load(self.index_path)
            except RegistryCorruptError as exc:
                problems.append(str(exc))
        if idx is not None:
            if idx.generation != gen:
                problems.append(f"index generation {idx.generation} != database {gen}")
            ids, vecs, _ = self.all_voiceprints()
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
        kind = idx.kind if idx else "none"
        return IndexReport(
            not problems,
            kind,
            idx.generation if idx else -1,
            idx.ntotal if idx else 0,
            speakers,
            problems,
        )

    # --- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        """Top-``k`` speakers per query by cosine, exactly re-scored against the database."""
        if k < 1:
            raise InvalidInputError("top-k must be at least 1")
        idx = self.ensure_index()
        if self.is_empty():
            raise EmptyRegistryError(
                "the registry is empty: enroll speakers first (speakerid enroll NAME FILE...)"
            )
        q = unit(np.atleast_2d(queries))
        fetch = k if idx.kind == "flat" else min(max(4 * k, 32) + idx.stale, idx.ntotal)
        with _INDEX_GUARD:
            _, ids = idx.search(q, fetch)
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        with self.Session() as s:
            rows = (
                s.execute(
                    select(Speaker.id, Speaker.name, Speaker.voiceprint).where(
                        Speaker.id.in_(wanted)
                    )
                ).all()
                if wanted
                else []
            )
        lookup = {r[0]: (r[1], from_blob(r[2])) for r in rows}
        out = []
        for qi, row in enumerate(ids):
            cands = {int(i) for i in row if int(i) in lookup}
            scored = sorted(
                ((min(1.0, max(-1.0, float(lookup[i][1] @ q[qi]))), lookup[i][0]) for i in cands),
                key=lambda t: (-t[0], t[1]),
            )
            out.append([Candidate(name, score) for score, name in scored[:k]])
        return out
