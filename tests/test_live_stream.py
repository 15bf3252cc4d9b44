"""The live path's core (``SpeakerID.stream``): events in order, turns ended by a pause and by a
change of voice, segments named exactly as ``identify`` names their audio, unknown voices
labelled consistently, any chunking and any sample rate giving the same answers, bounded state,
and input that must never produce a name (noise, tones, silence) or must be refused."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speakerid.audio.resample import resample
from speakerid.errors import InvalidInputError, InvalidSamplesError, LimitExceededError
from speakerid.results import ReadyEvent, TurnEvent
from speakerid.service.facade import SpeakerID
from speakerid.tracking import live

from .budgets import SCORE_ATOL
from .conftest import CLIPS, TEST_MODEL, needs_asset

pytestmark = needs_asset
SR = 16000
A, B = "so0044", "so0113"  # two voices the asset tells apart on turns of two trimmed clips


def clip(speaker: str, i: int) -> np.ndarray:
    files = sorted((CLIPS / speaker).glob("*.opus"))
    x, rate = sf.read(files[i], dtype="float32")
    assert rate == SR
    return x


def trimmed(speaker: str, i: int) -> np.ndarray:
    """A clip without its leading and trailing silence (continuous speech when joined)."""
    from speakerid.audio.vad import speech_segments

    x = clip(speaker, i)
    segs = speech_segments(x)
    return x[segs[0][0] : segs[-1][1]]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "reg.db"
    with SpeakerID(db=path, model=TEST_MODEL) as sid:
        sid.enroll("Alice", [sorted((CLIPS / A).glob("*.opus"))[i] for i in (0, 1)])
        sid.enroll("Bob", [sorted((CLIPS / B).glob("*.opus"))[i] for i in (0, 1)])
    return path


@pytest.fixture(scope="module")
def sid(db):
    with SpeakerID(db=db) as s:
        yield s


def turn(speaker: str, order: tuple[int, int]) -> np.ndarray:
    """One turn: two of the speaker's probe clips (never its enrollment clips), trimmed to their
    speech and joined by a 0.2 s breath (about 4 s of speech: the asset is weak on less)."""
    breath = np.zeros(int(0.2 * SR), np.float32)
    return np.concatenate([trimmed(speaker, order[0]), breath, trimmed(speaker, order[1])])


def conversation(gap: float = 0.8) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """A, B, A, B taking turns with ``gap`` s of silence between them (and after the last)."""
    pause = np.zeros(int(gap * SR), np.float32)
    parts, turns, t = [pause], [], len(pause)
    for spk, order in ((A, (2, 3)), (B, (2, 3)), (A, (3, 2)), (B, (3, 2))):
        x = turn(spk, order)
        parts += [x, pause]
        turns.append((spk, t / SR, (t + len(x)) / SR))
        t += len(x) + len(pause)
    return np.concatenate(parts), turns


def run(stream, x: np.ndarray, chunk: int) -> list:
    events = []
    for i in range(0, len(x), chunk):
        events += stream.feed(x[i : i + chunk])
    return events + stream.close()


def segments(events) -> list[TurnEvent]:
    return [e for e in events if e.type == "segment"]


def who(segs, a: float, b: float) -> str | None:
    """The name the segments give most of ``[a, b)`` (the asset is weak on short stretches,
    so a turn may have a short piece named otherwise)."""
    time: dict[str | None, float] = {}
    for s in segs:
        time[s.speaker] = time.get(s.speaker, 0.0) + max(0.0, min(b, s.end) - max(a, s.start))
    return max(time, key=time.get) if time else None


def names(segs, turns) -> list[str | None]:
    return [who(segs, a, b) for _, a, b in turns]


ABAB = ["Alice", "Bob", "Alice", "Bob"]


def test_events_in_order_and_turns_named(sid):
    x, turns = conversation()
    events = run(sid.stream(), x, 1600)
    assert isinstance(events[0], ReadyEvent)
    assert events[0].to_dict() == {
        "type": "ready",
        "sample_rate": 16000,
        "model": "eres2netv2-m32-so762",
        "threshold": 0.2222,
    }
    assert not any(isinstance(e, ReadyEvent) for e in events[1:])
    segs = segments(events)
    assert names(segs, turns) == ABAB
    for s in segs:  # each segment lies inside one turn
        assert any(a - 0.05 <= s.start < s.end <= b + 0.05 for _, a, b in turns)
        assert s.enrolled == (s.score >= 0.2222)
    ends = [s.end for s in segs]
    assert all(e <= s.start for e, s in zip(ends, segs[1:]))  # sorted, no overlap
    partials = [e for e in events if e.type == "partial"]
    assert partials and all(p.end - p.start >= 1.0 for p in partials)  # enough speech first
    for p, q in zip(partials, partials[1:]):  # at most every 0.5 s within a turn
        if p.start == q.start:
            assert q.end - p.end >= live.STEP - 1e-9
    # Bob is named by a partial while he is still speaking, long before his turn ends
    first_bob = next(p for p in partials if p.speaker == "Bob")
    assert turns[1][1] < first_bob.end <= turns[1][1] + 2.5


def test_segments_are_named_as_identify_names_their_audio(sid, tmp_path):
    """``identify`` on each final segment's audio gives its name (an enrolled one) or no name
    (where the stream says unknown-N), with the same score."""
    x, _ = conversation()
    segs = segments(run(sid.stream(), x, 4000))
    assert any(s.enrolled for s in segs) and len(segs) >= 4
    for k, s in enumerate(segs):
        path = tmp_path / f"seg{k}.wav"
        sf.write(path, x[round(s.start * SR) : round(s.end * SR)], SR, subtype="FLOAT")
        r = sid.identify(path)
        assert r.speaker == (s.speaker if s.enrolled else None)
        assert r.score == pytest.approx(s.score, abs=SCORE_ATOL)


def test_a_change_of_voice_without_a_pause_ends_the_turn(sid):
    """Alice then Bob with no silence between them: two segments, the cut near the change."""
    a, b = turn(A, (3, 2)), turn(B, (2, 3))
    x = np.concatenate([a, b, np.zeros(SR, np.float32)])
    segs = segments(run(sid.stream(), x, 1600))
    t = len(a) / SR
    assert names(segs, [(A, 0, t), (B, t, len(x) / SR - 1)]) == ["Alice", "Bob"]
    cut = min((s for s in segs if s.start > 0.5), key=lambda s: abs(s.start - t))
    assert abs(cut.start - t) <= 1.0  # a segment starts near the change


def test_any_chunking_gives_the_same_events(sid):
    x, _ = conversation(0.6)
    x = x[: 8 * SR]
    one = [e.to_dict() for e in run(sid.stream(), x, 160)]
    big = [e.to_dict() for e in run(sid.stream(), x, 3 * SR + 7)]
    assert one == big


def test_int16_and_other_sample_rates(sid):
    x, _ = conversation()
    pcm = (x * 32767).astype(np.int16)
    x, turns = conversation()
    pcm = (x * 32767).astype(np.int16)
    segs16 = segments(run(sid.stream(), pcm, 1600))
    assert names(segs16, turns) == ABAB
    x8 = resample(x, SR, 8000)
    stream = sid.stream(sample_rate=8000)
    assert stream.ready.sample_rate == 8000
    segs8 = segments(run(stream, (x8 * 32767).astype(np.int16), 800))
    # times are seconds of the stream whatever its rate: the turns are found where they are
    for _, a, b in turns:
        assert any(abs(s.start - a) <= 0.25 for s in segs8)
        assert any(abs(s.end - b) <= 0.25 for s in segs8)
    # the asset scores Alice's turns lower on telephone-band audio; Bob is still named
    assert names(segs8, turns)[1::2] == ["Bob", "Bob"]


def test_unknown_voices_are_labelled_consistently(tmp_path):
    db = tmp_path / "only-alice.db"
    with SpeakerID(db=db, model=TEST_MODEL) as sid:
        sid.enroll("Alice", [sorted((CLIPS / A).glob("*.opus"))[i] for i in (0, 1)])
        x, turns = conversation()
        segs = segments(run(sid.stream(), x, 1600))
    assert names(segs, turns) == ["Alice", "unknown-1", "Alice", "unknown-1"]
    assert all(s.score is not None and s.score < 0.2222 for s in segs if not s.enrolled)


def test_without_a_registry_every_voice_is_unknown(tmp_path):
    with SpeakerID(db=tmp_path / "none.db", model=TEST_MODEL) as sid:
        x, turns = conversation()
        events = run(sid.stream(), x, 1600)
    assert not (tmp_path / "none.db").exists()  # a stream never creates a registry
    assert names(segments(events), turns) == ["unknown-1", "unknown-2", "unknown-1", "unknown-2"]


def test_people_enrolled_during_a_stream_are_named_from_then_on(tmp_path):
    """A stream opened on an empty registry names people enrolled while it runs."""
    db = tmp_path / "later.db"
    with SpeakerID(db=db, model=TEST_MODEL) as sid:
        sid.enroll("Alice", [sorted((CLIPS / A).glob("*.opus"))[i] for i in (0, 1)])
        sid.remove("Alice")
        x, turns = conversation()
        half = int(turns[2][1] * SR)  # the second half starts with Alice's second turn
        stream = sid.stream()
        first = segments(stream.feed(x[:half]))
        sid.enroll("Alice", [sorted((CLIPS / A).glob("*.opus"))[i] for i in (0, 1)])
        sid.enroll("Bob", [sorted((CLIPS / B).glob("*.opus"))[i] for i in (0, 1)])
        rest = segments(stream.feed(x[half:]) + stream.close())
    assert names(first, turns[:2]) == ["unknown-1", "unknown-2"]
    assert names(rest, turns[2:]) == ["Alice", "Bob"]


@pytest.mark.parametrize("kind", ["silence", "white noise", "tones"])
def test_no_speech_gives_no_answer(sid, kind):
    rng = np.random.default_rng(0)
    n = 12 * SR
    t = np.arange(n) / SR
    x = {
        "silence": np.zeros(n, np.float32),
        "white noise": 0.1 * rng.standard_normal(n),
        "tones": 0.2 * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 660 * t)),
    }[kind].astype(np.float32)
    events = run(sid.stream(), x, 1600)
    assert [e.type for e in events] == ["ready"]


def test_state_is_bounded(sid):
    """A long monologue is cut into turns of at most MAX_TURN s; the stream keeps only the open
    turn's audio."""
    voice = np.concatenate([trimmed(A, i) for i in range(4)])
    x = np.tile(voice, int(70 * SR // len(voice)) + 1)[: 70 * SR]
    stream = sid.stream()
    held = 0
    segs = []
    for i in range(0, len(x), SR):
        segs += segments(stream.feed(x[i : i + SR]))
        held = max(held, len(stream.tracker._buf))
    segs += segments(stream.close())
    assert held <= (live.MAX_TURN + 1.0) * SR
    assert len(segs) >= 3 and all(s.end - s.start <= live.MAX_TURN + 0.04 for s in segs)
    assert segs[0].speaker == "Alice"


def test_unknown_voices_are_bounded():
    voices = live.UnknownVoices(0.5, limit=3)
    rng = np.random.default_rng(1)
    labels = []
    for _ in range(5):
        v = rng.standard_normal(8)
        labels.append(voices.add(v / np.linalg.norm(v)))
    assert labels == [f"unknown-{k}" for k in range(1, 6)]
    assert len(voices._sums) == 3  # the oldest are forgotten


def test_bad_input_is_refused(sid):
    with pytest.raises(InvalidInputError, match="sample rate must be between 8000 and 192000"):
        sid.stream(sample_rate=4000)
    stream = sid.stream()
    with pytest.raises(InvalidSamplesError, match="NaN or infinity"):
        stream.feed(np.array([0.0, np.nan], np.float32))
    with pytest.raises(InvalidSamplesError, match="int16 or float"):
        stream.feed(np.zeros(10, np.int32))
    limited = sid.stream(max_seconds=1.0)
    limited.feed(np.zeros(SR, np.float32))
    with pytest.raises(LimitExceededError, match="limit of 1 s"):
        limited.feed(np.zeros(1, np.float32))
    stream.close()
    with pytest.raises(InvalidInputError, match="the stream is closed"):
        stream.feed(np.zeros(10, np.float32))
