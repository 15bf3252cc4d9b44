"""``GET /v1/stream`` on a real ``speakerid serve`` (uvicorn on a free port) with the real-voice
asset: a two-person conversation streamed over the WebSocket gives the events, in order and in
the JSON of every front, whose final segments equal the in-process ``SpeakerID.stream``'s; any
sample rate; authentication as HTTP (header, ``bearer.KEY`` subprotocol, an open server's
Origin check) decided before the handshake is accepted; every protocol error's ``error`` event
and close code; a client that vanishes frees its stream; ``Client.stream`` and its typed errors.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from speakerid.audio.resample import resample
from speakerid.client import Client
from speakerid.errors import (
    AuthenticationError,
    InvalidInputError,
    InvalidSamplesError,
    LimitExceededError,
    NotReadyError,
    ServerError,
)
from speakerid.results import ReadyEvent, TurnEvent
from speakerid.server.settings import ServerSettings
from speakerid.service.facade import SpeakerID

from .budgets import SCORE_ATOL
from .conftest import CLIPS, TEST_MODEL, needs_asset
from .serverkit import Server

pytestmark = needs_asset
SR = 16000
A, B = "so0092", "so0111"  # two voices the asset tells apart on these clips (test_track_real)
NAMES = {A: "Alice", B: "Bob"}
MAX_STREAMS, MAX_SECONDS, IDLE = 3, 20, 3  # the open server's limits
TURN_KEYS = {"type", "start", "end", "speaker", "enrolled", "score"}


def clip(speaker: str, i: int) -> np.ndarray:
    x, rate = sf.read(sorted((CLIPS / speaker).glob("*.opus"))[i], dtype="float32")
    assert rate == SR
    return x


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def conversation(rate: int = SR) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Alice, Bob, Alice, Bob (clips 2 and 3, never the enrollment clips), 0.5 s apart, as
    int16 at ``rate``; the turns in seconds."""
    gap = np.zeros(SR // 2, np.float32)
    parts, turns, t = [], [], 0
    for spk, i in ((A, 2), (B, 2), (A, 3), (B, 3)):
        x = clip(spk, i)
        parts += [x, gap]
        turns.append((spk, t / SR, (t + len(x)) / SR))
        t += len(x) + len(gap)
    x = np.concatenate(parts)
    return pcm16(x if rate == SR else resample(x, SR, rate)), turns


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Alice and Bob enrolled (clips 0 and 1) in a registry bound to the asset."""
    work = tmp_path_factory.mktemp("streamdb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEAKERID_HOME", str(work / "home"))
        with SpeakerID(db=work / "reg.db", model=TEST_MODEL) as sid:
            for spk, name in NAMES.items():
                sid.enroll(name, [sorted((CLIPS / spk).glob("*.opus"))[i] for i in (0, 1)])
    return work / "reg.db"


@pytest.fixture(scope="module")
def reference(db):
    """The in-process stream's events for the conversation at a rate (fed in 1 s chunks)."""
    done: dict[int, list] = {}

    def events(rate: int) -> list:
        if rate not in done:
            x, _ = conversation(rate)
            with SpeakerID(db=db, model=TEST_MODEL) as sid:
                st = sid.stream(sample_rate=rate)
                out = [e for i in range(0, len(x), rate) for e in st.feed(x[i : i + rate])]
                done[rate] = out + st.close()
        return done[rate]

    return events


def _server(work, db, onnx_cache, *args: str) -> Server:
    for f in db.parent.glob(db.name + "*"):  # a registry of its own (keys close a server)
        if not f.name.endswith(".lock"):
            shutil.copy(f, work / f.name)
    return Server(
        work,
        *args,
        db=work / db.name,
        model=str(TEST_MODEL),
        env={"SPEAKERID_CACHE": str(onnx_cache)},
    )


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory, db, onnx_cache):
    """An open server (loopback, no keys) with small stream limits."""
    limits = ("--max-streams", str(MAX_STREAMS), "--max-stream-seconds", str(MAX_SECONDS))
    srv = _server(
        tmp_path_factory.mktemp("open"), db, onnx_cache, *limits, "--stream-idle-seconds", str(IDLE)
    )
    with srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, db, onnx_cache):
    """A server whose registry has a read key (created before it starts): (server, key)."""
    work = tmp_path_factory.mktemp("keyed")
    srv = _server(work, db, onnx_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEAKERID_HOME", str(work / "home"))
        with SpeakerID(db=srv.db) as sid:
            _, key = sid.api_keys(create=True).create("mic", "read")
    with srv:
        yield srv, key


def ws_url(srv: Server, query: str = "") -> str:
    return srv.url.replace("http://", "ws://") + "/v1/stream" + query


def drain(ws) -> tuple[list[dict], int, str]:
    """Every event until the server closes: (events, close code, reason)."""
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=60)))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, exc  # the server closed, with a code
        return events, exc.rcvd.code, exc.rcvd.reason


