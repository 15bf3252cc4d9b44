"""Crash safety (real ``kill -9`` at random moments of real commands; a process that dies
between the database commit and the index save) and multi-process concurrency."""

from __future__ import annotations

import csv
import json
import os
import pty
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from speakerid.service.facade import SpeakerID

from .conftest import CLIPS, DATASETS, ROOT, TEST_MODEL, needs_asset, needs_dev_set, unit_rows

UTTS = 4

WRITER = textwrap.dedent(f"""
    import sys, numpy as np
    from speakerid.service.facade import SpeakerID
    db, model, prefix, start, count = sys.argv[1:6]
    rng = np.random.default_rng(int(start))
    with SpeakerID(db=db, model=model) as sid:
        for i in range(int(start), int(start) + int(count)):
            v = rng.standard_normal(({UTTS}, 192)).astype(np.float32)
            sid.import_embeddings([f"{{prefix}}{{i}}"] * {UTTS}, v)
            print(i, flush=True)
""")

READER = textwrap.dedent("""
    import sys, time, numpy as np
    from speakerid.service.facade import SpeakerID
    db, seconds = sys.argv[1], float(sys.argv[2])
    q = np.random.default_rng(0).standard_normal((1, 192)).astype(np.float32)
    n, end = 0, time.time() + seconds
    with SpeakerID(db=db) as sid:
        while time.time() < end:
            if sid.registry.counts()[0]:
                res = sid.identify_embeddings(q, top_k=3)[0]
                assert res.candidates, "no candidates"
                n += 1
    print(n)
""")


def _spawn(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_consistent(db, model) -> set[str]:
    with SpeakerID(db=db, model=model) as sid:
        names = {s.name: s.utterances for s in sid.list()}
        assert all(n == UTTS for n in names.values()), names  # all or nothing per enrollment
        if names:
            sid.registry.ensure_index()  # the automatic rebuild, if the crash needed one
            report = sid.check_index()
            assert report.ok, report.problems
            assert report.entries == len(names)
            for name in random.Random(0).sample(sorted(names), min(3, len(names))):
                vp = sid.registry.voiceprint(name)
                assert sid.identify_embeddings(vp)[0].speaker == name
        return set(names)


def test_kill_9_during_a_stream_of_import_commits_never_corrupts(db_url, tiny_ckpt):
    """The storage layer on both backends: a writer that does nothing but commit speakers of
    random vectors (``import_embeddings``, one transaction and index save after another),
    killed at random times. Enrolling real audio through the CLI is killed in
    ``test_kill_9_of_enroll_dir_*`` below."""
    db = db_url
    rounds = 12 if "://" not in db else 8  # the same code path; fewer rounds on the server
    with SpeakerID(db=db, model=tiny_ckpt) as sid:  # bind once so workers start fast
        sid.import_embeddings(["seed"] * UTTS, unit_rows(UTTS))
    rng = random.Random(1234)
    seen: set[str] = set()
    start = 0
    kills = 0
    for _round in range(rounds):
        proc = _spawn(WRITER, db, tiny_ckpt, "w", start, 1000)
        time.sleep(rng.uniform(0.4, 2.0))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        kills += proc.returncode == -signal.SIGKILL
        done = [int(x) for x in out.split()]
        start = (done[-1] + 1 if done else start) + 1
        names = _assert_consistent(db, tiny_ckpt)
        assert seen <= names  # committed enrollments are never lost
        seen = names
    assert kills >= rounds - 2
    assert len(seen) > 5


def test_concurrent_writers_and_readers(db_url, tiny_ckpt):
    db = db_url
    with SpeakerID(db=db, model=tiny_ckpt) as sid:
        sid.import_embeddings(["seed"] * UTTS, unit_rows(UTTS))
    writers = [_spawn(WRITER, db, tiny_ckpt, f"p{k}-", k * 100, 15) for k in range(3)]
    readers = [_spawn(READER, db, 6) for _ in range(2)]
    for p in writers + readers:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    names = _assert_consistent(db, tiny_ckpt)
    assert names == {"seed"} | {f"p{k}-{k * 100 + i}" for k in range(3) for i in range(15)}


#: Searches (its index now in memory), writes speaker "b" and dies in the index save that
#: follows the commit: SIGKILL at the cache file's fsync, its temporary file written but not
#: yet renamed over the index (the library's own cleanup, a ``finally``, never runs: as in a
#: power cut or an OOM kill).
DIE_IN_INDEX_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from speakerid.service.facade import SpeakerID
    db, kind, vectors = sys.argv[1:4]
    a, b = np.load(vectors)
    with SpeakerID(db=db, index_kind=kind) as sid:
        assert sid.identify_embeddings(a)[0].speaker == "a"
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        sid.import_embeddings(["b"], b[None])
    print("survived")
""")


@pytest.mark.parametrize("kind", ["flat", "pq", "hnsw"])
def test_index_survives_a_kill_between_commit_and_save(tmp_path, tiny_ckpt, kind):
    """A process killed after the database commit, in the middle of saving the index: the
    next process finds the index file behind the database and brings it up to date."""
    db = tmp_path / "gap.db"
    vecs = unit_rows(3, seed=4)
    with SpeakerID(db=db, model=tiny_ckpt, index_kind=kind) as sid:
        sid.import_embeddings(["a"], vecs[:1])
    np.save(tmp_path / "ab.npy", vecs[:2])
    proc = _spawn(DIE_IN_INDEX_SAVE, db, kind, tmp_path / "ab.npy")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and "survived" not in out, err[-2000:]
    assert _stored(db) == {"a": 1, "b": 1}  # committed before the kill
    assert list(tmp_path.glob(".gap.db.index.*.tmp"))  # killed mid-save: its temp file is left
    with SpeakerID(db=db, index_kind=kind) as sid:
        assert not sid.check_index().ok  # generation behind the database
        assert sid.identify_embeddings(vecs[1])[0].speaker == "b"
        assert sid.check_index().ok
        np.testing.assert_allclose(sid.registry.voiceprint("b"), vecs[1], atol=1e-6)


# --- kill -9 of the real CLI while it enrolls audio -------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class _Watched:
    """``speakerid ARGS`` in a fresh process as a user runs it: its stderr on a terminal (a
    pty), so it draws its progress bar, which a thread reads (``progress``: files done)."""

    def __init__(self, cwd: Path, env: dict, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speakerid", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        self.progress, self.screen = 0, b""
        self._reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 4096):
                self.screen += chunk
                done = re.findall(rb"(\d+)/\d+", ANSI.sub(b"", chunk))
                if done:
                    self.progress = max(self.progress, int(done[-1]))
        except OSError:  # the child closed the terminal
            pass
        finally:
            os.close(fd)

    def kill(self) -> bool:
        """SIGKILL; whether it landed (the process was still running)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return self.proc.returncode == -signal.SIGKILL


def _user_env(tmp_path: Path) -> dict:
    """The environment a user sets (relative paths from the working directory); the machine
    settings of the run (threads, the ONNX export cache) are kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    env.update(
        SPEAKERID_MODEL=os.path.relpath(TEST_MODEL, tmp_path),
        SPEAKERID_DB="voices.db",
        SPEAKERID_HOME="home",
        SPEAKERID_OFFLINE="1",
        SPEAKERID_THREADS=os.environ.get("SPEAKERID_THREADS", "1"),
        SPEAKERID_CACHE=os.environ["SPEAKERID_CACHE"],
        TERM="xterm",
    )
    return env


def _stored(db: Path) -> dict[str, int]:
    """{speaker: utterances} as committed, read straight from the SQLite file (read-only)."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute(
                "SELECT s.name, COUNT(u.id) FROM speakers s"
                " LEFT JOIN utterances u ON u.speaker_id = s.id GROUP BY s.name"
            ).fetchall()
    except sqlite3.OperationalError as exc:  # created, not yet given its tables
        if "no such table" in str(exc) or "unable to open" in str(exc):
            return {}
        raise
    return dict(rows)


