"""Every decode stops at a sample cap (issue 20): a few MB of low-bitrate audio whose header
gives no length (WebM written live, MP3 without a Xing/ID3 header, Ogg/Opus) must not make the
server or the CLI decode hours into memory.

The files are made here with PyAV (libopus, libmp3lame): 10 s of noise encoded once, its
packets muxed again and again with shifted timestamps, so 20 minutes take a second to write.
Decoded whole at 48 kHz such a file is 230 MB of float32 (twice that while concatenating); with
a limit of 20 s nothing beyond 4 MB may be held. The server test posts each file to every route
that takes audio and measures the real uvicorn process: status 413 (problem+json), seconds per
answer, and its peak RSS (VmHWM, reset after warm-up through ``/proc/PID/clear_refs``).
"""

from __future__ import annotations

import io
import json
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid import config
from speakerid.audio.decode import (
    AudioBytes,
    DecodeLimit,
    decode_limit,
    load_audio,
    set_decode_limit,
)
from speakerid.audio.stream import stream_audio
from speakerid.cli import app as cli_app
from speakerid.errors import InvalidInputError, LimitExceededError
from speakerid.server import limits

from .serverkit import Server, clip_bytes, clips, problem

#: Length of the over-long files, and the limit they are checked against.
LONG_SECONDS = 1200.0
LIMIT = 20.0
#: What a bounded decode may add to the peak RSS of the server over the whole test: the uploads
#: (under 2 MB each), one file's 20 s at 48 kHz as float32 (3.8 MB, twice while concatenating),
#: and the allocator's slack. An unbounded decode of one of these files adds over 400 MB.
RSS_BUDGET = 64 * 2**20
#: Seconds one refused request may take (a bounded decode takes a tenth of that; decoding one
#: of these files whole takes 5-15 s on the 2-core machine before any VAD or embedding).
SECONDS_PER_REQUEST = 4.0

#: format -> (container, codec, sample rate, bit rate, muxer options, encoder options)
FORMATS = {
    # live: no Duration element and no cues, as a browser's MediaRecorder writes it
    "webm": ("webm", "libopus", 48000, 6000, {"live": "1"}, {}),
    # a raw MP3 stream: no Xing/Info frame, no ID3 tag; no bit reservoir across the repeats
    "mp3": ("mp3", "libmp3lame", 16000, 8000, {"write_xing": "0", "id3v2_version": "0"},
            {"reservoir": "0"}),
    "ogg": ("ogg", "libopus", 48000, 6000, {}, {}),
}  # fmt: skip