def metric(srv: Server, name: str, labels: str = "") -> float:
    text = httpx.get(srv.url + "/metrics").text
    m = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert m or labels, f"{name} not in /metrics"
    return float(m.group(1)) if m else 0.0  # a labelled series appears at its first value


def wait_closed(srv: Server, timeout: float = 15.0) -> None:
    """The open-streams gauge back at 0 (every stream's slot released)."""
    end = time.monotonic() + timeout
    while metric(srv, "speakerid_live_streams_open") != 0:
        assert time.monotonic() < end, "a stream was never released"
        time.sleep(0.1)


def segments(events) -> list:
    return [e for e in events if e.type == "segment"]


def check_events(events, turns, duration: float, rate: int, named=(0, 1, 2, 3)) -> None:
    """Ready first (once), then partials and segments: well-formed, segments sorted and
    disjoint, partials inside the turn after the last segment, a segment per turn, inside it,
    those ``named`` (indices) named rightly."""
    assert isinstance(events[0], ReadyEvent)
    assert events[0] == ReadyEvent(rate, "eres2netv2-m32-so762", 0.2222)
    last_end = 0.0
    for e in events[1:]:
        assert isinstance(e, TurnEvent) and e.type in ("partial", "segment"), e
        assert 0 <= e.start < e.end <= duration + 1e-3, e
        assert e.start >= last_end, e  # after (never across) the last final segment
        if e.speaker is None:  # too little speech to say yet: unscored, not enrolled
            assert e.type == "partial" and e.score is None and not e.enrolled, e
        else:
            assert e.enrolled == (e.speaker in NAMES.values()) and -1 <= e.score <= 1, e
        if e.type == "segment":
            last_end = e.end
    segs = segments(events)
    assert len(segs) == len(turns)
    for k, (s, (spk, a, b)) in enumerate(zip(segs, turns)):
        assert a - 0.05 <= s.start < s.end <= b + 0.05, (s, a, b)
        if k in named:
            assert s.speaker == NAMES[spk] and s.enrolled and s.score >= 0.2222, s


def same_segments(got, want) -> None:
    got, want = segments(got), segments(want)
    assert [s.speaker for s in got] == [s.speaker for s in want]
    for g, w in zip(got, want):
        assert abs(g.start - w.start) <= 1e-3 and abs(g.end - w.end) <= 1e-3, (g, w)
        assert g.enrolled == w.enrolled and g.score == pytest.approx(w.score, abs=SCORE_ATOL)


# --- the conversation ---------------------------------------------------------------------------
def test_client_stream_equals_the_in_process_stream(keyed, reference):
    """Client.stream (Authorization header) sends float chunks of odd sizes, one larger than
    1 s, as fast as it can; the events equal the in-process stream's and name both voices."""
    srv, key = keyed
    x, turns = conversation()
    floats = x.astype(np.float32) / 32768.0  # exactly the int16 the in-process stream gets
    sizes = [3001, 40000, 777]
    chunks, i = [], 0
    while i < len(floats):
        n = sizes[len(chunks) % 3]
        chunks.append(floats[i : i + n])
        i += n
    audio_before = metric(srv, "speakerid_live_audio_seconds_total")
    clips_before = metric(srv, "speakerid_clips_embedded_total")
    latency = "speakerid_live_event_latency_seconds_count"
    sent_before = {t: metric(srv, latency, f'{{type="{t}"}}') for t in ("partial", "segment")}
    with Client(srv.url, key=key) as c:
        events = list(c.stream(iter(chunks)))
    check_events(events, turns, len(x) / SR, SR)
    same_segments(events, reference(SR))
    assert metric(srv, "speakerid_live_audio_seconds_total") - audio_before == pytest.approx(
        len(x) / SR, abs=1e-6
    )
    # every named event's embedding went through the server's micro-batching worker
    named = sum(e.type != "ready" and e.score is not None for e in events)
    assert metric(srv, "speakerid_clips_embedded_total") - clips_before >= named > 4
    for t, before in sent_before.items():  # one latency per event sent (not for ready)
        assert metric(srv, latency, f'{{type="{t}"}}') - before == sum(e.type == t for e in events)
    wait_closed(srv)


