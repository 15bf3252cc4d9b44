"""Three real ``speakerid serve`` replicas (uvicorn processes) on one PostgreSQL database.

Real speech through the HTTP client: eight concurrent clients enroll through all three replicas
and identify through all three right after each enrollment returned; ``kill -9`` of a replica
during a stream of enrollments loses nothing acknowledged and leaves nothing half-written, and
the survivors and the restarted replica see exactly the registry the database holds.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import soundfile as sf
from sqlalchemy import create_engine, text

from speakerid.audio.decode import load_audio
from speakerid.client import Client
from speakerid.errors import ServerError

from .serverkit import CLIPS, Server

#: Every real clip in the repository (7 speakers, 25 clips, 3-4.5 s each).
ALL_CLIPS = sorted(CLIPS.glob("*/*.opus"))
#: Speakers with 4 clips: the kill stream enrolls two of one speaker's clips per name.
FOUR = sorted({p.parent.name for p in ALL_CLIPS if len(list(p.parent.glob("*.opus"))) == 4})


def start_replicas(stack: ExitStack, tmp: Path, url: str, n: int = 3) -> list[Server]:
    """``n`` serve processes on ``url``, each with its own home (its own index cache); the
    run's ONNX export cache is shared, so the model is exported once."""
    cache = {"SPEAKERID_CACHE": os.environ["SPEAKERID_CACHE"]}
    servers = [Server(tmp / f"replica{k}", db=url, env=cache) for k in range(n)]
    for s in servers:
        s.workdir.mkdir()
        stack.callback(s.stop)
    servers[0].start()  # creates the schema and binds the model (the others check it)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda s: s.start(), servers[1:]))
    return servers


def recordings(folder: Path, k: int) -> list[Path]:
    """Two real recordings of one speaker, as WAV files whose bytes no other call returns (a
    gain of its own): the registry refuses audio already enrolled for another name."""
    speaker = FOUR[k % len(FOUR)]
    folder.mkdir()
    out = []
    for j, clip in enumerate(sorted((CLIPS / speaker).glob("*.opus"))[k % 3 :][:2]):
        path = folder / f"{j}.wav"
        sf.write(path, load_audio(clip).samples * (0.3 + 0.005 * k), 16000, subtype="PCM_16")
        out.append(path)
    return out


