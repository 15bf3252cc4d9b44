"""One compute path in the server, and callers that never wait forever (issue 20).

The server runs in this process (real uvicorn on 127.0.0.1, a free port) so that the test can
see its threads: which thread runs the network's trunk for the multi-speaker guard's window
pass and for ``/v1/track``, how many native (OpenMP / ONNX Runtime) threads the process holds
before and after 16 concurrent clients, and what callers get when the embedding worker dies.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from speakerid.audio.decode import AudioClip, load_audio
from speakerid.audio.vad import speech_segments
from speakerid.embedding import windows
from speakerid.embedding.embedder import Embedder, Embedding
from speakerid.errors import EmbedderUnavailableError, LimitExceededError
from speakerid.server.batching import BatchingEmbedder

from .serverkit import clips, problem

SR = 16000
WORKER = "speakerid-embed"


def long_probe(speaker: str, n: int = 3) -> bytes:
    """``n`` clips of one speaker back to back (each 2.3-3.5 s of speech): >= 4 s of speech,
    so the guard's window pass runs."""
    x = np.concatenate([load_audio(p).samples for p in clips(speaker)[:n]])
    buf = io.BytesIO()
    sf.write(buf, x, SR, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def native_minus_python_threads() -> int:
    """Threads of this process that Python did not start: OpenMP teams, ONNX Runtime pools."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


@contextlib.contextmanager
def served(tmp: Path, **settings) -> Iterator[tuple[str, object]]:
    """A started ``ServerState`` behind a real uvicorn on 127.0.0.1 (port chosen by the
    kernel), in this process -> (url, state)."""
    import uvicorn

    from speakerid.server.app import ServerState, create_app
    from speakerid.server.runner import bind
    from speakerid.server.settings import ServerSettings

    state = ServerState(ServerSettings(db=str(tmp / "registry.db"), model="demo", **settings))
    state.start()
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(state=state), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", state
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture
def trunk_threads(monkeypatch) -> list[str]:
    """Names of the threads that ran the network's trunk for window embeddings."""
    seen: list[str] = []
    frames = windows.FrameEmbedder.frames

    def recording(self, samples, mean=None):
        seen.append(threading.current_thread().name)
        return frames(self, samples, mean)

    monkeypatch.setattr(windows.FrameEmbedder, "frames", recording)
    return seen


@pytest.fixture
def torch_threads():
    """Restore this process's torch thread count after a test that sets its own."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def wav_file(data: bytes, name: str = "long.wav") -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (name, data, "audio/wav"))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_guard_and_track_run_on_the_embedding_worker(
    backend, tmp_path, monkeypatch, trunk_threads, torch_threads
):
    """Every route that embeds a >= 4 s recording runs its window pass on the worker thread."""
    monkeypatch.setenv("SPEAKERID_BACKEND", backend)
    alice, bob = long_probe("so0003"), long_probe("so0092")
    with served(tmp_path) as (url, _state), httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/v1/speakers/alice/enrollments", files=[wav_file(alice)])
        assert r.status_code == 201, r.text
        assert trunk_threads, "enrolling a >= 4 s recording ran no window pass"
        calls = {"enroll": len(trunk_threads)}
        for route, files in (
            ("/v1/identify", [wav_file(bob)]),
            ("/v1/verify", [("file", ("b.wav", bob, "audio/wav"))]),
            ("/v1/compare", [("file1", ("a.wav", alice)), ("file2", ("b.wav", bob))]),
            ("/v1/track", [("file", ("b.wav", bob, "audio/wav"))]),
        ):
            before = len(trunk_threads)
            r = c.post(route, files=files, data={"speaker": "alice"} if "verify" in route else None)
            assert r.status_code == 200, (route, r.text)
            calls[route] = len(trunk_threads) - before
    assert all(n > 0 for n in calls.values()), calls  # each route ran the window pass
    assert set(trunk_threads) == {WORKER}, sorted(set(trunk_threads))


def test_compute_threads_do_not_grow_with_concurrent_clients(
    tmp_path, monkeypatch, trunk_threads, torch_threads
):
    """PyTorch with 2 compute threads: an OpenMP team belongs to the thread that starts it,
    so a window pass run in each request's thread brings a team per request thread. Through
    the worker the process holds the same native threads after 16 concurrent clients as after
    one request."""
    monkeypatch.setenv("SPEAKERID_BACKEND", "torch")
    monkeypatch.setenv("SPEAKERID_THREADS", "2")
    probes = [long_probe(s) for s in ("so0003", "so0092", "so0094", "so0111")]
    with served(tmp_path) as (url, state), httpx.Client(base_url=url, timeout=120) as c:
        for name, data in zip(("a", "b"), probes):
            r = c.post(f"/v1/speakers/{name}/enrollments", files=[wav_file(data)])
            assert r.status_code == 201, r.text
        r = c.post("/v1/identify", files=[wav_file(probes[2])])
        assert r.status_code == 200, r.text
        time.sleep(0.5)
        before = native_minus_python_threads()
        statuses: list[int] = []
        start = threading.Barrier(16)

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as own:
                start.wait()
                for i in range(2):
                    data = probes[(k + i) % len(probes)]
                    statuses.append(own.post("/v1/identify", files=[wav_file(data)]).status_code)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        time.sleep(0.5)
        after = native_minus_python_threads()
        assert statuses == [200] * 32
    assert state.concurrency >= 4  # several requests really were in the service at once
    assert after <= before, (before, after)
    assert set(trunk_threads) == {WORKER}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_is_503_and_frees_the_slot(tmp_path):
    """The worker thread dies (an exception its ``try`` does not catch): the request that
    waited gets 503 problem+json, later ones 503 at once, and the one concurrency slot is
    free again (a request that needs no embedding is answered)."""
    with (
        served(tmp_path, concurrency=1) as (url, state),
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        inner = state.batcher._inner
        real = inner.embed_clips

        def die(clips, batch_size=None):
            if any("die" in c.source for c in clips):
                raise SystemExit("the worker thread dies here")
            return real(clips, batch_size)

        inner.embed_clips = die
        r = c.post("/v1/speakers/a/enrollments", files=[wav_file(long_probe("so0003"))])
        assert r.status_code == 201, r.text
        r = c.post("/v1/identify", files=[wav_file(long_probe("so0092", 1), "die.wav")])
        problem(r, 503, "EmbedderUnavailableError", "embedding worker has stopped")
        assert not state.batcher.alive
        for _ in range(3):
            t0 = time.monotonic()
            r = c.post("/v1/identify", files=[wav_file(long_probe("so0092", 1))])
            problem(r, 503, "EmbedderUnavailableError", "embedding worker has stopped")
            assert time.monotonic() - t0 < 5
        assert c.get("/v1/speakers").status_code == 200  # the slot was given back
        r = c.get("/readyz")
        assert r.status_code == 503 and "embedding worker" in r.text


# --- the BatchingEmbedder alone -----------------------------------------------------------------
def clip(name: str, seconds: float = 1.0) -> AudioClip:
    return AudioClip(np.zeros(int(seconds * SR), np.float32), name, SR, 1, name)


class GatedEmbedder:
    """Waits for ``gate`` in every call (the worker stays busy), then embeds, or raises
    ``SystemExit`` (which no ``except Exception`` catches) when ``die`` is set."""

    name, dim = "gated", 2

    def __init__(self, die: bool = False) -> None:
        self.gate = threading.Event()
        self.die = die
        self.seen: list[list[str]] = []

    def embed_clips(self, clips, batch_size=None):
        self.seen.append([c.source for c in clips])
        self.gate.wait(10)
        if self.die:
            raise SystemExit("the worker dies")
        return [Embedding(np.ones(2, np.float32), "gated", c.source, 1.0, "") for c in clips]


def test_callers_wait_at_most_the_deadline_and_abandoned_jobs_are_not_computed():
    inner = GatedEmbedder()
    b = BatchingEmbedder(inner, max_wait=0, timeout=0.3)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(b.embed_clips, [clip("first")])
        time.sleep(0.1)  # the worker is busy with "first"
        t0 = time.monotonic()
        with pytest.raises(EmbedderUnavailableError, match=r"no embedding within 0.3 s"):
            b.embed_clips([clip("second")])
        assert 0.3 <= time.monotonic() - t0 < 1.0
        with pytest.raises(EmbedderUnavailableError, match="within 0.3 s"):
            first.result(5)
    inner.gate.set()
    assert b.embed_clips([clip("third")])[0].source == "third"  # the worker goes on
    b.close(5)
    assert inner.seen == [["first"], ["third"]]  # "second" was dropped unqueued, not computed
    t0 = time.monotonic()
    with pytest.raises(EmbedderUnavailableError, match="shutting down"):
        b.embed_clips([clip("after close")])  # at once, not after the deadline
    assert time.monotonic() - t0 < 0.1 and not b.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_every_caller_of_a_worker_that_dies_is_answered_at_once():
    """The worker dies outside its ``try`` with four requests waiting (one in its hands,
    three queued): each gets ``EmbedderUnavailableError`` without waiting for its deadline."""
    inner = GatedEmbedder(die=True)
    b = BatchingEmbedder(inner, max_batch=1, max_wait=0, timeout=60)
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(b.embed_clips, [clip(f"r{i}")]) for i in range(4)]
        time.sleep(0.2)
        assert inner.seen == [["r0"]] and b.alive
        t0 = time.monotonic()
        inner.gate.set()
        for f in waiting:
            with pytest.raises(EmbedderUnavailableError, match="embedding worker has stopped"):
                f.result(5)
        assert time.monotonic() - t0 < 0.5  # not the 60 s deadline, not even one poll
    b.close(5)  # joins the dead thread (its exception is reported within this test)
    assert not b.alive
    with pytest.raises(EmbedderUnavailableError, match="has stopped"):
        b.embed_many([clip("later")])


def test_the_wrapper_lends_identity_never_compute():
    """What falls through ``__getattr__`` is the embedder's identity and settings; its
    network and methods are refused, so the window pass cannot bypass the worker again."""
    emb = Embedder("demo")
    b = BatchingEmbedder(emb, max_seconds=20.0)
    assert (b.name, b.dim, b.sha256, b.backend) == (emb.name, emb.dim, emb.sha256, emb.backend)
    for name in ("model", "config", "frame_network", "embed_features", "numerics", "_forward"):
        with pytest.raises(AttributeError, match=f"does not lend the embedder's.*{name}"):
            getattr(b, name)
    with pytest.raises(AttributeError):
        windows.FrameEmbedder(b)  # the old way in: refused
    assert isinstance(windows.window_embedder(emb), windows.FrameEmbedder)  # CLI: in-thread

    x = np.concatenate([load_audio(p).samples for p in clips("so0003")[:3]])
    speech = speech_segments(x)
    long = AudioClip(x, "long.wav", SR, 1, "")
    here = windows.FrameEmbedder(emb).embed_clip(long, speech)
    names: list[str] = []
    real = windows.FrameEmbedder.embed_clip

    def record(self, *args):
        names.append(threading.current_thread().name)
        return real(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(windows.FrameEmbedder, "embed_clip", record)
        there = windows.window_embedder(b).embed_clip(long, speech)
    assert names == ["speakerid-embed"]
    np.testing.assert_array_equal(here[0].vector, there[0].vector)  # same network, same code
    np.testing.assert_array_equal(here[1], there[1])
    np.testing.assert_array_equal(here[2], there[2])
    too_long = AudioClip(np.tile(x, 3)[: 21 * SR], "too-long.wav", SR, 1, "")
    with pytest.raises(LimitExceededError, match="too-long.wav"):
        windows.window_embedder(b).embed_clip(too_long, speech)  # the server's limit applies
    b.close(5)


def test_window_passes_run_under_the_embedders_numerics():
    """PyTorch: the trunk and the embedding layer of a window pass run inside the embedder's
    own precision context (bf16 autocast, TF32 on or off on CUDA), as its forward does."""
    emb = Embedder("demo", backend="torch")
    entered: list[str] = []
    real = emb.numerics

    @contextlib.contextmanager
    def numerics():
        entered.append(threading.current_thread().name)
        with real():
            yield

    emb.numerics = numerics
    x = np.concatenate([load_audio(p).samples for p in clips("so0003")[:3]])
    _, vectors, _ = windows.FrameEmbedder(emb).embed_clip(
        AudioClip(x, "long.wav", SR, 1, ""), speech_segments(x)
    )
    assert len(vectors) >= 4
    assert len(entered) == 3  # the trunk, the whole clip's projection, the windows'


def test_the_embedding_deadline_is_a_serve_option():
    from typer.testing import CliRunner

    from speakerid.cli import app
    from speakerid.server.settings import ServerSettings

    assert ServerSettings().embed_timeout == 120.0
    res = CliRunner().invoke(app, ["serve", "--embed-timeout", "0", "--port", "0"])
    assert res.exit_code == 2 and "the embedding timeout must be positive" in res.output
