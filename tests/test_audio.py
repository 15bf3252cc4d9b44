"""Audio loading: formats, sample rates, channels, scaling, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid import errors
from speakerid.audio import MIN_SECONDS, SAMPLE_RATE, load_audio
from speakerid.cli import app

from .conftest import speechlike, wav_bytes


def test_pcm16_is_scaled_by_32768_exactly():
    ints = np.array([0, 1, -1, 16384, -32768, 32767] * 2000, dtype=np.int16)
    clip = load_audio(wav_bytes(ints, subtype="PCM_16"))
    np.testing.assert_array_equal(clip.samples, ints.astype(np.float32) / 32768.0)
    assert clip.duration == pytest.approx(len(ints) / SAMPLE_RATE)
    assert clip.source == "<bytes>"
    assert len(clip.sha256) == 64


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
        ("OGG", "OPUS"),
        ("MP3", "MPEG_LAYER_III"),
        ("WAV", "FLOAT"),
        ("WAV", "PCM_24"),
    ],
)
def test_compressed_and_float_formats_decode(fmt, subtype, tmp_path):
    x = speechlike(1.5)
    path = tmp_path / f"a.{fmt.lower()}"
    path.write_bytes(wav_bytes(x, 16000, subtype=subtype, fmt=fmt))
    clip = load_audio(path)
    assert abs(clip.duration - 1.5) < 0.08  # codecs may pad a frame
    lossless = subtype in ("PCM_16", "FLOAT", "PCM_24")
    if lossless:
        np.testing.assert_allclose(clip.samples, x, atol=1.0 / 32768)


def test_stereo_is_downmixed_by_averaging_channels():
    left, right = speechlike(1.0, seed=1), speechlike(1.0, seed=2)
    clip = load_audio(wav_bytes(np.stack([left, right], axis=1), subtype="FLOAT"))
    assert clip.channels == 2
    np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_are_resampled_to_16k(rate):
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    clip = load_audio(wav_bytes(tone, rate, subtype="FLOAT"))
    assert clip.original_sample_rate == rate
    assert len(clip.samples) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over 1 s: the tone survives


def test_missing_file(tmp_path):
    with pytest.raises(errors.AudioFileNotFoundError, match="no such file"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(errors.AudioDecodeError, match="is a directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize(
    "data", [b"hello, this is text, not audio" * 10, b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 8]
)
def test_non_audio_and_corrupt_data(data):
    with pytest.raises(errors.AudioDecodeError, match="not a readable audio file|corrupt"):
        load_audio(data)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(errors.EmptyAudioError, match="0 bytes"):
        load_audio(path)


def test_wav_without_samples():
    with pytest.raises(errors.EmptyAudioError, match="no samples"):
        load_audio(wav_bytes(np.zeros(0, np.float32)))


def test_nan_and_inf_samples():
    x = speechlike(1.0)
    x[100] = np.nan
    with pytest.raises(errors.InvalidSamplesError, match="NaN or infinite"):
        load_audio(wav_bytes(x, subtype="FLOAT"))
    x[100] = np.inf
    with pytest.raises(errors.InvalidSamplesError):
        load_audio(wav_bytes(x, subtype="FLOAT"))


def test_too_short_states_the_minimum():
    with pytest.raises(
        errors.AudioTooShortError, match=rf"0\.30 s long; at least {MIN_SECONDS:.2f} s"
    ):
        load_audio(wav_bytes(speechlike(0.3)))


def test_all_silent_audio():
    with pytest.raises(errors.SilentAudioError, match="silent"):
        load_audio(wav_bytes(np.zeros(16000, np.float32)))
    quiet = np.full(16000, 2, dtype=np.int16)  # 2 LSB of DC: still silence
    with pytest.raises(errors.SilentAudioError):
        load_audio(wav_bytes(quiet))


def test_cli_bad_inputs_give_one_line_error_and_exit_2(tmp_path, tiny_ckpt):
    bad = {
        "missing.wav": None,
        "text.wav": b"not audio at all" * 20,
        "empty.wav": b"",
        "short.wav": wav_bytes(speechlike(0.2)),
        "silent.wav": wav_bytes(np.zeros(16000, np.float32)),
        "nan.wav": wav_bytes(np.full(16000, np.nan, np.float32), subtype="FLOAT"),
    }
    runner = CliRunner()
    for name, data in bad.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        result = runner.invoke(app, ["embed", str(path), "--model", str(tiny_ckpt)])
        assert result.exit_code == 2, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
        assert "Traceback" not in result.output


def test_soundfile_sees_mp3_support():
    assert "MP3" in sf.available_formats()
