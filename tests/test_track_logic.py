"""Speaker tracking logic on synthetic data: smoothing, voices, segments, names, RTTM, streaming
(no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speakerid.embedding.windows import Analysis, blocks, layout, read_spans
from speakerid.errors import InvalidInputError
from speakerid.results import TrackResult
from speakerid.tracking import naming, pipeline, segments, voices

from .conftest import wav_bytes

SR = 16000


def _directions(k: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
    return q.T  # k orthonormal directions


def conversation(turns, noise=0.6, seed=0, window=1.5, hop=0.75, pause=0.6):
    """An Analysis of synthetic windows: ``turns`` = [(voice, seconds), ...], each turn its own
    speech segment; window vectors = the voice's direction plus noise."""
    rng = np.random.default_rng(seed)
    dirs = _directions(max(v for v, _ in turns) + 1, seed=seed)
    speech, truth, t = [], [], int(0.5 * SR)
    for v, sec in turns:
        speech.append((t, t + int(sec * SR)))
        truth.append(v)
        t += int((sec + pause) * SR)
    spans = layout(speech, window, hop)
    owner = [next(truth[i] for i, (a, b) in enumerate(speech) if a <= s < b) for s, _ in spans]
    x = dirs[owner] + noise * rng.standard_normal((len(spans), dirs.shape[1])) / np.sqrt(
        dirs.shape[1]
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    an = Analysis("conv.wav", t / SR, speech, np.asarray(spans), x.astype(np.float32))
    return an, np.asarray(owner)


TURNS = [(0, 6), (1, 5), (0, 4), (2, 7), (1, 3), (2, 5), (0, 6), (1, 4), (2, 4), (0, 5)] * 2


def test_layout_spreads_windows_inside_each_segment():
    spans = layout([(0, 16000), (32000, 32000 + 40000)], 1.5, 0.75)
    assert spans[0] == (0, 16000)  # shorter than a window: one window
    inner = spans[1:]
    assert inner[0][0] == 32000 and inner[-1][1] == 72000  # from start to end
    assert all(b - a == 24000 for a, b in inner)
    starts = [a for a, _ in inner]
    assert max(np.diff(starts)) <= 12000  # at most one hop apart


def test_blocks_cut_long_segments_and_bound_each_run():
    runs = blocks([(0, 50 * SR), (51 * SR, 55 * SR)], block=20.0)
    assert all(sum(b - a for a, b in run) <= 20 * SR for run in runs)
    pieces = [p for run in runs for p in run]
    assert pieces[0][0] == 0 and pieces[2][1] == 50 * SR and pieces[-1] == (51 * SR, 55 * SR)


def test_viterbi_removes_isolated_flips_but_keeps_real_changes():
    scores = np.array([[1, 0]] * 5 + [[0.4, 0.6]] + [[1, 0]] * 5 + [[0, 1]] * 6, float)
    same = np.ones(len(scores), bool)
    path = segments.viterbi(scores, same, switch_in=0.4, switch_gap=0.2)
    assert path.tolist() == [0] * 11 + [1] * 6
    assert segments.viterbi(scores, same, 0.0, 0.0)[5] == 1  # no cost: the flip stays


def test_find_voices_recovers_three_voices_consistently():
    an, truth = conversation(TURNS)
    labels = voices.find_voices(an)
    assert len(set(labels)) == 3
    for v in range(3):  # each true voice is one label, and each label one voice
        assert len(set(labels[truth == v])) == 1
    assert labels[0] == 0 and labels[np.argmax(truth == 1)] == 1  # numbered by first turn


def test_find_voices_with_a_given_number_and_a_single_voice():
    an, truth = conversation(TURNS)
    assert len(set(voices.find_voices(an, num=2))) == 2
    one, _ = conversation([(0, 5), (0, 4), (0, 6)])
    assert set(voices.find_voices(one)) == {0}


def test_segments_are_sorted_disjoint_and_bridge_short_pauses():
    an, truth = conversation(TURNS, pause=0.3)
    labels = voices.find_voices(an)
    segs = segments.to_segments(an.windows, an.speech, labels)
    assert all(a < b for a, b, _, _ in segs)
    assert all(segs[i][1] <= segs[i + 1][0] for i in range(len(segs) - 1))
    # consecutive turns of different voices stay apart; a 0.3 s pause inside one voice's
    # speech is bridged
    bridged = segments.to_segments(
        np.array([[0, 24000], [28800, 52800]]), [(0, 24000), (28800, 52800)], np.array([0, 0])
    )
    assert bridged == [(0, 52800, 0, [0, 1])]
    apart = segments.to_segments(
        np.array([[0, 24000], [40000, 64000]]), [(0, 24000), (40000, 64000)], np.array([0, 0])
    )
    assert len(apart) == 2


def test_overlapping_windows_split_at_the_midpoint_of_their_centres():
    w = np.array([[0, 24000], [12000, 36000]])
    segs = segments.to_segments(w, [(0, 36000)], np.array([0, 1]))
    assert [(a, b, v) for a, b, v, _ in segs] == [(0, 18000, 0), (18000, 36000, 1)]


def test_result_names_unknown_voices_in_order_of_appearance_and_json_contract():
    an, truth = conversation(TURNS)
    names = {
        0: naming.VoiceName(None, 0.1, "bob"),
        1: naming.VoiceName("alice", 0.71, "alice"),
        2: naming.VoiceName(None, 0.05, "alice"),
    }
    res = pipeline.result_from_labels(an, truth, names, 0.3)
    assert [s.speaker for s in res.speakers] == ["unknown-1", "alice", "unknown-2"]
    assert [s.enrolled for s in res.speakers] == [False, True, False]
    d = res.to_dict()
    assert list(d) == ["file", "duration", "segments", "speakers", "threshold"]
    assert d["threshold"] == 0.3
    seg = d["segments"][1]
    assert list(seg) == ["start", "end", "speaker", "enrolled", "score"]
    assert seg["speaker"] == "alice" and seg["enrolled"] is True and seg["score"] == 0.71
    starts = [s["start"] for s in d["segments"]]
    assert starts == sorted(starts)
    for spk in d["speakers"]:
        total = sum(s["end"] - s["start"] for s in d["segments"] if s["speaker"] == spk["speaker"])
        assert spk["seconds"] == pytest.approx(total, abs=0.01)
    assert list(d["speakers"][0]) == ["speaker", "enrolled", "seconds"]


def test_voices_with_the_same_name_merge_only_when_they_verify_as_one():
    labels = np.array([0, 1, 2, 1, 0, 2, 3])
    a, b = np.array([1.0, 0.0]), np.array([0.8, 0.6])  # cosine 0.8
    names = {
        0: naming.VoiceName("alice", 0.5, "alice", a),
        1: naming.VoiceName(None, 0.1, "bob", b),
        2: naming.VoiceName("alice", 0.6, "alice", b),  # alice split in two: merges
        3: naming.VoiceName("alice", 0.4, "alice", np.array([-0.6, 0.8])),  # someone else
    }
    merged, kept = naming.merge_same_names(labels, names, threshold=0.5)
    assert merged.tolist() == [2, 1, 2, 1, 2, 2, 3]
    assert sorted(kept) == [1, 2, 3] and kept[2].score == 0.6 and kept[2].name == "alice"
    assert kept[3].name is None and kept[3].candidate == "alice"  # stays unknown


def test_naming_needs_the_threshold_and_a_margin_over_the_runner_up():
    from speakerid.results import Candidate, IdentifyResult

    def identify(vectors):
        return [
            IdentifyResult(
                "a", "alice", 0.5, True, 0.3, [Candidate("alice", 0.5), Candidate("bob", 0.2)]
            ),
            IdentifyResult(
                "b", "bob", 0.45, True, 0.3, [Candidate("bob", 0.45), Candidate("carol", 0.4)]
            ),
            IdentifyResult(
                "c", None, 0.2, False, 0.3, [Candidate("carol", 0.2), Candidate("bob", 0.0)]
            ),
        ]

    class Emb:
        def embed_clips(self, clips):
            from speakerid.embedding.embedder import Embedding

            return [Embedding(np.ones(4, np.float32) / 2, "m", c.source, 1.0, "") for c in clips]

    from speakerid.audio.decode import AudioClip

    clips = {v: AudioClip(np.zeros(16000, np.float32), f"v{v}", SR, 1, "") for v in range(3)}
    out = naming.name_voices(Emb(), clips, identify, margin=0.1)
    assert out[0] == naming.VoiceName("alice", 0.5, "alice")
    assert out[1].name is None and out[1].candidate == "bob"  # 0.05 ahead only: ambiguous
    assert out[2].name is None and out[2].score == 0.2


def test_rttm_lines_follow_the_nist_format():
    res = TrackResult(
        "my meeting.wav",
        10.0,
        [
            pipeline.TrackSegment(0.5, 2.25, "Mary Ann", True, 0.6),
            pipeline.TrackSegment(3.0, 4.0, "unknown-1", False, 0.1),
        ],
        [],
    )
    lines = segments.rttm_lines("my meeting", res.segments).splitlines()
    assert lines[0] == "SPEAKER my_meeting 1 0.500 1.750 <NA> <NA> Mary_Ann <NA> <NA>"
    assert lines[1].split()[3:5] == ["3.000", "1.000"] and lines[1].split()[7] == "unknown-1"
    assert all(len(line.split()) == 10 for line in lines)


def test_counts_are_checked():
    with pytest.raises(InvalidInputError, match="not both"):
        pipeline.check_counts(2, 3)
    with pytest.raises(InvalidInputError, match="at least 1"):
        pipeline.check_counts(0, None)
    assert pipeline.check_counts(None, None) == (None, pipeline.MAX_SPEAKERS)
    assert pipeline.check_counts(None, 4) == (None, 4)


def test_streamed_audio_equals_load_audio_for_resampled_stereo(tmp_path, monkeypatch):
    from speakerid.audio import stream
    from speakerid.audio.decode import load_audio

    monkeypatch.setattr(stream, "BLOCK_FRAMES", 7001)  # many blocks, odd sizes
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal((44100 * 3 + 17, 2))).astype(np.float32)
    path = tmp_path / "s.wav"
    path.write_bytes(wav_bytes(x, 44100))
    streamed = np.concatenate(list(stream.stream_audio(path)))
    whole = load_audio(path).samples
    assert len(streamed) == len(whole)
    assert np.abs(streamed - whole).max() < 1e-6


def test_stream_refuses_what_load_audio_refuses(tmp_path):
    from speakerid.audio.stream import stream_audio
    from speakerid.errors import AudioFileNotFoundError, SilentAudioError

    with pytest.raises(AudioFileNotFoundError):
        list(stream_audio(tmp_path / "missing.wav"))
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), SR)
    with pytest.raises(SilentAudioError):
        list(stream_audio(silent))


def test_vad_stream_equals_whole_signal_probabilities():
    from speakerid.audio.vad import VadStream, speech_probs

    from .conftest import real_speech

    x = real_speech(0)
    v = VadStream()
    parts = [v.push(x[i : i + 777]) for i in range(0, len(x), 777)] + [v.flush()]
    assert np.array_equal(np.concatenate(parts), speech_probs(x))


def test_read_spans_returns_each_span_in_the_given_order(tmp_path):
    x = np.arange(SR * 3, dtype=np.float32) / (SR * 3) - 0.5
    path = tmp_path / "ramp.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    spans = [(30000, 31000), (100, 200), (150, 40000)]
    out = read_spans(path, spans)
    for (a, b), got in zip(spans, out):
        assert np.array_equal(got, x[a:b])