def stored(url: str) -> dict[str, int]:
    """Utterances per speaker as the database holds them, after checking that every write is
    whole: each speaker has utterances and the voiceprint of exactly those, one change-log
    entry (each name was written once), and the log ends at the registry's generation."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            gen, dim = c.execute(text("SELECT generation, dim FROM registry")).one()
            speakers = c.execute(text("SELECT id, name, voiceprint FROM speakers")).all()
            utts = c.execute(text("SELECT speaker_id, embedding FROM utterances")).all()
            changes = c.execute(text("SELECT seq, speaker_id, op FROM changes")).all()
    finally:
        engine.dispose()
    embs: dict[int, list[np.ndarray]] = defaultdict(list)
    for sid, emb in utts:
        embs[sid].append(np.frombuffer(emb, "<f4"))
    for sid, name, vp in speakers:
        assert embs[sid], f"{name} has no utterances"
        assert vp is not None and len(vp) == 4 * dim, name
        mean = np.mean(embs[sid], axis=0)
        np.testing.assert_allclose(
            np.frombuffer(vp, "<f4"), mean / np.linalg.norm(mean), atol=1e-5, err_msg=name
        )
    assert set(embs) <= {sid for sid, _, _ in speakers}
    assert sorted(sid for _, sid, _ in changes) == sorted(sid for sid, _, _ in speakers)
    assert {op for _, _, op in changes} <= {"u"}
    seqs = sorted(seq for seq, _, _ in changes)
    assert seqs == list(range(1, gen + 1)), (seqs, gen)  # one write per name, no gap
    return {name: len(embs[sid]) for sid, name, _ in speakers}


def seen_by(server: Server, probe: Path) -> dict[str, int]:
    """What a replica serves: its list (utterance counts) and its index, whose top-100 search
    returns every speaker it holds (flat index, exactly re-scored against the database)."""
    with Client(server.url) as c:
        listed = {s.name: s.utterances for s in c.list()}
        found = {k.speaker for k in c.identify(probe, top_k=100).candidates}
    assert found == set(listed), (server.url, sorted(found ^ set(listed)))
    return listed


def test_three_serve_replicas_eight_clients_see_every_enrollment_at_once(pg_url, tmp_path):
    with ExitStack() as stack:
        servers = start_replicas(stack, tmp_path, pg_url)
        failures: list[str] = []
        enrolled: dict[str, Path] = {}

        def client(c: int) -> None:
            try:
                with ExitStack() as mine:
                    clients = [mine.enter_context(Client(s.url)) for s in servers]
                    for i in range(2):
                        name, clip = f"client{c}-{i}", ALL_CLIPS[2 * c + i]
                        got = clients[(c + i) % 3].enroll(name, [clip])
                        assert (got.speaker, got.created, got.added) == (name, True, 1), got
                        enrolled[name] = clip
                        for k, other in enumerate(clients):  # every replica, at once
                            top = other.identify(clip).candidates[0]
                            assert top.speaker == name and top.score > 0.999, (name, k, top)
            except Exception as exc:  # reported below with the client's number
                failures.append(f"client {c}: {exc!r}")

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not failures, failures
        assert len(enrolled) == 16  # nothing lost
        want = {name: 1 for name in enrolled}
        assert stored(pg_url) == want
        for s in servers:
            assert seen_by(s, ALL_CLIPS[-1]) == want


def test_kill_9_of_a_serve_replica_mid_stream_loses_nothing_acknowledged(pg_url, tmp_path):
    """Three clients stream two-utterance enrollments through the victim and one through a
    survivor; the victim is killed while they write. Every 2xx enrollment is stored whole,
    nothing is half there, and all three replicas (the victim restarted) serve the same
    registry as the database."""
    with ExitStack() as stack:
        servers = start_replicas(stack, tmp_path, pg_url)
        victim = servers[2]
        acked: dict[str, int] = {}
        sent: set[str] = set()
        errors: list[str] = []

        def stream(t: int, server: Server, count: int) -> None:
            with Client(server.url, timeout=60) as c:
                for i in range(count):
                    name = f"{'vvvs'[t]}{t}-{i}"
                    sent.add(name)
                    files = recordings(tmp_path / name, t * 30 + i)
                    try:
                        got = c.enroll(name, files)
                    except ServerError as exc:  # the victim died under this request
                        errors.append(f"{name}: {exc}")
                        return
                    assert (got.speaker, got.added, got.utterances) == (name, 2, 2), got
                    acked[name] = 2

        threads = [threading.Thread(target=stream, args=(t, victim, 25)) for t in range(3)]
        threads.append(threading.Thread(target=stream, args=(3, servers[0], 6)))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while sum(n.startswith("v") for n in acked) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.15)  # mid-stream: requests are being embedded or committed
        victim.proc.kill()
        assert victim.proc.wait(30) == -9
        for t in threads:
            t.join(timeout=240)
        assert errors and all(e.startswith("v") for e in errors), errors  # killed mid-way
        assert len(errors) == 3 and sum(n.startswith("v") for n in acked) < 75
        assert sum(n.startswith("s") for n in acked) == 6  # the survivor never stopped

        held = stored(pg_url)  # whole writes only
        assert set(acked) <= set(held) <= sent  # nothing acknowledged is lost
        assert set(held.values()) == {2}
        victim.start()  # restarted on its old home: its cache file, then the change log
        for s in servers:
            assert seen_by(s, ALL_CLIPS[-1]) == held
        # the dead session's advisory lock died with it: writes go on and are seen at once
        with Client(servers[1].url) as c:
            assert c.enroll("after", [ALL_CLIPS[-1]]).added == 1
        for s in (servers[0], victim):
            with Client(s.url) as c:
                top = c.identify(ALL_CLIPS[-1]).candidates[0]
            assert top.speaker == "after" and top.score > 0.999
        assert stored(pg_url) == {**held, "after": 1}
