"""``speakerid listen`` end to end: the real command in fresh processes, configured the way
users configure it (SPEAKERID_HOME relative to the working directory, SPEAKERID_MODEL the
real-voice asset, relative paths), on a two-person conversation built from data/clips.

Every answer is compared with the in-process ``SpeakerID(db).stream()`` fed the same samples:
the command must translate the core's events, never decide anything of its own. The microphone
is PortAudio's real capture path, with ALSA's ``file`` plugin as the device (no test machine has
a microphone)."""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakerid.audio.resample import resample
from speakerid.cli.listen_cmd import segment_line
from speakerid.cli.listen_input import NO_DEVICE, NO_PORTAUDIO, NO_SOUNDDEVICE
from speakerid.results import event_from_dict
from speakerid.service.facade import SpeakerID

from .budgets import SCORE_ATOL
from .conftest import CLIPS, HARDWARE, ROOT, TEST_MODEL, needs_asset
from .serverkit import Server

pytestmark = needs_asset
SR = 16000
A, B = "so0092", "so0111"  # two voices the asset tells apart on these clips (test_track_real)
NAME = {A: "Alice", B: "Bob"}
READY = {"type": "ready", "sample_rate": SR, "model": "eres2netv2-m32-so762", "threshold": 0.2222}


def clip(speaker: str, i: int) -> Path:
    return sorted((CLIPS / speaker).glob("*.opus"))[i]


def env(**extra: str) -> dict[str, str]:
    """A user's environment: a home relative to the working directory, the model by variable
    (the ONNX export cache of the test run is kept: it only saves the export's seconds)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    out.update(
        SPEAKERID_HOME="home",
        SPEAKERID_MODEL=str(TEST_MODEL),
        SPEAKERID_OFFLINE="1",
        SPEAKERID_THREADS="1",
        SPEAKERID_CACHE=os.environ["SPEAKERID_CACHE"],
        PYTHONPATH=str(ROOT),
    )
    out.update(extra)
    return out


def speakerid(cwd: Path, *args: str, stdin: bytes | None = None, **extra: str):
    """``speakerid ARGS`` run to its end: (exit code, stdout, stderr)."""
    res = subprocess.run(
        [sys.executable, "-m", "speakerid", *args],
        cwd=cwd,
        env=env(**extra),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=300,
    )
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def stream_events(db: Path, samples: np.ndarray, rate: int) -> list[dict]:
    """What the in-process live stream answers for these samples (fed in 1 s chunks)."""
    with SpeakerID(db=db) as sid:
        st = sid.stream(sample_rate=rate)
        events = st.start()
        for i in range(0, len(samples), rate):
            events += st.feed(samples[i : i + rate])
        events += st.close()
    return [e.to_dict() for e in events]


def assert_same_events(got: list[dict], want: list[dict]) -> None:
    """Same events in the same order: types, times and names exactly, scores within the
    budget of two float32 computations."""
    assert [(e["type"], e.get("start"), e.get("end"), e.get("speaker")) for e in got] == [
        (e["type"], e.get("start"), e.get("end"), e.get("speaker")) for e in want
    ]
    for g, w in zip(got, want):
        if w.get("score") is not None:
            assert g["score"] == pytest.approx(w["score"], abs=SCORE_ATOL), (g, w)
        assert {k: v for k, v in g.items() if k != "score"} == {
            k: v for k, v in w.items() if k != "score"
        }


def segments(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "segment"]


def rttm_text(uri: str, segs: list[dict]) -> str:
    return "".join(
        f"SPEAKER {uri} 1 {s['start']:.3f} {s['end'] - s['start']:.3f} <NA> <NA> "
        f"{s['speaker']} <NA> <NA>\n"
        for s in segs
    )


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """A working directory with a registry (Alice and Bob enrolled from clips 0 and 1, by the
    CLI) and conv.wav: Alice, Bob, Alice, Bob (clips 2 and 3), 0.5 s pauses -> (dir, turns,
    the conversation's int16 samples, the in-process stream's events for them)."""
    cwd = tmp_path_factory.mktemp("listen")
    (cwd / "clips").mkdir()
    for spk in (A, B):
        files = []
        for i in (0, 1):
            files.append(f"clips/{spk}-{i}.opus")
            shutil.copy(clip(spk, i), cwd / files[-1])
        rc, out, err = speakerid(cwd, "enroll", NAME[spk], *files)
        assert rc == 0, err
    gap = np.zeros(SR // 2, np.int16)
    parts, turns, t = [], [], 0
    for spk, i in ((A, 2), (B, 2), (A, 3), (B, 3)):
        x, rate = sf.read(clip(spk, i), dtype="int16")
        assert rate == SR
        parts += [x, gap]
        turns.append((NAME[spk], t / SR, (t + len(x)) / SR))
        t += len(x) + len(gap)
    pcm = np.concatenate(parts)
    sf.write(cwd / "conv.wav", pcm, SR, subtype="PCM_16")
    db = cwd / "home" / "registry.db"
    assert db.is_file()
    return cwd, turns, pcm, stream_events(db, pcm, SR)


@pytest.fixture(scope="module")
def server(room):
    """A real ``speakerid serve`` (uvicorn on a free port) on the room's registry."""
    cwd = room[0]
    cache = {"SPEAKERID_CACHE": os.environ["SPEAKERID_CACHE"]}
    with Server(cwd, db="home/registry.db", model=str(TEST_MODEL), env=cache) as s:
        yield s