def test_8khz_int16_over_the_raw_protocol(open_srv, reference):
    """The wire format itself at 8000 Hz: 1 s binary messages, {"type": "end"}, the JSON of
    every event, a normal close; the segments equal the in-process stream's at 8000 Hz."""
    rate = 8000
    x, turns = conversation(rate)
    with connect(ws_url(open_srv, f"?sample_rate={rate}")) as ws:
        assert ws.subprotocol is None
        for i in range(0, len(x), rate):
            ws.send(x[i : i + rate].astype("<i2").tobytes())
        ws.send(json.dumps({"type": "end"}))
        raw, code, reason = drain(ws)
    assert (code, reason) == (1000, "")
    assert raw[0] == {
        "type": "ready",
        "sample_rate": 8000,
        "model": "eres2netv2-m32-so762",
        "threshold": 0.2222,
    }
    assert all(set(d) == TURN_KEYS for d in raw[1:]), raw
    from speakerid.results import event_from_dict

    events = [event_from_dict(d) for d in raw]
    # Alice's second turn scores 0.246 at 16 kHz, 0.149 at telephone bandwidth: the asset
    # cannot name it there (unknown-1, in-process too); the other three turns it names
    check_events(events, turns, len(x) / rate, rate, named=(0, 1, 3))
    same_segments(events, reference(rate))
    wait_closed(open_srv)


# --- authentication -----------------------------------------------------------------------------
def refused(url: str, status: int, error: str, detail: str, **kw) -> None:
    with pytest.raises(InvalidStatus) as info, connect(url, **kw):
        pass
    r = info.value.response
    body = json.loads(bytes(r.body))
    assert r.status_code == status and body["status"] == status, body
    assert body["error"] == error and detail in body["detail"], body


def test_a_keyed_server_refuses_handshakes_without_a_valid_key(keyed):
    srv, key = keyed
    url = ws_url(srv)
    refused(url, 401, "AuthenticationError", "this server needs an API key")
    refused(
        url,
        401,
        "AuthenticationError",
        "unknown API key",
        additional_headers={"Authorization": "Bearer spk_wrong"},
    )
    refused(url, 401, "AuthenticationError", "unknown API key", subprotocols=["bearer.spk_wrong"])
    with Client(srv.url) as anon, pytest.raises(AuthenticationError, match="needs an API key"):
        next(anon.stream([np.zeros(SR, np.int16)]))
    with Client(srv.url, key="spk_wrong") as c, pytest.raises(AuthenticationError, match="unknown"):
        next(c.stream([np.zeros(SR, np.int16)]))
    assert metric(srv, "speakerid_live_streams_open") == 0  # none was ever accepted


def test_the_key_as_subprotocol_is_accepted_and_selected(keyed):
    """Browsers cannot set headers: the key comes as the subprotocol bearer.KEY, which the
    server must select (else the browser drops the connection)."""
    srv, key = keyed
    with connect(ws_url(srv), subprotocols=[f"bearer.{key}"]) as ws:
        assert ws.subprotocol == f"bearer.{key}"
        ws.send(np.zeros(SR, "<i2").tobytes())
        ws.send('{"type": "end"}')
        events, code, _ = drain(ws)
    assert events[0]["type"] == "ready" and code == 1000