def long_audio(kind: str, seconds: float, unit: float = 10.0) -> bytes:
    """``seconds`` of quiet noise as ``kind``: ``unit`` s encoded once, its packets repeated."""
    fmt, codec, rate, bit_rate, muxer, encoder = FORMATS[kind]
    x = (np.random.default_rng(0).standard_normal(int(unit * rate)) * 0.05).astype(np.float32)
    sink = io.BytesIO()
    with av.open(sink, "w", format=fmt, options=muxer) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        stream.codec_context.options = encoder
        packets = []
        step = 960 if "opus" in codec else 1152
        for i in range(0, len(x), step):
            frame = av.AudioFrame.from_ndarray(x[None, i : i + step], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        full = packets[0].duration  # the trimmed last packet may only end a stream
        kept = [(bytes(p), p.pts, p.dts, p.time_base) for p in packets if p.duration == full]
        span = full * len(kept)
        for k in range(int(np.ceil(seconds / (span * kept[0][3])))):
            for data, pts, dts, time_base in kept:
                q = av.Packet(data)
                q.stream, q.time_base, q.duration = stream, time_base, full
                q.pts, q.dts = pts + k * span, dts + k * span
                out.mux(q)
    return sink.getvalue()


def _memory(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM of a process (``"self"``: this one), bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.fixture(scope="session")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """``{kind: path}`` of a 20-minute file per format (1-2 MB each)."""
    folder = tmp_path_factory.mktemp("bombs")
    out = {}
    for kind in FORMATS:
        out[kind] = folder / f"bomb.{kind}"
        out[kind].write_bytes(long_audio(kind, LONG_SECONDS))
    return out


@pytest.fixture
def limited():
    """The process's decode limit at ``LIMIT`` for the test (as ``speakerid serve`` sets it)."""
    before = set_decode_limit(limits.audio_limit(LIMIT))
    yield
    set_decode_limit(before)


def test_the_files_do_not_say_how_long_they_are(bombs):
    """What makes them dangerous: WebM has no duration anywhere (libsndfile cannot read it,
    FFmpeg knows no length), the MP3 has no length header (its length is only estimated from
    the bit rate), Ogg has none either (libsndfile seeks to the last page to tell)."""
    webm = bombs["webm"].read_bytes()
    with av.open(io.BytesIO(webm)) as c:
        assert c.duration is None and c.streams.audio[0].duration is None
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(webm))
    mp3 = bombs["mp3"].read_bytes()
    assert not mp3.startswith(b"ID3") and b"Xing" not in mp3[:4096] and b"Info" not in mp3[:4096]
    assert bombs["ogg"].read_bytes()[:4] == b"OggS"
    for path in bombs.values():
        assert path.stat().st_size < 2_000_000


@pytest.mark.parametrize("kind", list(FORMATS))
def test_load_audio_stops_where_the_limit_is_crossed(bombs, kind, limited):
    data = AudioBytes(bombs[kind].read_bytes(), bombs[kind].name)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: this test's own peak
    before = _memory("self")["VmRSS"]
    start = time.perf_counter()
    with pytest.raises(LimitExceededError) as err:
        load_audio(data)
    took = time.perf_counter() - start
    peak = _memory("self")["VmHWM"] - before
    # the MP3's length is only estimated by libsndfile: counted while decoding, as WebM
    # (FFmpeg); Ogg's last page tells libsndfile the length before anything is decoded
    head = "audio is 1200.0 s long" if kind == "ogg" else "audio is longer than 20 s"
    assert str(err.value) == f"bomb.{kind}: {head}; this server accepts at most 20 s per file"
    assert took < 2.0
    assert peak < 2 * LIMIT * 48000 * 4 + 8 * 2**20, peak  # 20 s, not 1200 s (230 MB)


@pytest.mark.parametrize("kind", list(FORMATS))
def test_streamed_decoding_stops_at_the_limit(bombs, kind):
    """``track``'s streaming decoder: the same cap, counted on the native samples."""
    limit = DecodeLimit(LIMIT, "advice")
    start = time.perf_counter()
    seen = 0
    with pytest.raises(LimitExceededError, match=r"audio is longer than 20 s; advice$"):
        for block in stream_audio(bombs[kind], limit):
            seen += len(block)
    assert seen <= LIMIT * 16000
    assert time.perf_counter() - start < 3.0


def test_track_counts_a_header_less_file_while_decoding():
    """``/v1/track``'s length check on a real WebM (no duration anywhere): under the limit it
    passes, over it the decoding stops there."""
    webm = AudioBytes(long_audio("webm", 30.0), "meeting.webm")
    assert limits.probe_seconds(webm.data) is None
    limits.check_length(webm, 60.0)
    with pytest.raises(
        LimitExceededError,
        match=r"^meeting.webm: audio is longer than 20 s; this server accepts at most 20 s",
    ):
        limits.check_length(webm, 20.0)


def test_default_limits_and_their_settings(monkeypatch):
    monkeypatch.delenv(config.ENV_MAX_AUDIO_SECONDS, raising=False)
    monkeypatch.delenv(config.ENV_MAX_TRACK_SECONDS, raising=False)
    whole, streamed = decode_limit(), decode_limit(streamed=True)
    assert (whole.seconds, streamed.seconds) == (3600.0, 86400.0)
    assert whole.advice == (
        "speakerid accepts at most 3600 s per file (set SPEAKERID_MAX_AUDIO_SECONDS to raise "
        "this limit)"
    )
    assert "SPEAKERID_MAX_TRACK_SECONDS" in streamed.advice
    monkeypatch.setenv(config.ENV_MAX_AUDIO_SECONDS, "7200")
    monkeypatch.setenv(config.ENV_MAX_TRACK_SECONDS, "90.5")
    assert (decode_limit().seconds, decode_limit(streamed=True).seconds) == (7200.0, 90.5)
    for bad in ("0", "-3", "inf", "nan", "an hour"):
        monkeypatch.setenv(config.ENV_MAX_AUDIO_SECONDS, bad)
        with pytest.raises(InvalidInputError, match="use a positive number of seconds"):
            decode_limit()
    server = limits.audio_limit(300)
    before = set_decode_limit(server)  # a server's limit covers both kinds, in every thread
    try:
        assert decode_limit() is server and decode_limit(streamed=True) is server
    finally:
        assert set_decode_limit(before) is server
    assert decode_limit(streamed=True).seconds == 90.5


# --- the CLI ---------------------------------------------------------------------------------
runner = CliRunner()


def _one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_refuses_an_over_long_file_in_one_line(bombs, monkeypatch):
    monkeypatch.setenv(config.ENV_MAX_AUDIO_SECONDS, "60")
    monkeypatch.setenv(config.ENV_MAX_TRACK_SECONDS, "90")
    probe = clips("so0003")[0]
    start = time.perf_counter()
    res = runner.invoke(cli_app, ["compare", str(probe), str(bombs["webm"]), "--model", "demo"])
    assert _one_line_error(res) == (
        f"error: {bombs['webm']}: audio is longer than 60 s; speakerid accepts at most 60 s per "
        f"file (set SPEAKERID_MAX_AUDIO_SECONDS to raise this limit)"
    )
    res = runner.invoke(cli_app, ["embed", str(bombs["mp3"]), "--model", "demo"])
    assert "audio is longer than 60 s" in _one_line_error(res)
    res = runner.invoke(cli_app, ["track", str(bombs["ogg"]), "--model", "demo"])
    assert _one_line_error(res) == (
        f"error: {bombs['ogg']}: audio is longer than 90 s; track accepts at most 90 s per "
        f"file (set SPEAKERID_MAX_TRACK_SECONDS to raise this limit)"
    )
    assert time.perf_counter() - start < 60  # three model loads, no 20-minute decodes


def test_cli_long_files_within_the_limits_still_work(tmp_path, monkeypatch):
    """Two minutes: embedded whole under a 150 s limit; tracked (streamed) although the
    whole-file limit is lower, since ``track`` has its own."""
    path = tmp_path / "long.mp3"
    path.write_bytes(long_audio("mp3", 120.0))
    monkeypatch.setenv(config.ENV_MAX_AUDIO_SECONDS, "150")
    res = runner.invoke(cli_app, ["embed", str(path), "--model", "demo", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)[0]["embedding"]) == 192
    monkeypatch.setenv(config.ENV_MAX_AUDIO_SECONDS, "60")
    res = runner.invoke(cli_app, ["track", str(path), "--model", "demo", "--json"])
    assert res.exit_code == 0, res.output
    assert 120.0 <= json.loads(res.stdout)[0]["duration"] < 121.0


# --- the server ------------------------------------------------------------------------------
def _requests(upload: tuple[str, bytes, str], probe: tuple[str, bytes, str]) -> dict[str, dict]:
    """One request per audio route, ``upload`` being the file that must be decoded (compare
    gets it second, after a normal recording)."""
    return {
        "/v1/speakers/{name}/enrollments": dict(
            url="/v1/speakers/carol/enrollments", files=[("files", upload)]
        ),
        "/v1/identify": dict(url="/v1/identify", files=[("files", upload)]),
        "/v1/verify": dict(url="/v1/verify", files=[("file", upload)], data={"speaker": "ann"}),
        "/v1/compare": dict(url="/v1/compare", files=[("file1", probe), ("file2", upload)]),
        "/v1/embed": dict(url="/v1/embed", files=[("files", upload)]),
        "/v1/track": dict(url="/v1/track", files=[("file", upload)]),
    }


def test_every_audio_route_answers_413_in_seconds_with_bounded_memory(bombs, tmp_path):
    A = clips("so0003")
    with (
        Server(tmp_path, "--max-audio-seconds", str(int(LIMIT))) as srv,
        srv.client() as http,
    ):
        doc = http.get("/openapi.json").json()
        takes_audio = {
            path
            for path, ops in doc["paths"].items()
            for op in ops.values()
            if "multipart/form-data" in op.get("requestBody", {}).get("content", {})
        }
        probe = clip_bytes(A[1])
        assert set(_requests(probe, probe)) == takes_audio  # every route that takes audio
        r = http.post("/v1/speakers/ann/enrollments", files=[("files", clip_bytes(A[0]))])
        assert r.status_code == 201, r.text
        for route, req in _requests(probe, probe).items():  # warm up every path (VAD, ...)
            r = http.post(**dict(req, url=req["url"].replace("carol", "warm")))
            assert r.status_code in (200, 201), (route, r.text)
        speakers = http.get("/v1/speakers").json()

        pid = srv.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
        base = _memory(pid)
        assert base["VmHWM"] - base["VmRSS"] < 2**20, base
        took = {}
        for kind, path in bombs.items():
            upload = (path.name, path.read_bytes(), "application/octet-stream")
            for route, req in _requests(upload, probe).items():
                start = time.perf_counter()
                r = http.post(**req)
                took[kind, route] = time.perf_counter() - start
                detail = problem(r, 413, "LimitExceededError", "accepts at most 20 s per file")
                assert detail["detail"].startswith(f"{path.name}: audio is "), detail
                if kind == "webm":  # nothing in the file tells its length: counted while decoding
                    assert detail["detail"].startswith(f"{path.name}: audio is longer than 20 s")
        peak = _memory(pid)["VmHWM"] - base["VmRSS"]
        assert http.get("/v1/speakers").json() == speakers  # nothing stored
        assert http.get("/healthz").status_code == 200
        assert "Traceback" not in srv.logs()
    slow = {k: round(v, 2) for k, v in took.items() if v > SECONDS_PER_REQUEST}
    assert not slow, slow
    assert peak < RSS_BUDGET, f"peak RSS grew by {peak / 2**20:.0f} MiB: {took}"