def _kill_enroll_dir(
    tmp_path: Path, env: dict, moment: str, rng: random.Random, *options: str
) -> dict:
    """One ``speakerid enroll-dir people --append`` killed at ``moment``: ``embedding`` (after
    it reported a random number of the files still to embed, before its commit), ``commit``
    (right after its transaction is visible) or ``anytime`` (a random delay from the start)."""
    db, people = tmp_path / "voices.db", tmp_path / "people"
    before = _stored(db)
    files = {d.name: len(list(d.iterdir())) for d in people.iterdir()}
    done, total = sum(files[n] for n in before), sum(files.values())
    run = _Watched(tmp_path, env, "enroll-dir", "people", "--append", *options)
    deadline = time.monotonic() + 240
    if moment == "embedding":
        target = rng.randint(done + 1, total - 2)
        while run.progress < target and run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))
    elif moment == "commit":
        while _stored(db) == before and run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))
    else:
        time.sleep(rng.uniform(0.5, 4.0))
    progress = run.progress
    landed = run.kill()
    after = _stored(db)
    # all or nothing: the whole enroll-dir (every pending speaker, every file) or none of it
    assert after in (before, files), (moment, before, after, run.screen[-400:])
    for name, n in after.items():
        assert n == files[name], (name, n, files[name])
    return {
        "landed": landed,
        "committed": after != before,
        "progressed": progress > done,
        "moment": moment,
    }


def _check_in_process(db: Path, speakers: dict[str, int]) -> None:
    with SpeakerID(db=db) as sid:
        assert {s.name: s.utterances for s in sid.list()} == speakers
        if speakers:
            sid.registry.ensure_index()  # the automatic rebuild, if the kill needed one
            report = sid.check_index()
            assert report.ok and report.entries == len(speakers), report.problems
            for name in speakers:
                assert sid.identify_embeddings(sid.registry.voiceprint(name))[0].speaker == name


