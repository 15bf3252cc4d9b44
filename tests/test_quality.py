"""Quality measures: speech seconds (Silero) on real speech, clipping and SNR, warnings."""

from __future__ import annotations

import numpy as np
import pytest

from speakerid.audio.quality import Quality, energy_mask, measure, trim_silence

from .conftest import real_speech


def test_speech_seconds_count_only_the_speech():
    speech = real_speech(0)
    pause = np.zeros(16000 * 2, np.float32)
    x = np.concatenate([pause, speech, pause])
    q = measure(x)
    assert q.duration == pytest.approx(len(speech) / 16000 + 4.0)
    assert 1.8 < q.speech_seconds < 2.8  # 3.36 s utterance with leading/trailing silence
    assert q.speech_seconds == pytest.approx(measure(speech).speech_seconds, abs=0.1)
    # one speech segment; trimming keeps TRIM_PAD_MS (300 ms) instead of 30 ms on each side
    assert len(trim_silence(x)) / 16000 == pytest.approx(q.speech_seconds + 0.54, abs=1e-3)


def test_clean_speech_has_high_snr_and_no_clipping():
    q = measure(real_speech(1))
    assert q.clipping == 0.0 and q.snr_db > 25 and q.speech_seconds > 2.5
    assert q.warnings() == []


def test_clipping_ratio():
    x = np.clip(real_speech(3) * 10, -1, 1)
    q = measure(x)
    assert q.clipping > 0.05
    assert any("clipped" in w for w in q.warnings())


def test_noise_lowers_snr():
    rng = np.random.default_rng(0)
    clean = real_speech(3)
    noisy = clean + 0.05 * rng.standard_normal(len(clean)).astype(np.float32)
    assert measure(noisy).snr_db < measure(clean).snr_db - 10
    assert any("low SNR" in w for w in measure(noisy).warnings())
    assert measure(noisy).speech_seconds > 2.0  # still speech, only noisier


def test_short_speech_warning():
    assert any("short speech" in w for w in Quality(3.0, 1.5, 0.0, 30.0).warnings())
    assert Quality(3.0, 2.5, 0.0, 30.0).warnings() == []


def test_silence_is_no_speech_and_trim_keeps_it_unchanged():
    x = np.full(16000, 1e-5, np.float32)
    assert not energy_mask(x).any()
    assert measure(x).speech_seconds == 0.0
    np.testing.assert_array_equal(trim_silence(x), x)
