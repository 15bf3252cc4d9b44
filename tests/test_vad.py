"""Silero VAD on ONNX Runtime: real speech vs noise, music, silence; Silero's own segments."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from speakerid import errors
from speakerid.audio import vad
from speakerid.audio.quality import TRIM_PAD_MS, measure, trim_silence

from .conftest import VOICE_CLIPS, music, noise_floor, pink, real_speech, speechlike, white

SR = 16000


NOT_SPEECH = {
    "white noise": white,
    "pink noise": pink,
    "music": music,
    "noise floor -60 dBFS": noise_floor,
    "speechlike() test signal": lambda: speechlike(3.0),
}


@pytest.mark.parametrize("i", range(len(VOICE_CLIPS)))
def test_real_speech_has_most_of_its_duration_as_speech(i):
    x = real_speech(i)
    seconds = vad.speech_seconds(x)
    assert 1.5 < seconds < 0.9 * len(x) / SR, seconds  # leading/trailing silence excluded
    segs = vad.speech_segments(x)
    assert segs and all(0 <= a < b <= len(x) for a, b in segs)
    assert seconds == pytest.approx(sum(b - a for a, b in segs) / SR)


@pytest.mark.parametrize("kind", NOT_SPEECH)
def test_noise_music_and_silence_are_not_speech(kind):
    x = NOT_SPEECH[kind]()
    assert vad.speech_seconds(x) < 0.3, kind
    assert measure(x).speech_seconds < 0.3  # what the enrollment and probe gates see


def test_speech_padded_with_silence_counts_the_speech_only():
    x = real_speech(0)
    pause = noise_floor(2.0)
    padded = np.concatenate([pause, x, pause])
    alone = vad.speech_seconds(x)
    assert vad.speech_seconds(padded) == pytest.approx(alone, abs=0.1)
    kept = vad.keep_speech(padded)
    assert len(kept) == pytest.approx(alone * SR, abs=0.1 * SR)
    (start, end), *_ = vad.speech_segments(padded)  # one segment; --vad keeps 300 ms around it
    pad = TRIM_PAD_MS * 16 - 30 * 16
    np.testing.assert_array_equal(trim_silence(padded), padded[start - pad : end + pad])
    np.testing.assert_array_equal(trim_silence(noise_floor()), noise_floor())  # no speech: kept
    assert len(vad.keep_speech(noise_floor())) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside silero_vad's loader
def test_same_segments_as_silero_get_speech_timestamps():
    """Our ONNX loop and hysteresis reproduce the silero-vad package's reference exactly."""
    torch = pytest.importorskip("torch")
    silero = pytest.importorskip("silero_vad")
    model = silero.load_silero_vad(onnx=True)
    for x in (real_speech(2), real_speech(5), np.concatenate([real_speech(1), white(1.0)])):
        ref = silero.get_speech_timestamps(torch.from_numpy(x), model)
        assert vad.speech_segments(x) == [(d["start"], d["end"]) for d in ref]


def test_hysteresis_rules_on_probabilities():
    w = vad.WINDOW  # 32 ms per probability
    probs = np.array([0.0] * 5 + [0.9] * 20 + [0.4] * 2 + [0.9] * 10 + [0.1] * 10 + [0.6] * 3)
    n = len(probs) * w
    # 0.4 is above the 0.35 exit threshold: one segment through it; 10 windows (320 ms) below
    # 0.35 end it; the last 3 windows (96 ms) are shorter than 250 ms and dropped; 30 ms pad
    pad = 30 * 16
    assert vad.segments_from_probs(probs, n) == [(5 * w - pad, 37 * w + pad)]
    short_gap = np.array([0.9] * 10 + [0.1] * 2 + [0.9] * 10)  # 64 ms < 100 ms: no split
    assert vad.segments_from_probs(short_gap, len(short_gap) * w) == [(0, 22 * w)]
    long_gap = np.array([0.9] * 10 + [0.1] * 6 + [0.9] * 10)  # 192 ms: two segments
    assert len(vad.segments_from_probs(long_gap, len(long_gap) * w)) == 2
    assert vad.segments_from_probs(np.zeros(0), 0) == []
    assert vad.speech_seconds(np.zeros(0, np.float32)) == 0.0


def test_missing_onnxruntime_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    vad._session.cache_clear()
    try:
        with pytest.raises(errors.VadUnavailableError, match="needs onnxruntime"):
            vad.speech_segments(white())
    finally:
        monkeypatch.undo()
        vad._session.cache_clear()


def test_session_is_loaded_once():
    assert vad._session() is vad._session()


def test_missing_model_is_a_typed_one_line_error(monkeypatch):
    monkeypatch.setattr(vad.importlib.util, "find_spec", lambda name: None)
    vad._session.cache_clear()
    try:
        with pytest.raises(errors.VadUnavailableError, match="pip install silero-vad") as exc:
            vad.speech_seconds(white())
        assert "\n" not in str(exc.value) and exc.value.exit_code == 2
    finally:
        monkeypatch.undo()
        vad._session.cache_clear()


def test_vad_does_not_import_torch_or_the_silero_package():
    code = (
        "import sys, numpy as np; from speakerid.audio import vad; "
        "s = vad.speech_seconds(np.zeros(16000, np.float32)); "
        "print(s, 'torch' in sys.modules, 'silero_vad' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0.0", "False", "False"]