class Running:
    """``speakerid ARGS`` running, its JSON lines collected with their arrival times."""

    def __init__(self, cwd: Path, *args: str, **extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speakerid", *args],
            cwd=cwd,
            env=env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), json.loads(line)))
        self.lines.put(None)

    def next(self, timeout: float = 120) -> tuple[float, dict] | None:
        return self.lines.get(timeout=timeout)

    def rest(self) -> list[tuple[float, dict]]:
        out = []
        while (item := self.next()) is not None:
            out.append(item)
        return out

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_file_names_alice_and_bob_as_the_in_process_stream_does(room):
    cwd, turns, _, want = room
    rc, out, err = speakerid(
        cwd, "listen", "--input", "conv.wav", "--fast", "--json", "--rttm", "conv.rttm"
    )
    assert rc == 0 and err == "", err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == READY  # first, before any audio
    assert_same_events(events, want)
    segs = segments(events)
    assert [s["speaker"] for s in segs] == ["Alice", "Bob", "Alice", "Bob"]
    for (name, start, end), s in zip(turns, segs):  # each segment inside its turn
        assert start - 0.1 <= s["start"] < s["end"] <= end + 0.6 and s["speaker"] == name
        assert s["enrolled"] is True and s["score"] >= 0.2222
    assert {e["type"] for e in events} == {"ready", "partial", "segment"}
    assert (cwd / "conv.rttm").read_text() == rttm_text("conv", segs)


def test_stdin_pcm_at_its_rate_gives_plain_segment_lines(room):
    """--input - with --sample-rate 8000: raw int16 PCM; without --json and a terminal, one
    line per final segment (as track prints them)."""
    cwd, _, pcm, _ = room
    pcm8 = np.round(resample(pcm / 32768.0, SR, 8000) * 32768).clip(-32768, 32767)
    pcm8 = pcm8.astype("<i2")
    want = stream_events(cwd / "home" / "registry.db", pcm8, 8000)
    rc, out, err = speakerid(
        cwd, "listen", "--input", "-", "--sample-rate", "8000", "--fast", stdin=pcm8.tobytes()
    )
    assert rc == 0 and err == "", err
    lines = [segment_line(event_from_dict(s)) for s in segments(want)]
    assert out.splitlines() == lines
    # the first turns keep their names at 8 kHz (the third is the asset's weakest: 1.7 s)
    assert [ln.split()[2] for ln in lines][:2] == ["Alice", "Bob"] and len(lines) == 4


