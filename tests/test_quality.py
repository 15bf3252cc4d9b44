"""Quality measures on synthetic audio: short, silent, clipped, noisy."""

from __future__ import annotations

import numpy as np
import pytest

from speakerid.quality import measure, speech_mask, trim_silence

from .conftest import speechlike


def test_speech_seconds_counts_only_speech_plus_hangover():
    pause = np.zeros(16000 * 2, np.float32)
    x = np.concatenate([pause, speechlike(1.0, seed=1), pause])
    q = measure(x)
    assert q.duration == pytest.approx(5.0)
    assert 1.0 <= q.speech_seconds <= 1.25  # 1 s of speech + up to 2 x 100 ms hangover
    assert len(trim_silence(x)) / 16000 == pytest.approx(q.speech_seconds, abs=0.05)


def test_clean_speech_has_high_snr_and_no_clipping():
    q = measure(speechlike(3.0))
    assert q.clipping == 0.0 and q.snr_db > 25 and q.speech_seconds > 2.5
    assert q.warnings() == []


def test_clipping_ratio():
    x = np.clip(speechlike(3.0, seed=2) * 10, -1, 1)
    q = measure(x)
    assert q.clipping > 0.05
    assert any("clipped" in w for w in q.warnings())


def test_noise_lowers_snr():
    rng = np.random.default_rng(0)
    clean = speechlike(3.0, seed=3)
    noisy = clean + 0.05 * rng.standard_normal(len(clean)).astype(np.float32)
    assert measure(noisy).snr_db < measure(clean).snr_db - 10
    assert any("short speech" in w for w in measure(speechlike(1.5)).warnings())
    assert any("low SNR" in w for w in measure(noisy).warnings())


def test_silence_is_no_speech_and_trim_keeps_it_unchanged():
    x = np.full(16000, 1e-5, np.float32)
    assert not speech_mask(x).any()
    np.testing.assert_array_equal(trim_silence(x), x)