def test_an_open_server_refuses_a_cross_origin_handshake(open_srv):
    """CORS does not protect WebSockets and browsers send Origin: a page elsewhere must not
    reach an open server; its own page may."""
    port = open_srv.url.rsplit(":", 1)[1]
    refused(
        ws_url(open_srv),
        403,
        "PermissionDeniedError",
        "cross-site request refused: Origin 'http://evil.example'",
        origin="http://evil.example",
    )
    with connect(ws_url(open_srv), origin=f"http://127.0.0.1:{port}") as ws:
        ws.send('{"type": "end"}')
        events, code, _ = drain(ws)
    assert events[0]["type"] == "ready" and code == 1000
    # the page on an open loopback server sends no key, but may offer a subprotocol
    with connect(ws_url(open_srv), subprotocols=["bearer.none"]) as ws:
        assert ws.subprotocol == "bearer.none"
    wait_closed(open_srv)


# --- protocol errors ----------------------------------------------------------------------------
ODD = "must hold little-endian int16 samples (an even number of bytes), got 3 bytes"
LONG = "a binary message holds at most 1 s of audio (32000 bytes at 16000 Hz), got 32002 bytes"


@pytest.mark.parametrize(
    "message, code, detail",
    [
        (b"\0\0\0", 1007, ODD),
        (bytes(32002), 1007, LONG),
        ("hello", 1003, 'unknown message \'hello\': send binary int16 PCM, or {"type": "end"}'),
        ('{"type": "stop"}', 1003, 'unknown message \'{"type": "stop"}\''),
    ],
    ids=["odd-bytes", "over-1s", "text", "unknown-type"],
)
def test_a_message_that_breaks_the_protocol(open_srv, message, code, detail):
    with connect(ws_url(open_srv)) as ws:
        ws.send(np.zeros(SR, "<i2").tobytes())  # a good message first
        ws.send(message)
        events, got_code, reason = drain(ws)
    assert [e["type"] for e in events] == ["ready", "error"]
    assert events[1]["status"] == 400 and detail in events[1]["detail"], events
    assert got_code == code and reason and events[1]["detail"].startswith(reason), reason
    wait_closed(open_srv)


def test_a_stream_longer_than_the_limit(open_srv):
    with connect(ws_url(open_srv)) as ws:
        for _ in range(MAX_SECONDS + 1):
            ws.send(np.zeros(SR, "<i2").tobytes())
        events, code, reason = drain(ws)
    detail = "the stream is longer than its limit of 20 s of audio (--max-stream-seconds)"
    assert events[1:] == [{"type": "error", "status": 413, "detail": detail}]
    assert (code, reason) == (1008, detail)


def test_an_idle_stream_is_closed(open_srv):
    t = time.monotonic()
    with connect(ws_url(open_srv)) as ws:
        events, code, reason = drain(ws)
    detail = f"no message for {IDLE} s: the stream is closed (--stream-idle-seconds)"
    assert events[1:] == [{"type": "error", "status": 408, "detail": detail}]
    assert (code, reason) == (1008, detail)
    assert IDLE <= time.monotonic() - t < IDLE + 5


@pytest.mark.parametrize(
    "query, detail",
    [
        ("?sample_rate=4000", "sample rate must be between 8000 and 192000 Hz, got 4000"),
        ("?sample_rate=fast", "sample_rate must be an integer, got 'fast'"),
        ("?threshold=2", "threshold must be a cosine in [-1, 1], got 2.0"),
    ],
)
def test_a_bad_query_gets_an_error_instead_of_ready(open_srv, query, detail):
    with connect(ws_url(open_srv, query)) as ws:
        events, code, reason = drain(ws)
    assert events == [{"type": "error", "status": 400, "detail": detail}]
    assert (code, reason) == (1008, detail)


def test_more_streams_than_the_limit_are_refused_with_1013(open_srv):
    wait_closed(open_srv)
    with ExitStack() as stack:
        held = [stack.enter_context(connect(ws_url(open_srv))) for _ in range(MAX_STREAMS)]
        assert all(json.loads(ws.recv(timeout=30))["type"] == "ready" for ws in held)
        assert metric(open_srv, "speakerid_live_streams_open") == MAX_STREAMS
        with connect(ws_url(open_srv)) as ws:
            events, code, _ = drain(ws)
        assert events == [
            {
                "type": "error",
                "status": 503,
                "detail": "this server has 3 live streams open, its most (--max-streams); "
                "retry later",
            }
        ]
        assert code == 1013
        with Client(open_srv.url) as c, pytest.raises(NotReadyError, match="--max-streams"):
            list(c.stream([np.zeros(SR, np.int16)]))
    wait_closed(open_srv)


