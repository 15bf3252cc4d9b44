"""The index cache is a cache: a save that fails (read-only or full disk) or a ``pq`` compaction
that fails half-way never fails a committed write, never takes search down, and never leaves
the live index half-changed.

The tests run as root in CI, where ``chmod`` stops nothing: the cache location is made
unwritable in ways root cannot write through either (a non-empty directory where the index
file goes; a regular file where the cache directory goes).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from speakerid import errors
from speakerid.registry import cache as cache_mod
from speakerid.registry.index import VectorIndex
from speakerid.service.facade import SpeakerID

from .conftest import unit_rows
from .serverkit import Server, clip_bytes, clips


def block(path: Path) -> Path:
    """Make the index file ``path`` unwritable, root included; returns what to delete to undo.

    Beside a SQLite file the cache's directory is the database's (which must stay writable):
    a non-empty directory takes the file's place, and no rename can replace it. A server
    database's cache lives in ``home/index/``: that directory becomes a regular file."""
    path.unlink(missing_ok=True)
    if path.parent.name == "index":  # the per-machine cache of a server database
        shutil.rmtree(path.parent)
        path.parent.write_text("not a directory")
        return path.parent
    path.mkdir()
    (path / "in-the-way").write_text("x")
    return path


def unblock(obstacle: Path) -> None:
    if obstacle.is_dir():
        shutil.rmtree(obstacle)
    else:
        obstacle.unlink()


@pytest.fixture
def builds(monkeypatch):
    """Counts full index builds in this process."""
    calls = []
    real = VectorIndex.build.__func__

    def spy(cls, *a, **kw):
        calls.append(1)
        return real(cls, *a, **kw)

    monkeypatch.setattr(VectorIndex, "build", classmethod(spy))
    return calls


def _saved_generation(path: Path) -> int | None:
    header = VectorIndex.read_header(path) if path.is_file() else None
    return header["generation"] if header else None


def test_an_unsavable_cache_fails_no_write_and_no_search(db_url, tiny_ckpt, builds, caplog):
    vecs = unit_rows(8, seed=41)
    with SpeakerID(db=db_url, model=tiny_ckpt) as sid:
        sid.import_embeddings(["s0", "s1"], vecs[:2])
        path = sid.registry.index_path
        assert _saved_generation(path) == 1
        obstacle = block(path)
        with caplog.at_level(logging.WARNING, logger="speakerid"):
            res = sid.import_embeddings(["s2"], vecs[2:3])  # committed: reported as such
            assert [(r.speaker, r.created) for r in res] == [("s2", True)]
            assert sid.registry.generation() == 2
            # the retry of the "failed" write used to get 409: it is simply there
            with pytest.raises(errors.SpeakerExistsError):
                sid.import_embeddings(["s2"], vecs[3:4])
            res = sid.import_embeddings(["s1"], vecs[4:5], append=True)
            assert res[0].utterances == 2
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1, [r.getMessage() for r in warned]  # once per failing streak
        assert "could not save the index cache" in warned[0].getMessage()
        assert str(path) in warned[0].getMessage()
        # searches are answered from memory: no rebuild, no error
        base = len(builds)
        for i in (0, 2):
            assert sid.identify_embeddings(vecs[i])[0].speaker == f"s{i}"
        assert len(builds) == base
        sid.remove("s0")
        assert "s0" not in [c.speaker for c in sid.registry.search(vecs[0], 3)[0]]
        assert _saved_generation(path) is None
        # another process opening the registry meanwhile: rebuilds once, in memory, and works
        with SpeakerID(db=db_url) as other:
            assert other.identify_embeddings(vecs[2])[0].speaker == "s2"
            assert other.identify_embeddings(vecs[1])[0].speaker == "s1"
        assert len(builds) == base + 1  # and its close() with the cache still blocked is quiet
        # writable again: the next write saves the file, which a fresh process then loads
        unblock(obstacle)
        with caplog.at_level(logging.INFO, logger="speakerid"):
            sid.import_embeddings(["s5"], vecs[5:6])
        assert _saved_generation(path) == sid.registry.generation() == 5
    with SpeakerID(db=db_url) as again:
        assert again.identify_embeddings(vecs[5])[0].speaker == "s5"
    assert len(builds) == base + 1
    assert "saved again" in caplog.text


def test_index_rebuild_says_when_the_file_cannot_be_saved(tmp_path, tiny_ckpt):
    vecs = unit_rows(3, seed=42)
    with SpeakerID(db=tmp_path / "reg.db", model=tiny_ckpt) as sid:
        sid.import_embeddings(["a", "b", "c"], vecs)
        obstacle = block(sid.registry.index_path)
        rep = sid.rebuild_index()
        assert not rep.ok and rep.rebuilt and rep.entries == 3
        assert len(rep.problems) == 1
        want = f"index file {sid.registry.index_path} could not be saved"
        assert rep.problems[0].startswith(want)
        assert sid.identify_embeddings(vecs[1])[0].speaker == "b"  # the rebuilt one serves
        unblock(obstacle)
        assert sid.rebuild_index().ok and sid.check_index().ok


def _pq_index(n: int = 300, seed: int = 7) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    vecs = unit_rows(n, seed=seed)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    return VectorIndex.build(ids, vecs, vecs.shape[1], 1, "pq"), ids, vecs


def _state(idx: VectorIndex, probes: np.ndarray):
    import faiss

    return (
        idx.ntotal,
        idx.stale,
        faiss.vector_to_array(idx.index.id_map).copy(),
        idx._exact_storage().copy(),
        idx.search(probes, 5)[1].copy(),
    )