def test_stdin_that_ends_mid_sample_gives_its_segments_then_one_line(room):
    """The input fails: the stream is still closed, so its final segments are given (in JSON
    and the RTTM), then the error's one line and exit 2. The turn cut at 5 s holds too little
    speech to be named: null in JSON, "unknown" in the RTTM. --threshold reaches the stream."""
    cwd, _, pcm, want = room
    full = segments(want)
    data = pcm[: 5 * SR].tobytes() + b"\x01"  # Alice's turn, 1 s of Bob's, half a sample
    rc, out, err = speakerid(
        cwd,
        "listen",
        "--input",
        "-",
        "--fast",
        "--json",
        "--threshold",
        "0.3",
        "--rttm",
        "part.rttm",
        stdin=data,
    )
    assert rc == 2
    assert err == (
        "error: stdin: 160001 bytes is not a whole number of samples (--input - expects raw "
        "little-endian int16 mono PCM)\n"
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {**READY, "threshold": 0.3}
    # Alice's first partial scores 0.238 (named at the registry's 0.2222): not at 0.3
    assert want[1]["speaker"] == "Alice" and 0.2222 < want[1]["score"] < 0.3
    assert events[1]["speaker"] == "unknown-1" and events[1]["enrolled"] is False
    first, cut = segments(events)
    assert first == full[0]
    assert cut["start"] == full[1]["start"] and cut["end"] <= 5.0
    assert (cut["speaker"], cut["enrolled"], cut["score"]) == (None, False, None)
    assert (cwd / "part.rttm").read_text() == rttm_text(
        "live", [first, {**cut, "speaker": "unknown"}]
    )


def test_a_file_is_fed_at_real_time_without_fast(room):
    cwd, *_ = room
    x, rate = sf.read(clip(A, 2), dtype="int16")
    sf.write(cwd / "short.wav", x, rate, subtype="PCM_16")
    seconds = len(x) / rate
    with Running(cwd, "listen", "--input", "short.wav", "--json") as run:
        t_ready, ready = run.next()
        assert ready == READY
        rest = run.rest()
        assert run.proc.wait(60) == 0, run.proc.stderr.read()
        done = time.monotonic()
    assert done - t_ready >= seconds - 0.05  # no sooner than a microphone could have said it
    for t, ev in rest:  # and no event before its audio was "spoken"
        assert t - t_ready >= ev["end"] - 0.05, (t - t_ready, ev)
    assert [s["speaker"] for _, s in rest if s["type"] == "segment"] == ["Alice"]


@pytest.mark.parametrize("where", ["local", "server"])
def test_ctrl_c_mid_turn_closes_the_stream_with_its_final_segments(room, where, request):
    """SIGINT while Bob is speaking: the turns so far are final segments (Bob's cut where the
    audio stopped), in JSON and in the RTTM, and the exit code is 0; with --server the input
    ends and the server sends the last segment."""
    cwd, _, _, want = room
    full = segments(want)
    extra = {"SPEAKERID_SERVER": request.getfixturevalue("server").url} if where == "server" else {}
    args = ("listen", "--input", "conv.wav", "--json", "--rttm", "cut.rttm")
    with Running(cwd, *args, **extra) as run:
        t_ready, ready = run.next()
        assert ready == READY
        seen = []
        while True:
            t, ev = run.next()
            seen.append(ev)
            assert t - t_ready >= ev["end"] - 0.05  # paced, like a microphone
            if ev["type"] == "partial" and ev["speaker"] == "Bob":
                run.proc.send_signal(signal.SIGINT)
                break
        after = [ev for _, ev in run.rest()]
        assert run.proc.wait(60) == 0, run.proc.stderr.read()
        stopped = time.monotonic() - t_ready
    assert_same_events([ready, *seen], want[: len(seen) + 1])
    assert stopped < full[-1]["end"]  # it did not run to the end of the file
    cut = [e for e in after if e["type"] == "segment"]
    assert len(cut) == 1 and all(e["type"] in ("partial", "segment") for e in after)
    last = cut[0]
    assert last["speaker"] == "Bob" and last["start"] == full[1]["start"]
    assert seen[-1]["end"] - 1.0 <= last["end"] < full[1]["end"]  # cut short by the Ctrl-C
    segs = segments(seen) + cut
    assert [s["speaker"] for s in segs] == ["Alice", "Bob"]
    assert segs[0] == full[0]
    assert (cwd / "cut.rttm").read_text() == rttm_text("conv", segs)


def test_a_reader_that_stops_reading_ends_the_stream_quietly(room):
    """``listen --json | head -n 2``: once nobody reads, the stream ends as on Ctrl-C: exit 0,
    no traceback, and no waiting for the rest of the input."""
    cwd, _, _, want = room
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakerid", "listen", "--input", "conv.wav", "--json"],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert json.loads(proc.stdout.readline()) == READY
        t_ready = time.monotonic()
        assert json.loads(proc.stdout.readline()) == want[1]
        proc.stdout.close()  # the reader goes away
        assert proc.wait(60) == 0
        assert proc.stderr.read() == b""
        assert time.monotonic() - t_ready < segments(want)[-1]["end"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _alsa_file_microphone(cwd: Path, pcm: np.ndarray, rate: int) -> Path:
    """An ALSA configuration whose default device records ``pcm`` (ALSA's file plugin on the
    null device): PortAudio sees a real capture device, at its own default rate."""
    system = Path("/usr/share/alsa/alsa.conf")
    assert system.is_file(), "libasound2-data (ALSA's configuration) is not installed"
    raw = cwd / "mic.raw"
    pcm.astype("<i2").tofile(raw)
    conf = cwd / "asound.conf"
    conf.write_text(
        f"<{system}>\n"
        f'pcm.micfile {{ type file slave.pcm "null" file "/dev/null" infile "{raw}" '
        'format "raw" }\n'
        f'pcm.!default {{ type plug slave {{ pcm "micfile" format S16_LE rate {rate} '
        "channels 1 } }\n"
    )
    return conf


def test_microphone_is_captured_at_its_own_rate_through_portaudio(room):
    cwd, _, pcm, _ = room
    rate = 44100  # what PortAudio reports as this device's default rate
    mic = np.round(resample(pcm / 32768.0, SR, rate) * 32768).clip(-32768, 32767)
    seconds = len(pcm) / SR + 1.5
    heard = np.zeros(round(seconds * rate), np.int16)  # then silence: the null device's zeros
    heard[: len(mic)] = mic
    conf = _alsa_file_microphone(cwd, mic, rate)
    rc, out, err = speakerid(
        cwd,
        "listen",
        "--json",
        "--duration",
        f"{seconds}",
        "--rttm",
        "mic.rttm",
        ALSA_CONFIG_PATH=str(conf),
    )
    assert rc == 0 and err == "", err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {**READY, "sample_rate": rate}  # the device's rate, resampled by the core
    assert_same_events(events, stream_events(cwd / "home" / "registry.db", heard, rate))
    segs = segments(events)
    assert [s["speaker"] for s in segs[:2]] == ["Alice", "Bob"] and len(segs) == 4
    assert (cwd / "mic.rttm").read_text() == rttm_text("live", segs)


def _has_input_device() -> bool:
    code = (
        "import sounddevice as sd; "
        "print(any(d['max_input_channels'] > 0 for d in sd.query_devices()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() == "True"


def test_no_microphone_is_one_line_before_any_model_is_loaded(room):
    cwd, *_ = room
    if _has_input_device():
        pytest.skip(f"{HARDWARE}this machine has a microphone (the test needs none)")
    # a model that does not exist: the answer must come before any model is looked at
    rc, out, err = speakerid(cwd, "listen", SPEAKERID_MODEL="missing.pt")
    assert (rc, out, err) == (2, "", f"error: {NO_DEVICE}\n")
    assert NO_DEVICE.startswith("no audio input device (microphone) found")


def test_missing_portaudio_or_sounddevice_is_one_line(room):
    cwd, *_ = room
    run = "from speakerid.cli import main; sys.argv = ['speakerid', 'listen']; main()"
    # sounddevice's own loader finds no PortAudio library (as on a machine without it)
    hide_lib = f"import ctypes.util, sys; ctypes.util.find_library = lambda name: None; {run}"
    hide_pkg = f"import sys; sys.modules['sounddevice'] = None; {run}"
    for code, line in ((hide_lib, NO_PORTAUDIO), (hide_pkg, NO_SOUNDDEVICE)):
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True
        )
        assert (res.returncode, res.stdout, res.stderr) == (2, "", f"error: {line}\n")
    assert "libportaudio2" in NO_PORTAUDIO and "pip install sounddevice" in NO_SOUNDDEVICE


def test_arguments_are_refused_in_one_line(room):
    cwd, *_ = room
    cases = [
        (["--fast"], "--fast applies to --input FILE or --input - only"),
        (["--input", "nothing.wav"], "nothing.wav: no such file"),
        (
            ["--input", "conv.wav", "--sample-rate", "8000"],
            "--sample-rate applies to --input - and the microphone (a file carries its own)",
        ),
        (
            ["--input", "conv.wav", "--duration", "0"],
            "--duration must be a positive number of seconds, got 0",
        ),
        (
            ["--input", "-", "--sample-rate", "4000", "--fast"],
            "sample rate must be between 8000 and 192000 Hz, got 4000",
        ),
        (["--sample-rate", "200000"], "sample rate must be between 8000 and 192000 Hz, got 200000"),
        (
            ["--input", "conv.wav", "--fast", "--rttm", "nowhere/x.rttm"],
            "cannot write nowhere/x.rttm: No such file or directory",
        ),
        (
            ["--input", "conv.wav", "--server", "http://127.0.0.1:9", "--db", "x.db"],
            "--db, --model and --device do not apply with --server or $SPEAKERID_SERVER "
            "(the server has its own registry and model)",
        ),
    ]
    for args, line in cases:
        rc, out, err = speakerid(cwd, "listen", *args, stdin=b"\0\0" * SR)
        assert (rc, out, err) == (2, "", f"error: {line}\n"), args


def run_in_terminal(cwd: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    """``speakerid ARGS`` with stdout and stderr on a pseudo-terminal: (exit code, screen)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakerid", *args],
        cwd=cwd,
        env=env(TERM="xterm-256color", COLUMNS="100"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_terminal_shows_a_live_line_and_each_final_segment(room):
    cwd, _, _, want = room
    rc, screen = run_in_terminal(cwd, "listen", "--input", "conv.wav", "--fast")
    assert rc == 0, screen
    assert "listening to conv.wav (as fast as it decodes); Ctrl-C to stop" in screen
    lines = [" ".join(segment_line(event_from_dict(s)).split()) for s in segments(want)]
    # what stays on each line once the live line was erased from it (rich expands the tab)
    printed = [" ".join(ln.split("\x1b[2K")[-1].split()) for ln in screen.split("\n")]
    assert [ln for ln in printed if ln in lines] == lines  # each final segment, in order
    assert "\x1b[2K" in screen  # the live line is redrawn in place
    assert "Alice" in screen and "since 0.6 s" in screen  # who speaks now, since when
    assert "listened to 14.8 s: 4 segments" in screen


def test_server_gives_the_in_process_stream_events(room, server):
    """--server (here through SPEAKERID_SERVER, as a user sets it): the same events from a real
    ``speakerid serve`` on this registry; the command never loads a model (its variable names
    a file that does not exist)."""
    cwd, _, _, want = room
    rc, out, err = speakerid(
        cwd,
        "listen",
        "--input",
        "conv.wav",
        "--fast",
        "--json",
        "--rttm",
        "served.rttm",
        SPEAKERID_SERVER=server.url,
        SPEAKERID_MODEL="missing.pt",
    )
    assert rc == 0 and err == "", err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == READY
    assert_same_events(events, want)
    segs = segments(events)
    assert [s["speaker"] for s in segs] == ["Alice", "Bob", "Alice", "Bob"]
    assert (cwd / "served.rttm").read_text() == rttm_text("conv", segs)
