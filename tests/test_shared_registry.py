"""One registry for many processes: database URLs, PostgreSQL, change-log sync of the index.

Runs against a real PostgreSQL server started by the test run (``pg_server`` in conftest.py);
the change-log tests run on SQLite too, since both backends share that code path.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, event, text
from typer.testing import CliRunner

from speakerid import errors
from speakerid.cli import app
from speakerid.registry import cache as cache_mod
from speakerid.registry import database as database_mod
from speakerid.registry.database import DatabaseURL
from speakerid.registry.index import VectorIndex
from speakerid.registry.schema import SCHEMA_REVISION
from speakerid.service.facade import SpeakerID

from .conftest import ROOT, unit_rows

runner = CliRunner()


# --- URLs ----------------------------------------------------------------------------------
def test_database_urls_are_parsed_and_passwords_never_shown(tmp_path):
    assert DatabaseURL.parse("reg.db") == DatabaseURL("sqlite", "sqlite:///reg.db", Path("reg.db"))
    assert DatabaseURL.parse("sqlite:///rel/x.db").path == Path("rel/x.db")
    assert DatabaseURL.parse("sqlite:////abs/x.db").path == Path("/abs/x.db")
    assert DatabaseURL.parse(tmp_path / "a.db").index_path(tmp_path) == tmp_path / "a.db.index"
    pg = DatabaseURL.parse("postgresql://bob:hunter2@db.example:5433/voices")
    assert (pg.backend, pg.path) == ("postgresql", None)
    assert pg.url == "postgresql+psycopg://bob:hunter2@db.example:5433/voices"
    assert pg.display == "postgresql+psycopg://bob:***@db.example:5433/voices"
    cache = pg.index_path(tmp_path)
    assert cache.parent == tmp_path / "index" and "hunter2" not in str(cache)
    # the cache is per database, not per password
    other_pw = DatabaseURL.parse("postgresql+psycopg://bob:new@db.example:5433/voices")
    assert other_pw.index_path(tmp_path) == cache
    assert DatabaseURL.parse("postgresql://bob@db.example/other").index_path(tmp_path) != cache
    for bad, msg in [
        ("mysql://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("postgresql://u@h", "must name a database"),
        ("sqlite://", "needs a file"),
    ]:
        with pytest.raises(errors.InvalidInputError, match=msg):
            DatabaseURL.parse(bad)


def _one_line_error(result, contains):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines


def _tables(url):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(
                conn.scalars(text("select tablename from pg_tables where schemaname = 'public'"))
            )
    finally:
        engine.dispose()


def test_read_only_commands_on_a_database_without_schema_create_nothing(pg_url):
    secret = pg_url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    for args in (["list"], ["info"], ["identify", "x.wav"], ["export", "out"]):
        r = runner.invoke(app, [*args, "--db", secret])
        _one_line_error(r, "no registry at postgresql+psycopg://postgres:***@127.0.0.1")
        assert "hunter2" not in r.output
    assert _tables(pg_url) == set()  # nothing was created


def test_unreachable_server_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens
    r = runner.invoke(app, ["list", "--db", f"postgresql://u:pw@127.0.0.1:{port}/x"])
    _one_line_error(r, "cannot reach the registry database postgresql+psycopg://u:***@")


def test_schema_migrations_on_postgresql(pg_url):
    """The same Alembic migrations: types map, and an old schema upgrades with its data."""
    from speakerid.registry.database import upgrade
    from speakerid.registry.vectors import to_blob

    engine = create_engine(pg_url)
    upgrade(engine, "0001")
    vec = unit_rows(1)[0]
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into registry values (1, 'm', 'm', :sha, 192, 0.4, 'old', 3, "
                "'2026-01-01 00:00:00')"
            ),
            {"sha": "a" * 64},
        )
        conn.execute(
            text(
                "insert into speakers (name, voiceprint, created, updated) values "
                "('alice', :vp, '2026-01-01', '2026-01-01')"
            ),
            {"vp": to_blob(vec)},
        )
        conn.execute(
            text(
                "insert into utterances (speaker_id, embedding, created) "
                "select id, :vp, '2026-01-01' from speakers"
            ),
            {"vp": to_blob(vec)},
        )
    with SpeakerID(db=pg_url) as sid:
        assert [s.name for s in sid.list()] == ["alice"]
        assert sid.threshold() == (0.4, "old")
        assert sid.identify_embeddings(vec)[0].speaker == "alice"
        assert sid.info().backend == "postgresql" and sid.info().generation == 3
    with engine.connect() as conn:
        assert conn.scalar(text("select version_num from alembic_version")) == SCHEMA_REVISION
        types = dict(
            conn.execute(
                text(
                    "select table_name || '.' || column_name, data_type "
                    "from information_schema.columns where table_schema = 'public'"
                )
            ).all()
        )
        assert conn.scalar(text("select uid from registry")) is not None
    engine.dispose()
    assert types["speakers.voiceprint"] == "bytea" and types["utterances.embedding"] == "bytea"
    assert types["speakers.created"] == "timestamp without time zone"
    assert types["changes.seq"] == "bigint"


# --- change-log sync (both backends) -------------------------------------------------------
@pytest.fixture
def builds(monkeypatch):
    """Counts full index builds (rebuilds) in this process."""
    calls = []
    real = VectorIndex.build.__func__

    def spy(cls, *a, **kw):
        calls.append(1)
        return real(cls, *a, **kw)

    monkeypatch.setattr(VectorIndex, "build", classmethod(spy))
    return calls


def _statements(sid):
    seen = []
    event.listen(
        sid.registry.db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]), named=False
    )
    return seen


def test_replicas_follow_the_change_log_without_rebuilding(db_url, tiny_ckpt, builds):
    vecs = unit_rows(8, seed=31)
    with SpeakerID(db=db_url, model=tiny_ckpt) as a, SpeakerID(db=db_url) as b:
        a.import_embeddings(["s0", "s1", "s2"], vecs[:3])
        assert b.identify_embeddings(vecs[1])[0].speaker == "s1"
        base = len(builds)
        # an enrollment that returned on A is found on B, by applying the log (no rebuild)
        a.import_embeddings(["s3"], vecs[3:4])
        assert b.identify_embeddings(vecs[3])[0].speaker == "s3"
        a.remove("s0")
        top = b.registry.search(vecs[0][None], 5)[0]
        assert "s0" not in [c.speaker for c in top]
        a.import_embeddings(["s2"], vecs[4:5], append=True)
        vp = a.registry.voiceprint("s2")
        idx = b.registry.ensure_index()
        sid2 = a.registry.voiceprints_by_id([3])[3]
        assert sid2[0] == "s2" and np.allclose(idx.reconstruct(3), vp, atol=1e-6)
        assert idx.ntotal == 3 and idx.generation == a.registry.generation() == 4
        assert len(builds) == base
        # nothing new: one indexed query before the search
        seen = _statements(b)
        b.registry.ensure_index()
        assert len(seen) == 1 and "registry" in seen[0]
        assert b.check_index().ok


def test_gap_far_behind_or_another_registry_rebuilds(db_url, tiny_ckpt, builds, monkeypatch):
    vecs = unit_rows(12, seed=32)
    with SpeakerID(db=db_url, model=tiny_ckpt) as a, SpeakerID(db=db_url) as b:
        a.import_embeddings(["s0", "s1"], vecs[:2])
        b.registry.ensure_index()
        base = len(builds)
        a.import_embeddings(["s2"], vecs[2:3])
        a.import_embeddings(["s3"], vecs[3:4])
        with a.registry.db.write() as s:  # the log lost seq 2 (pruned): a gap
            s.execute(text("delete from changes where seq = 2"))
        assert b.identify_embeddings(vecs[2])[0].speaker == "s2"
        assert len(builds) == base + 1
        # too far behind: more pending changes than it is worth applying
        monkeypatch.setattr(cache_mod, "MIN_APPLY_LIMIT", 2)
        for i in range(4, 8):
            a.import_embeddings([f"s{i}"], vecs[i : i + 1])
        assert b.identify_embeddings(vecs[7])[0].speaker == "s7"
        assert len(builds) == base + 2
        # a different registry at the same generation (re-created database): not trusted
        with a.registry.db.write() as s:
            s.execute(text("update registry set uid = 'another'"))
        assert b.identify_embeddings(vecs[5])[0].speaker == "s5"
        assert len(builds) == base + 3 and b.registry.ensure_index().uid == "another"


def test_a_failed_write_logs_nothing(db_url, tiny_ckpt):
    vecs = unit_rows(3, seed=33)
    with SpeakerID(db=db_url, model=tiny_ckpt) as sid:
        sid.import_embeddings(["a"], vecs[:1])
        before = sid.registry.generation(), sid.registry.changes_since(0, 100)
        bad = [("b", [vecs[1]]), ("c", [np.ones(64, np.float32)])]
        from speakerid.registry.store import NewUtterance

        with pytest.raises(errors.InvalidInputError, match="has 64 dimensions"):
            sid.registry.enroll_many([(n, [NewUtterance(v) for v in vs]) for n, vs in bad])
        after = sid.registry.generation(), sid.registry.changes_since(0, 100)
        assert after[0] == before[0] and after[1].seqs == before[1].seqs == {1}
        assert [s.name for s in sid.list()] == ["a"]


def _analyzed_rows(db) -> float | None:
    """What the planner believes the speakers table holds (None: never analyzed)."""
    with db.engine.connect() as c:
        if db.backend == "postgresql":
            n = c.execute(text("select reltuples from pg_class where relname = 'speakers'"))
            n = n.scalar()
            return None if n < 0 else n
        if c.execute(text("select name from sqlite_master where name = 'sqlite_stat1'")).first():
            row = c.execute(text("select stat from sqlite_stat1 where tbl = 'speakers'")).first()
            return float(row[0].split()[0]) if row else None
        return None


def test_a_bulk_write_refreshes_the_planner_statistics(db_url, tiny_ckpt, monkeypatch, caplog):
    monkeypatch.setattr(database_mod, "BULK_ROWS", 4)
    vecs = unit_rows(7, seed=34)
    with SpeakerID(db=db_url, model=tiny_ckpt) as sid:
        sid.import_embeddings(["a", "b", "c"], vecs[:3])  # below the bulk size: left to autovacuum
        assert _analyzed_rows(sid.registry.db) is None
        with caplog.at_level("INFO", logger="speakerid"):
            sid.import_embeddings(["d", "e", "f", "g"], vecs[3:])
        assert _analyzed_rows(sid.registry.db) == 7
        sql = "VACUUM (ANALYZE)" if db_url.startswith("postgresql") else "ANALYZE"
        assert f"{sql} after a bulk write" in caplog.text
        assert [s.name for s in sid.list()] == list("abcdefg")


# --- PostgreSQL locking ----------------------------------------------------------------------
def test_writes_serialize_in_the_database_and_readers_never_wait(
    pg_url, tiny_ckpt, monkeypatch, tmp_path, isolated_home
):
    import psycopg

    vecs = unit_rows(3, seed=34)
    with SpeakerID(db=pg_url, model=tiny_ckpt) as sid:
        sid.import_embeddings(["a"], vecs[:1])
        other = psycopg.connect(pg_url.replace("+psycopg", ""))  # another writer, mid-write
        other.execute("select pg_advisory_xact_lock(%s)", (database_mod.ADVISORY_LOCK_KEY,))
        monkeypatch.setattr(database_mod, "LOCK_TIMEOUT_S", 0.5)
        t0 = time.monotonic()
        with pytest.raises(errors.RegistryLockedError, match="locked by another writer"):
            sid.import_embeddings(["b"], vecs[1:2])
        assert time.monotonic() - t0 >= 0.5
        # readers do not wait for the writer
        assert sid.identify_embeddings(vecs[0])[0].speaker == "a"
        assert [s.name for s in sid.list()] == ["a"]
        other.rollback()  # the other writer ends: the lock is free
        sid.import_embeddings(["b"], vecs[1:2])
        assert [s.name for s in sid.list()] == ["a", "b"]
        other.close()
    # never a local lock file (nor a file next to the URL)
    leftovers = [p for p in (*isolated_home.rglob("*"), *tmp_path.rglob("*")) if "lock" in p.name]
    assert leftovers == []


# --- three replicas ---------------------------------------------------------------------------
REPLICA = textwrap.dedent("""
    import json, sys, numpy as np
    from speakerid.errors import SpeakerIDError
    from speakerid.service.facade import SpeakerID
    def unit_rows(n, seed):  # as tests/conftest.py
        x = np.random.default_rng(seed).standard_normal((n, 192)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    with SpeakerID(db=sys.argv[1]) as sid:
        sid.registry.ensure_index()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            try:
                if req["op"] == "enroll":  # [name, seed, utterances]...: one transaction
                    names = [n for n, _, k in req["speakers"] for _ in range(k)]
                    vecs = np.concatenate([unit_rows(k, seed) for _, seed, k in req["speakers"]])
                    res = sid.import_embeddings(names, vecs)
                    out = {"ok": True, "speakers": [r.speaker for r in res]}
                elif req["op"] == "identify":
                    r = sid.identify_embeddings(np.asarray(req["vector"], np.float32))[0]
                    out = {"ok": True, "speaker": r.speaker, "score": r.score}
                else:
                    out = {"ok": True, "names": [s.name for s in sid.list()]}
            except SpeakerIDError as exc:
                out = {"ok": False, "error": str(exc)}
            print(json.dumps(out), flush=True)
""")


class Replica:
    """One API process on the shared database, answering JSON lines over a pipe."""

    def __init__(self, db: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REPLICA, db],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}, self.proc.stderr.read()

    def send(self, req: dict) -> None:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def call(self, req: dict) -> dict:
        with self.lock:
            self.send(req)
            line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()[-2000:]
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _speaker(name: str, seed: int, utts: int = 2):
    """A request item (the replica derives the vectors from the seed) and the probe: the
    speaker's voiceprint."""
    vecs = unit_rows(utts, seed=seed)
    probe = vecs.mean(0) / np.linalg.norm(vecs.mean(0))
    return [name, seed, utts], probe.tolist()


@pytest.fixture
def shared_pg(pg_url, tiny_ckpt):
    with SpeakerID(db=pg_url, model=tiny_ckpt) as sid:  # bound once: replicas need no model
        sid.import_embeddings(["seed"], unit_rows(1, seed=999))
    return pg_url


def test_three_replicas_eight_clients_every_enrollment_visible_everywhere(shared_pg):
    replicas = [Replica(shared_pg) for _ in range(3)]
    failures: list[str] = []
    enrolled: dict[str, list] = {}

    def client(c: int) -> None:
        try:
            for i in range(5):
                name = f"client{c}-{i}"
                spk, probe = _speaker(name, seed=100 * c + i)
                out = replicas[(c + i) % 3].call({"op": "enroll", "speakers": [spk]})
                assert out == {"ok": True, "speakers": [name]}, out
                enrolled[name] = probe
                for k, rep in enumerate(replicas):  # visible on every replica at once
                    got = rep.call({"op": "identify", "vector": probe})
                    assert got["speaker"] == name, (name, k, got)
        except Exception as exc:  # reported below with the client's number
            failures.append(f"client {c}: {exc!r}")

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not failures, failures
        assert len(enrolled) == 40
        for rep in replicas:
            assert sorted(rep.call({"op": "list"})["names"]) == sorted([*enrolled, "seed"])
            for name, probe in enrolled.items():
                assert rep.call({"op": "identify", "vector": probe})["speaker"] == name
    finally:
        for rep in replicas:
            rep.close()
    with SpeakerID(db=shared_pg) as sid:
        assert sid.check_index().ok


def test_kill_9_of_a_replica_during_writes_loses_nothing_committed(shared_pg):
    """A replica writing batches (10 speakers x 4 utterances per transaction) is killed at
    random moments; acknowledged batches all survive, no batch is half there, and the other
    replicas see exactly what the database holds."""
    survivors = [Replica(shared_pg) for _ in range(2)]
    rng = random.Random(7)
    acked: set[str] = set()
    batch_of: dict[str, int] = {}
    seeds: dict[str, int] = {}
    batch = 0
    try:
        for _round in range(3):
            victim = Replica(shared_pg)
            sent: list[list[str]] = []
            for _ in range(300):  # queued writes: the replica works through them
                names = [f"b{batch}-{j}" for j in range(10)]
                spks = [[n, 10_000 + batch * 10 + j, 4] for j, n in enumerate(names)]
                for n, seed, _ in spks:
                    seeds[n], batch_of[n] = seed, batch
                victim.send({"op": "enroll", "speakers": spks})
                sent.append(names)
                batch += 1
            first = victim.proc.stdout.readline()  # writing has begun
            time.sleep(rng.uniform(0.05, 1.0))
            victim.proc.send_signal(signal.SIGKILL)
            out, _ = victim.proc.communicate()
            assert victim.proc.returncode == -signal.SIGKILL
            done = [json.loads(line) for line in [first, *out.splitlines()]]
            assert all(d["ok"] for d in done) and len(done) < len(sent)  # killed mid-way
            for d in done:
                acked.update(d["speakers"])
            names = set(survivors[0].call({"op": "list"})["names"]) - {"seed"}
            assert acked <= names  # nothing acknowledged is lost
            by_batch: dict[int, int] = {}
            for n in names:
                by_batch[batch_of[n]] = by_batch.get(batch_of[n], 0) + 1
            assert set(by_batch.values()) <= {10}  # whole batches only
            with SpeakerID(db=shared_pg) as sid:
                assert {s.utterances for s in sid.list() if s.name != "seed"} <= {4}
            for rep in survivors:
                for n in rng.sample(sorted(names), min(15, len(names))):
                    probe = _speaker(n, seeds[n], 4)[1]
                    assert rep.call({"op": "identify", "vector": probe})["speaker"] == n
        # the dead writer's lock died with its session: writing goes on at once
        spk, probe = _speaker("after", seed=5)
        assert survivors[1].call({"op": "enroll", "speakers": [spk]})["ok"]
        assert survivors[0].call({"op": "identify", "vector": probe})["speaker"] == "after"
    finally:
        for rep in survivors:
            rep.close()


# --- moving between backends -------------------------------------------------------------------
def _fill(db, tiny_ckpt):
    from speakerid.registry.store import NewUtterance

    vecs = unit_rows(7, seed=35)
    with SpeakerID(db=db, model=tiny_ckpt) as sid:
        sid.import_embeddings(["Zoë 张", "bob", "bob"], vecs[:3])
        sid.registry.enroll(
            "alice",
            [NewUtterance(vecs[3], "a1.wav", 2.5, "1" * 64), NewUtterance(vecs[4], "a2.wav", 3.0)],
            metadata={"team": "red"},
        )
        sid.import_embeddings(["alice"], vecs[5:6], append=True)
        sid.remove("bob")
        sid.import_embeddings(["carol", "bob"], vecs[5:7])
        sid.set_threshold(0.4321, "calibrated")
        return sid.registry.snapshot(), vecs


def test_registry_copy_sqlite_to_postgresql_and_back_is_identical(tmp_path, pg_url, tiny_ckpt):
    src = str(tmp_path / "src.db")
    (binding, records), vecs = _fill(src, tiny_ckpt)
    r = runner.invoke(app, ["registry", "copy", src, pg_url, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with SpeakerID(db=src) as s:
        checksum = s.registry.checksum()
    assert out == {
        "source": src,
        "destination": DatabaseURL.parse(pg_url).display,
        "source_backend": "sqlite",
        "destination_backend": "postgresql",
        "speakers": 4,
        "utterances": 6,
        "checksum": checksum,
    }
    info = json.loads(runner.invoke(app, ["info", "--db", pg_url, "--json"]).stdout)
    assert (info["backend"], info["speakers"], info["utterances"]) == ("postgresql", 4, 6)
    assert (info["threshold"], info["threshold_source"]) == (0.4321, "calibrated")
    with SpeakerID(db=src) as a, SpeakerID(db=pg_url) as b:
        assert [r.to_dict() for r in a.identify_embeddings(vecs, top_k=3)] == [
            r.to_dict() for r in b.identify_embeddings(vecs, top_k=3)
        ]
        assert b.check_index().ok
    back = tmp_path / "back.db"
    r = runner.invoke(app, ["registry", "copy", pg_url, str(back)])
    assert r.exit_code == 0 and f"checksum {checksum[:16]} verified" in r.stdout, r.output
    with SpeakerID(db=back) as c:
        b2, recs2 = c.registry.snapshot()
        assert c.info().backend == "sqlite"
    assert b2 == binding and len(recs2) == len(records)
    for x, y in zip(records, recs2):  # names, metadata, times, sources, hashes, vectors
        assert (x.name, x.metadata, x.created, x.updated) == (
            y.name,
            y.metadata,
            y.created,
            y.updated,
        )
        assert x.voiceprint.tobytes() == y.voiceprint.tobytes()
        assert [
            (u.source, u.duration, u.sha256, u.created, u.vector.tobytes()) for u in x.utterances
        ] == [(u.source, u.duration, u.sha256, u.created, u.vector.tobytes()) for u in y.utterances]


def test_registry_copy_refusals_write_nothing(tmp_path, pg_url, tiny_ckpt):
    src = str(tmp_path / "src.db")
    _fill(src, tiny_ckpt)
    missing = tmp_path / "missing.db"
    _one_line_error(
        runner.invoke(app, ["registry", "copy", str(missing), pg_url]), "no registry at"
    )
    assert _tables(pg_url) == set()
    _one_line_error(
        runner.invoke(app, ["registry", "copy", src, f"sqlite:///{src}"]), "the same registry"
    )
    assert runner.invoke(app, ["registry", "copy", src, pg_url]).exit_code == 0
    with SpeakerID(db=pg_url) as t:
        before = t.registry.checksum(), t.registry.counts(), t.registry.generation()
    _one_line_error(runner.invoke(app, ["registry", "copy", src, pg_url]), "already holds speakers")
    with SpeakerID(db=pg_url) as t:
        assert (t.registry.checksum(), t.registry.counts(), t.registry.generation()) == before


def test_registry_copy_that_does_not_read_back_identically_is_rolled_back(
    tmp_path, pg_url, tiny_ckpt, monkeypatch
):
    from speakerid.registry import store

    src = str(tmp_path / "src.db")
    _fill(src, tiny_ckpt)
    real = store.take_snapshot
    monkeypatch.setattr(store, "take_snapshot", lambda s: (lambda b, r: (b, r[:-1]))(*real(s)))
    _one_line_error(
        runner.invoke(app, ["registry", "copy", src, pg_url]), "does not read back identically"
    )
    monkeypatch.undo()
    with SpeakerID(db=pg_url) as t:
        assert t.registry.counts() == (0, 0) and t.registry.binding() is None


def test_speakerid_db_selects_the_registry_in_a_fresh_process(tmp_path, pg_url, tiny_ckpt):
    """How users configure it: ``SPEAKERID_DB`` (a relative SQLite URL or a server URL) in a
    fresh ``python -m speakerid`` with a clean home."""
    np.save(tmp_path / "m.npy", unit_rows(2, seed=36))
    (tmp_path / "names.txt").write_text("ann\nben\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    base.update(PYTHONPATH=str(ROOT), SPEAKERID_HOME="home", SPEAKERID_OFFLINE="1")

    def run(db, *args):
        env = {**base, "SPEAKERID_DB": db}
        cmd = [sys.executable, "-m", "speakerid", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    for db, backend in [("sqlite:///rel.db", "sqlite"), (pg_url, "postgresql")]:
        r = run(db, "import-embeddings", "m.npy", "--names", "names.txt", "--model", tiny_ckpt)
        assert r.returncode == 0, r.stderr
        r = run(db, "info", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert (info["backend"], info["speakers"], info["generation"]) == (backend, 2, 1)
    assert (tmp_path / "rel.db").is_file() and not (tmp_path / "home" / "registry.db").exists()
    assert list((tmp_path / "home" / "index").glob("*.index"))  # the server's local cache
