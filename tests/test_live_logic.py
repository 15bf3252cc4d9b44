"""The live tracker's rules with a fake embedder that knows who speaks (no model): turns end at
pauses and at changes of voice (cut near the change), partials come at most every STEP s from
enough speech, any chunking gives the same events, and unknown voices keep their labels.

Real speech drives the VAD; each voice is marked by a tiny DC offset (+/- 0.004, inaudible to
the VAD), and the fake embedding of a stretch is the share of each voice in it, so a clip
straddling a change scores in between, as a real embedding does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from speakerid.tracking import live
from speakerid.tracking.live import LiveTracker

from .conftest import CLIPS

SR = 16000
DC = 0.004


def speech(speaker: str, i: int) -> np.ndarray:
    from speakerid.audio.vad import speech_segments

    x, _ = sf.read(sorted((CLIPS / speaker).glob("*.opus"))[i], dtype="float32")
    segs = speech_segments(x)
    return x[segs[0][0] : segs[-1][1]]


MARKS = (1.0, -1.0, 3.0)  # each voice's DC offset, in units of DC


def voice(k: int, seconds: float) -> np.ndarray:
    """About ``seconds`` of continuous real speech marked as voice ``k``."""
    spk = ("so0044", "so0113", "so0094")[k]
    x = np.concatenate([speech(spk, i) for i in range(4)])
    x = np.tile(x, int(seconds * SR // len(x)) + 1)[: int(seconds * SR)]
    return (x - x.mean() + MARKS[k] * DC).astype(np.float32)


def fake_embed(x: np.ndarray) -> np.ndarray:
    """Which voices ``x`` holds, from its mean (speech averages out; silence reads as none) ->
    a unit vector: one axis per voice, falling off linearly between the marks, and a floor."""
    m = float(np.mean(x)) / DC
    v = np.array([max(0.0, 1.0 - abs(m - c) / 2.0) for c in MARKS] + [0.05])
    return (v / np.linalg.norm(v)).astype(np.float32)


def fake_identify(rows: np.ndarray) -> list:
    """A registry of Alice (axis 0) and Bob (axis 1) at threshold 0.5; voice 2 is unknown."""
    out = []
    for v in rows:
        cands = sorted(
            (SimpleNamespace(speaker=n, score=float(v[j])) for j, n in ((0, "Alice"), (1, "Bob"))),
            key=lambda c: -c.score,
        )
        ok = cands[0].score >= 0.5
        out.append(
            SimpleNamespace(
                accepted=ok,
                speaker=cands[0].speaker if ok else None,
                score=cands[0].score,
                candidates=cands,
            )
        )
    return out


def run(x: np.ndarray, chunk: int, identify=fake_identify) -> list:
    tracker = LiveTracker(fake_embed, identify, 0.5)
    events = []
    for i in range(0, len(x), chunk):
        events += tracker.feed(x[i : i + chunk])
    return events + tracker.close()


def segs(events) -> list:
    return [e for e in events if e.type == "segment"]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def test_the_fake_embedder_sees_who_speaks():
    a, b, c = voice(0, 3), voice(1, 3), voice(2, 3)
    assert np.argmax(fake_embed(a)[:3]) == 0
    assert np.argmax(fake_embed(b)[:3]) == 1
    assert np.argmax(fake_embed(c)[:3]) == 2
    half = fake_embed(np.concatenate([a[:SR], b[:SR]]))
    assert half[0] == pytest.approx(half[1], rel=0.2)


def test_a_pause_ends_a_turn_and_names_follow_the_voices():
    x = np.concatenate([voice(0, 4), silence(1), voice(1, 4), silence(1), voice(2, 3), silence(1)])
    out = segs(run(x, 1600))
    assert [(s.speaker, s.enrolled) for s in out] == [
        ("Alice", True),
        ("Bob", True),
        ("unknown-1", False),
    ]
    assert out[0].start == pytest.approx(0.0, abs=0.05)
    assert out[0].end == pytest.approx(4.0, abs=0.1)
    assert out[1].start == pytest.approx(5.0, abs=0.1)


def test_a_change_of_voice_in_continuous_speech_ends_the_turn_near_the_change():
    x = np.concatenate([voice(0, 5), voice(1, 5), silence(1)])
    events = run(x, 1600)
    out = segs(events)
    assert [s.speaker for s in out] == ["Alice", "Bob"]
    assert out[0].end == pytest.approx(5.0, abs=0.75)
    assert out[1].start == out[0].end
    # the change is noticed within about two steps of a full clip past it
    first_bob = next(e for e in events if e.type == "partial" and e.speaker == "Bob")
    assert first_bob.end - 5.0 <= live.RECENT + 2 * live.STEP


def test_partials_need_enough_speech_and_come_at_most_every_step():
    x = np.concatenate([voice(0, 6), silence(1)])
    parts = [e for e in run(x, 1600) if e.type == "partial"]
    assert parts[0].end - parts[0].start >= 1.0
    assert all(q.end - p.end >= live.STEP - 1e-9 for p, q in zip(parts, parts[1:]))
    assert {p.speaker for p in parts} == {"Alice"}
    short = np.concatenate([voice(0, 0.6), silence(1)])
    out = run(short, 1600)
    assert [e.type for e in out] == ["segment"]  # too little speech: no partial, no name
    assert out[0].speaker is None and out[0].score is None


def test_any_chunking_gives_the_same_events():
    x = np.concatenate([voice(0, 3), voice(1, 3), silence(0.7), voice(0, 2), silence(1)])
    one = [e.to_dict() for e in run(x, 1)]
    odd = [e.to_dict() for e in run(x, 4099)]
    whole = [e.to_dict() for e in run(x, len(x))]
    assert one == odd == whole
    assert [e["speaker"] for e in one if e["type"] == "segment"] == ["Alice", "Bob", "Alice"]


def test_unknown_voices_keep_their_labels_without_a_registry():
    x = np.concatenate([voice(0, 3), silence(1), voice(1, 3), silence(1), voice(0, 3), silence(1)])
    out = segs(run(x, 1600, identify=None))
    assert [s.speaker for s in out] == ["unknown-1", "unknown-2", "unknown-1"]
    assert all(not s.enrolled and s.score is None for s in out)


def test_segments_are_sorted_and_never_overlap():
    x = np.concatenate(
        [voice(0, 2.5), voice(1, 2.5), silence(0.3), voice(0, 3), voice(2, 3), silence(1)]
    )
    out = segs(run(x, 800))
    assert len(out) >= 3
    for s, t in zip(out, out[1:]):
        assert s.start < s.end <= t.start < t.end


def test_shedding_partials_keeps_every_final_segment():
    """A front behind real time feeds with partials=False: no partial is computed for that
    audio (counted in ``shed``), and the final segments of pause-separated turns are the same."""
    x = np.concatenate([voice(0, 4), silence(1), voice(1, 4), silence(1)])
    full = run(x, 1600)
    tracker = LiveTracker(fake_embed, fake_identify, 0.5)
    shed = []
    for i in range(0, len(x), 1600):
        shed += tracker.feed(x[i : i + 1600], partials=i >= 3 * SR)  # behind for 3 s
    shed += tracker.close()
    assert [e.to_dict() for e in segs(shed)] == [e.to_dict() for e in segs(full)]
    assert not any(e.type == "partial" and e.end <= 3.0 for e in shed)
    assert any(e.type == "partial" and e.end <= 3.0 for e in full)
    assert tracker.shed == sum(1 for e in full if e.type == "partial" and e.end <= 3.0)
