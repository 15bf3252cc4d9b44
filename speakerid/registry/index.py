"""FAISS inner-product index over speaker voiceprints: a derived, rebuildable cache.

The index file holds a small JSON header (format, kind, generation, registry uid, dim, count)
followed by the serialized FAISS index, written to a temporary file and renamed, so a reader sees
either the old or the new index, never half of one. The header's ``generation`` is the last
change-log sequence the index contains and ``uid`` the registry it belongs to; ``cache.py``
brings an older index up to date from the change log or rebuilds it.

Kinds:
- ``flat``: exact brute force (default below ``LARGE_SPEAKERS``);
- ``pq``: 4-bit product-quantized SIMD scan (FAISS ``PQ{d/4}x4fs``) whose best candidates are
  re-ranked with the exact vectors (``RFlat``); chosen automatically from ``LARGE_SPEAKERS``.
  On 1M voiceprints it answers in under a millisecond at recall@1 1.0 and builds in seconds
  (docs/performance.md);
- ``hnsw``: graph index (on request), constant-time in the registry size but slower to build
  and, at 1M, slower to search at the same recall.

Approximate kinds cannot delete in place. Updated voiceprints are added again and their old
exact vectors zeroed (stale entries); searches over-fetch candidates and the registry
re-scores them exactly against the database, which drops removed and outdated entries. When a
speaker is removed, ``pq`` is compacted at once (no quantized code of a removed voice stays),
and ``hnsw`` zeroes the stored vector. Compaction encodes the kept entries into a new index and
swaps it in only when it is complete, so a failure half-way leaves the live index unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RegistryCorruptError


class _LazyFaiss:
    """``faiss``, imported on first use: commands that never search the index (``verify``,
    ``list``...) skip its import (~25 ms of a one-shot command)."""

    def __getattr__(self, name: str):
        import faiss as module

        globals()["faiss"] = module
        return getattr(module, name)


faiss = _LazyFaiss()
MAGIC = b"SPKIDX1\n"
LARGE_SPEAKERS = 100_000
HNSW_MIN_SPEAKERS = LARGE_SPEAKERS  # kept for callers of the old name
#: Exact vectors re-ranked per requested candidate in ``pq`` (the scan is approximate).
PQ_K_FACTOR = 8
#: ``pq`` compacts itself (re-encodes without stale entries) once this many accumulate.
PQ_MAX_STALE = 256
#: Exact vectors copied at a time while ``pq`` compacts (bounded extra memory).
COMPACT_BLOCK = 1 << 16
PQ_TRAIN_MAX = 200_000
KINDS = ("auto", "flat", "pq", "hnsw")
HNSW_M = 48
HNSW_EF_CONSTRUCTION = 100
#: Measured on 1M random unit 192-d voiceprints (the hardest case: no cluster structure),
#: probes at cosine ~0.6 to their speaker, 2 cores: M=32 ef 512/1024/2048 -> recall@1
#: 0.86/0.97/0.998; M=48 -> 0.94/0.994/1.0 (see docs/performance.md). M=48, ef 1024 is the
#: cheapest setting above 0.99.
HNSW_EF_SEARCH = 1024
#: Below this many entries ef 512 already gives recall@1 1.0 (100k: 0.5 vs 1.0 ms per query).
HNSW_SMALL = 500_000
HNSW_EF_SEARCH_SMALL = 512


def ef_search(ntotal: int) -> int:
    return HNSW_EF_SEARCH_SMALL if ntotal < HNSW_SMALL else HNSW_EF_SEARCH


def choose_kind(count: int, requested: str = "auto") -> str:
    if requested not in KINDS:
        raise ValueError(f"unknown index kind {requested!r} (use one of {', '.join(KINDS)})")
    if requested != "auto":
        return requested
    return "pq" if count >= LARGE_SPEAKERS else "flat"


def _pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of 4 dims each where the dimension allows (192 -> 48)."""
    return next(m for m in range(max(1, dim // 4), dim + 1) if dim % m == 0)


def _build_pq(dim: int, vectors: np.ndarray) -> faiss.Index:
    base = faiss.index_factory(
        dim, f"PQ{_pq_subquantizers(dim)}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT
    )
    train = vectors
    if len(train) > PQ_TRAIN_MAX:
        pick = np.random.default_rng(0).choice(len(train), PQ_TRAIN_MAX, replace=False)
        train = train[np.sort(pick)]
    if len(train) < 1024:  # k-means wants 39 points per centroid; repeat small sets
        reps = -(-1024 // max(1, len(train)))
        train = np.tile(train if len(train) else np.eye(1, dim, dtype=np.float32), (reps, 1))
    base.train(np.ascontiguousarray(train, dtype=np.float32))
    faiss.downcast_index(base).k_factor = PQ_K_FACTOR
    return base


@dataclass
class VectorIndex:
    """A FAISS index plus the bookkeeping needed to trust it."""

    index: faiss.Index
    kind: str
    dim: int
    generation: int
    stale: int = 0  # HNSW entries that no longer reflect the database
    uid: str | None = None  # the registry this index belongs to

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, dim: int, generation: int, kind: str = "auto"
    ) -> VectorIndex:
        kind = choose_kind(len(ids), kind)
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "pq":
            index = faiss.IndexIDMap(_build_pq(dim, np.asarray(vectors, dtype=np.float32)))
        else:
            hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            hnsw.hnsw.efSearch = ef_search(len(ids))
            index = faiss.IndexIDMap(hnsw)
        vi = cls(index, kind, dim, generation)
        vi.add(ids, vectors)
        return vi

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        """Entries that stand for a speaker (``ntotal`` minus stale ones)."""
        return self.ntotal - self.stale

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.ascontiguousarray(ids, dtype=np.int64),
            )

    def _exact_storage(self) -> np.ndarray:
        """``[ntotal, dim]`` view of the exact vectors inside an approximate index."""
        inner = faiss.downcast_index(self.index.index)
        flat = faiss.downcast_index(inner.storage if self.kind == "hnsw" else inner.refine_index)
        data = faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * self.dim)
        return data.reshape(self.ntotal, self.dim)

    def remove(self, ids: np.ndarray, purge: bool = True) -> None:
        """Drop ``ids``; ``purge`` (a speaker removed) also erases every trace of them."""
        if not len(ids):
            return
        if self.kind == "flat":
            self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
            return
        # Approximate indexes cannot delete: zero the exact vectors so a removed voiceprint
        # no longer exists in the index; the entry stays as a stale one.
        labels = faiss.vector_to_array(self.index.id_map)
        storage = self._exact_storage()
        positions = np.flatnonzero(np.isin(labels, ids))
        positions = positions[np.any(storage[positions] != 0.0, axis=1)]  # not yet stale
        if not len(positions):
            return
        if self.kind == "pq" and (purge or self.stale + len(positions) > PQ_MAX_STALE):
            self._compact(drop=positions)  # all or nothing: the live index is not touched
            return
        storage[positions] = 0.0
        self.stale += len(positions)

    def compact(self) -> None:
        """``pq``: re-encode the live vectors (keeps the trained quantizer, drops stale codes)."""
        self._compact(drop=np.zeros(0, dtype=np.int64))

    def _compact(self, drop: np.ndarray) -> None:
        """Re-encode the live entries except the positions ``drop`` into a new index, then swap
        it in: a failure half-way (memory) leaves this index as it was, usable."""
        labels = faiss.vector_to_array(self.index.id_map)
        storage = self._exact_storage()
        inner = faiss.downcast_index(self.index.index)
        base = faiss.clone_index(inner.base_index)  # the trained quantizer (and 4-bit codes)
        base.reset()
        refine = faiss.IndexRefineFlat(base)
        refine.k_factor = PQ_K_FACTOR
        fresh = VectorIndex(faiss.IndexIDMap(refine), self.kind, self.dim, self.generation)
        keep = np.ones(len(labels), dtype=bool)
        keep[drop] = False
        for s in range(0, len(labels), COMPACT_BLOCK):  # bounded copies of the exact vectors
            block = slice(s, s + COMPACT_BLOCK)
            live = keep[block] & np.any(storage[block] != 0.0, axis=1)
            fresh.add(labels[block][live], storage[block][live])
        self.index, self.stale = fresh.index, 0

    def consistent(self) -> bool:
        """Whether the FAISS layers agree on the number of entries (an add that stopped
        half-way, e.g. out of memory, can leave them apart: such an index is not trusted)."""
        inner = faiss.downcast_index(self.index.index)
        parts = [inner]
        if self.kind == "pq":
            parts += [inner.base_index, inner.refine_index]
        elif self.kind == "hnsw":
            parts.append(inner.storage)
        n = self.ntotal
        return self.index.id_map.size() == n and all(p.ntotal == n for p in parts)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, existing: np.ndarray) -> None:
        """Replace the vectors of ``existing`` ids and add the new ones."""
        self.remove(existing, purge=False)
        self.add(ids, vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, min(k, self.ntotal))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def reconstruct(self, key: int) -> np.ndarray:
        return self.index.reconstruct(int(key))

    def save(self, path: Path) -> None:
        header = (
            json.dumps(
                {
                    "kind": self.kind,
                    "dim": self.dim,
                    "generation": self.generation,
                    "ntotal": self.ntotal,
                    "stale": self.stale,
                    "uid": self.uid,
                }
            ).encode()
            + b"\n"
        )
        blob = faiss.serialize_index(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                f.write(header)
                f.write(blob.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def read_header(path: Path) -> dict | None:
        """The JSON header of an index file (kind, generation, ...) without loading the index."""
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                return json.loads(f.readline())
        except (OSError, ValueError):
            return None

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Load an index file; raises ``RegistryCorruptError`` for anything unreadable."""
        try:
            data = path.read_bytes()
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC) : end])
            index = faiss.deserialize_index(np.frombuffer(data[end + 1 :], dtype=np.uint8))
            if index.ntotal != header["ntotal"] or index.d != header["dim"]:
                raise ValueError("header does not match index")
            if header["kind"] == "hnsw":
                faiss.downcast_index(index.index).hnsw.efSearch = ef_search(index.ntotal)
            elif header["kind"] == "pq":
                faiss.downcast_index(index.index).k_factor = PQ_K_FACTOR
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
            raise RegistryCorruptError(f"{path}: unreadable index ({exc})") from None
        return cls(
            index,
            header["kind"],
            header["dim"],
            header["generation"],
            header["stale"],
            header.get("uid"),
        )