def _check_with_the_cli(tmp_path: Path, env: dict, probes: dict[str, Path]) -> None:
    """What a user runs after the crash: identify (it repairs a stale index), index check,
    info and list, each in a fresh process."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "speakerid", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    names = sorted(probes)
    out = cli("identify", *(str(probes[n]) for n in names), "--json")
    assert out.returncode == 0, out.stderr
    assert [r["speaker"] for r in json.loads(out.stdout)] == names
    out = cli("index", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    out = cli("info", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["speakers"] == len(probes)
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    want = {n: len(list((tmp_path / "people" / n).iterdir())) for n in names}
    assert {r["name"]: r["utterances"] for r in json.loads(out.stdout)} == want


def _demo_clips(speaker: str) -> tuple[list[Path], Path]:
    """A data/clips speaker's enrollment clips and its probe clip (data/clips/manifest.csv)."""
    with open(CLIPS / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] == speaker]
    enroll = [CLIPS / r["path"] for r in rows if r["role"] == "enroll"]
    return enroll, next(CLIPS / r["path"] for r in rows if r["role"] == "probe")


@needs_asset
def test_kill_9_of_enroll_dir_mid_embedding_and_after_commit(tmp_path):
    """``speakerid enroll-dir`` of real recordings (the real-voice asset, SPEAKERID_MODEL and
    SPEAKERID_DB relative to the working directory) killed twice: right after its commit
    becomes visible (the index still to update), then, with two more speakers in the folder,
    after it reported embedding some of their files. Each time the registry holds whole
    enrollments only, and every command works afterwards."""
    env, rng, probes = _user_env(tmp_path), random.Random(7), {}
    for batch, moment in ((["so0003", "so0044"], "commit"), (["so0092", "so0094"], "embedding")):
        for name in batch:
            enroll, probe = _demo_clips(name)
            (tmp_path / "people" / name).mkdir(parents=True)
            for clip in enroll:
                shutil.copy(clip, tmp_path / "people" / name / clip.name)
            probes[name] = probe
        got = _kill_enroll_dir(tmp_path, env, moment, rng)
        assert got["landed"] and got["progressed"], got  # a kill, not a run that had finished
        assert got["committed"] == (moment == "commit"), got
        _check_in_process(tmp_path / "voices.db", _stored(tmp_path / "voices.db"))
    enrolled = {n: probes[n] for n in ("so0003", "so0044")}
    assert set(_stored(tmp_path / "voices.db")) == set(enrolled)
    _check_with_the_cli(tmp_path, env, enrolled)


@pytest.mark.slow
@needs_dev_set
def test_kill_9_of_enroll_dir_at_random_moments(tmp_path):
    """Eight rounds of ``speakerid enroll-dir people --append --force``, each after three more
    dev-set speakers (4 recordings each) were added to the folder, each killed at a moment drawn
    at random: after a random share of its files was embedded, right after its commit, or at
    a random time from its start (loading, checking, embedding, writing). A killed run's
    speakers are enrolled by the next run. Over the loop, kills landed both before and after
    a commit, and the registry never held a partial enrollment. (``--force``: each speaker's
    4 longest recordings are enrolled whatever the speech gates say, so complete means 4.)"""
    dev = DATASETS / "speechocean762-dev"
    by_spk: dict[str, list[tuple[float, Path]]] = {}
    with open(dev / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by_spk.setdefault(row["speaker"], []).append((-float(row["duration_s"]), row["path"]))
    longest = {n: [dev / p for _, p in sorted(rows)[:4]] for n, rows in by_spk.items()}
    names = sorted(longest)[:24]
    env, rng, outcomes = _user_env(tmp_path), random.Random(2024), []
    for r in range(8):
        for name in names[3 * r : 3 * r + 3]:
            (tmp_path / "people" / name).mkdir(parents=True)
            for clip in longest[name]:
                shutil.copy(clip, tmp_path / "people" / name / clip.name)
        moment = rng.choice(["embedding", "commit", "anytime"])
        outcomes.append(_kill_enroll_dir(tmp_path, env, moment, rng, "--force"))
        _check_in_process(tmp_path / "voices.db", _stored(tmp_path / "voices.db"))
    landed = [o for o in outcomes if o["landed"]]
    assert len(landed) >= 6, outcomes
    assert any(o["committed"] for o in landed), outcomes  # killed after its commit
    assert any(o["progressed"] and not o["committed"] for o in landed), outcomes  # mid-way
    stored = _stored(tmp_path / "voices.db")
    assert stored, outcomes
    probes = {n: Path("people", n, longest[n][0].name) for n in stored}  # enrolled recordings
    _check_with_the_cli(tmp_path, env, probes)