# --- clients that go away -----------------------------------------------------------------------
def test_a_client_that_vanishes_mid_stream_frees_everything(open_srv):
    """The TCP connection dropped without a close frame while the server is still feeding: the
    stream's slot is released, and the server goes on answering streams and requests."""
    x, _ = conversation()
    with connect(ws_url(open_srv)) as ws:
        for i in range(0, 6 * SR, SR // 2):
            ws.send(x[i : i + SR // 2].astype("<i2").tobytes())
        assert metric(open_srv, "speakerid_live_streams_open") == 1
        ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the client just vanishes
        ws.socket.close()
        wait_closed(open_srv)
    # a consumer that stops reading early (leaves the loop) drops its stream too
    with Client(open_srv.url) as c:
        it = c.stream(x[i : i + SR // 4] for i in range(0, len(x), SR // 4))
        assert next(e for e in it if e.type == "partial").start < 3.0
        it.close()
    wait_closed(open_srv)
    senders = [t for t in threading.enumerate() if t.name == "speakerid-stream-sender"]
    assert not senders  # the client's sending thread ended with the stream
    with Client(open_srv.url) as c:
        events = list(c.stream([x[: 4 * SR]]))
    assert [e.type for e in events][0] == "ready" and segments(events)[0].speaker == "Alice"
    assert httpx.get(open_srv.url + "/healthz").json() == {"status": "ok"}


# --- Client.stream's typed errors ---------------------------------------------------------------
def test_client_stream_raises_the_servers_errors_as_typed_errors(open_srv):
    with Client(open_srv.url) as c:
        with pytest.raises(InvalidInputError, match="sample rate must be between 8000 and 192000"):
            list(c.stream([np.zeros(SR, np.int16)], sample_rate=5))
        with pytest.raises(LimitExceededError, match=r"limit of 20 s of audio \(--max-stream"):
            list(c.stream([np.zeros((MAX_SECONDS + 1) * SR, np.int16)]))

        def stalls():
            yield np.zeros(SR, np.int16)
            time.sleep(IDLE + 1.5)
            yield np.zeros(SR, np.int16)

        seen = []
        with pytest.raises(LimitExceededError, match=f"no message for {IDLE} s"):
            for e in c.stream(stalls()):
                seen.append(e)
        assert [e.type for e in seen] == ["ready"]  # nothing after the error
        with pytest.raises(InvalidSamplesError, match="samples contain NaN or infinity"):
            list(c.stream([np.zeros(SR, np.float32), np.array([0.1, np.nan])]))
        with pytest.raises(InvalidSamplesError, match="samples must be int16 or float, got int64"):
            list(c.stream([np.zeros(10, np.int64)]))
    wait_closed(open_srv)


def test_stream_settings_are_validated():
    with pytest.raises(InvalidInputError, match="--max-streams must be at least 1"):
        ServerSettings(max_streams=0)
    with pytest.raises(InvalidInputError, match="--stream-idle-seconds must be positive"):
        ServerSettings(stream_idle_seconds=0)


def test_a_stopping_server_closes_its_streams_with_1012(open_srv):
    """SIGTERM while a stream is open: the client learns the stream ended without its final
    segments (1012, service restart) and the server exits 0 at once. It stops the module's
    open server, so it stays the last test of this file."""

    def slow():
        for _ in range(100):
            yield np.zeros(SR // 10, np.int16)
            time.sleep(0.1)

    with Client(open_srv.url) as c:
        events = c.stream(slow())
        assert next(events).type == "ready"
        open_srv.terminate()
        with pytest.raises(ServerError, match=r"without its final segments \(close 1012"):
            list(events)
    t = time.monotonic()
    assert open_srv.stop() == 0
    assert time.monotonic() - t < 10
