"""``POST /v1/track`` on a real ``speakerid serve`` (uvicorn, real-voice test asset): a short
two-person conversation gets exactly the in-process ``SpeakerID.track`` answer (and the CLI's
``track --json`` object, also through ``--server``); bad audio and arguments are 400
problem+json, long audio 413; the route needs a read key and shows in the metrics."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid.audio.decode import AudioBytes
from speakerid.cli import app as cli_app
from speakerid.client import Client
from speakerid.errors import AudioDecodeError
from speakerid.service.facade import SpeakerID

from .conftest import TEST_MODEL, needs_asset
from .serverkit import Server, clips, problem

pytestmark = needs_asset

SR = 16000
A, B = "so0092", "so0111"  # two voices the asset tells apart on these clips (test_track_real)


def conversation() -> np.ndarray:
    """A, B, A, B taking turns (clips 2 and 3 of each), 0.5 s pauses: ~14 s."""
    gap = np.zeros(SR // 2, np.float32)
    parts = []
    for spk, i in ((A, 2), (B, 2), (A, 3), (B, 3)):
        x, rate = sf.read(clips(spk)[i], dtype="float32")
        assert rate == SR
        parts += [x, gap]
    return np.concatenate(parts)


def wav_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, subtype="PCM_16", format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A registry with Alice (A) and Bob (B) enrolled from other clips than the conversation's,
    a read key, and a server on it -> (server, key, conversation path, in-process result)."""
    work = tmp_path_factory.mktemp("track")
    db = work / "registry.db"
    path = work / "meeting.wav"
    path.write_bytes(wav_bytes(conversation()))
    with SpeakerID(db=db, model=TEST_MODEL) as sid:
        sid.enroll("Alice", clips(A)[:2])
        sid.enroll("Bob", clips(B)[:2])
        _, key = sid.api_keys().create("reader", "read")
        expected = sid.track(path)
    with Server(work, "--max-audio-seconds", "30", db=db, model=str(TEST_MODEL)) as s:
        yield s, key, path, expected


def post(http, data: bytes, name: str = "meeting.wav", **params):
    return http.post("/v1/track", files=[("file", (name, data, "audio/wav"))], params=params)


def same_answer(got: dict, expected: dict) -> None:
    """Equal segments and speakers (scores to 1e-4: another process, the batching worker)."""
    assert [s["speaker"] for s in got["speakers"]] == [s["speaker"] for s in expected["speakers"]]
    assert got["speakers"] == expected["speakers"]
    assert len(got["segments"]) == len(expected["segments"])
    for g, e in zip(got["segments"], expected["segments"]):
        assert {k: g[k] for k in ("start", "end", "speaker", "enrolled")} == {
            k: e[k] for k in ("start", "end", "speaker", "enrolled")
        }
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
    assert got["threshold"] == expected["threshold"] and got["duration"] == expected["duration"]


def test_track_answers_what_the_library_answers(served):
    srv, key, path, expected = served
    want = expected.to_dict()
    assert {s["speaker"] for s in want["speakers"]} == {"Alice", "Bob"}  # a real answer
    with srv.client(key) as http:
        r = post(http, path.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == set(want) and body["file"] == "meeting.wav"
        same_answer(body, want)
        # options reach the library: one voice asked for -> one voice answered
        one = post(http, path.read_bytes(), num_speakers=1).json()
        assert len(one["speakers"]) == 1 and len(one["segments"]) >= 1
        # the route is counted under its template, with the audio it tracked
        text = http.get("/metrics").text
        line = 'speakerid_http_requests_total{method="POST",route="/v1/track",status="200"} 2.0'
        assert line in text
        tracked = float(re.search(r"^speakerid_audio_seconds_tracked_total (\S+)", text, re.M)[1])
        assert tracked == pytest.approx(2 * want["duration"], abs=0.01)
    with Client(srv.url, key=key) as client:
        res = client.track(path)
        same_answer(res.to_dict(), want)
        assert res.segments[0].start == want["segments"][0]["start"]


def test_cli_track_through_the_server(served, monkeypatch):
    srv, key, path, expected = served
    monkeypatch.setenv("SPEAKERID_KEY", key)
    res = CliRunner().invoke(cli_app, ["track", str(path), "--server", srv.url, "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    same_answer(row, expected.to_dict())
    bad = CliRunner().invoke(
        cli_app, ["track", str(path), "--server", srv.url, "--enroll-unknown", "unknown-1=Carol"]
    )
    assert bad.exit_code == 2
    assert "--enroll-unknown works on a local registry only" in bad.output


def test_bad_input_is_a_400_problem_and_long_audio_413(served):
    srv, key, path, _ = served
    with srv.client(key) as http:
        problem(post(http, b"not audio at all", "x.wav"), 400, "AudioDecodeError", "x.wav")
        problem(post(http, b"", "empty.wav"), 400)
        problem(
            post(http, path.read_bytes(), num_speakers=2, max_speakers=3),
            400,
            "InvalidInputError",
            "give --num-speakers or --max-speakers, not both",
        )
        problem(post(http, path.read_bytes(), num_speakers=0), 400, "InvalidInputError")
        problem(post(http, path.read_bytes(), threshold=7), 400, "InvalidInputError")
        long = wav_bytes(np.tile(conversation(), 3))  # ~42 s > --max-audio-seconds 30
        problem(post(http, long, "long.wav"), 413, "LimitExceededError", "at most 30 s per file")
        problem(http.post("/v1/track"), 400, "InvalidInputError", "'file' is required")
    with Client(srv.url, key=key) as client, pytest.raises(AudioDecodeError, match="x.wav"):
        client.track(AudioBytes(b"garbage", "x.wav"))
    assert "Traceback" not in srv.logs()


def test_track_needs_a_key(served):
    srv, _, path, _ = served
    with srv.client() as anon:
        problem(post(anon, path.read_bytes()), 401, "AuthenticationError", "needs an API key")
    with srv.client("spk_wrong") as bad:
        problem(post(bad, path.read_bytes()), 401, "AuthenticationError", "unknown API key")