def _fail_half_way(monkeypatch):
    """The next ``VectorIndex.add`` adds half of its rows, then fails (as an allocation would)."""
    real = VectorIndex.add

    def half(self, ids, vectors):
        real(self, ids[: len(ids) // 2], vectors[: len(ids) // 2])
        raise MemoryError("std::bad_alloc (injected)")

    monkeypatch.setattr(VectorIndex, "add", half)


def test_a_compaction_that_fails_half_way_leaves_the_live_index_unchanged(monkeypatch):
    idx, ids, vecs = _pq_index()
    idx.remove(ids[5:6], purge=False)  # one stale entry, so compaction has something to drop
    before = _state(idx, vecs[:20])
    with monkeypatch.context() as m:
        _fail_half_way(m)
        with pytest.raises(MemoryError):
            idx.remove(ids[:3], purge=True)  # a removal compacts at once
        with pytest.raises(MemoryError):
            idx.compact()
    after = _state(idx, vecs[:20])
    assert after[:2] == before[:2] == (300, 1)
    for a, b in zip(after[2:], before[2:]):
        np.testing.assert_array_equal(a, b)
    # still usable, and the same removal succeeds once the failure is gone
    idx.remove(ids[:3], purge=True)
    assert (idx.ntotal, idx.stale) == (296, 0)
    keep = [i for i in range(3, 20) if i != 5]
    np.testing.assert_array_equal(idx.search(vecs[keep], 1)[1][:, 0], ids[keep])
    assert set(ids[:3]).isdisjoint(idx.search(vecs[:3], 5)[1].ravel())


def test_a_failed_compaction_in_the_cache_fails_no_write_and_retries(
    tmp_path, tiny_ckpt, monkeypatch, caplog
):
    vecs = unit_rows(300, seed=43)
    names = [f"s{i:03d}" for i in range(300)]
    with SpeakerID(db=tmp_path / "reg.db", model=tiny_ckpt, index_kind="pq") as sid:
        sid.import_embeddings(names, vecs)
        idx = sid.registry.ensure_index()
        assert idx.kind == "pq" and idx.ntotal == 300
        gen = sid.registry.generation()
        monkeypatch.setattr(cache_mod, "APPLY_RETRY_S", 0.0)  # every search tries again
        with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="speakerid"):
            _fail_half_way(m)
            assert sid.remove("s007") == 1  # committed, and said so
            live = sid.registry.cache._index
            assert live is idx and (idx.ntotal, idx.stale, idx.generation) == (300, 0, gen)
            assert "could not apply writes" in caplog.text
            # searches meanwhile: the unchanged index, re-scored against the database
            for _ in range(2):
                top = sid.registry.search(vecs[7], 3)[0]
                assert "s007" not in [c.speaker for c in top] and len(top) == 3
                assert sid.identify_embeddings(vecs[9])[0].speaker == "s009"
            assert caplog.text.count("could not apply writes") == 1  # once per failing streak
            assert sid.registry.cache._index.generation == gen
            # and not at every search: a failed apply is retried after APPLY_RETRY_S
            m.setattr(cache_mod, "APPLY_RETRY_S", 60.0)
            sid.registry.search(vecs[7], 3)  # fails again, and waits from now on
            tries = []
            m.setattr(VectorIndex, "remove", lambda *a, **kw: tries.append(1))
            for _ in range(3):
                assert sid.identify_embeddings(vecs[9])[0].speaker == "s009"
            assert tries == []
        sid.registry.cache._retry_at = 0.0  # as if the minute had passed
        # the next search applies the removal again, now successfully
        top = sid.registry.search(vecs[7], 3)[0]
        assert "s007" not in [c.speaker for c in top]
        idx = sid.registry.ensure_index()
        assert (idx.ntotal, idx.stale, idx.generation) == (299, 0, gen + 1)
        assert sid.identify_embeddings(vecs[8])[0].speaker == "s008"


def _enroll(http, name: str, paths, append: bool = False) -> httpx.Response:
    return http.post(
        f"/v1/speakers/{name}/enrollments",
        params={"append": "true"} if append else None,
        files=[("files", clip_bytes(p)) for p in paths],
    )


def test_server_answers_writes_and_searches_while_the_cache_cannot_be_saved(tmp_path):
    a, b, c = clips("so0003"), clips("so0092"), clips("so0094")
    with Server(tmp_path) as srv, srv.client() as http:
        assert _enroll(http, "alice", a[:2]).status_code == 201
        path = Path(f"{srv.db}.index")
        assert _saved_generation(path) == 1
        obstacle = block(path)
        r = _enroll(http, "bob", b[:2])
        assert r.status_code == 201, r.text
        assert r.json()["speaker"] == "bob" and r.json()["created"] is True
        r = _enroll(http, "alice", a[2:3], append=True)
        assert r.status_code == 200 and r.json()["utterances"] == 3, r.text
        for probe, who in ((b[3], "bob"), (a[3], "alice")):
            r = http.post("/v1/identify", files=[("files", clip_bytes(probe))])
            assert r.status_code == 200, r.text
            assert r.json()[0]["speaker"] == who
        gen = http.get("/v1/info").json()["generation"]
        assert gen == 3 and _saved_generation(path) is None
        unblock(obstacle)
        assert _enroll(http, "carol", c[:2]).status_code == 201
        assert _saved_generation(path) == gen + 1
        logs = srv.logs()
    assert "could not save the index cache" in logs and "Traceback" not in logs
