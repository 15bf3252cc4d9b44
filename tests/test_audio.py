"""Audio loading: formats, sample rates, channels, scaling, and every bad-input error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid import errors
from speakerid.audio.decode import AUDIO_EXTENSIONS, MIN_SECONDS, SAMPLE_RATE, load_audio
from speakerid.cli import app

from .conftest import ROOT, TEST_MODEL, needs_asset, speechlike, wav_bytes


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


# --- FFmpeg (PyAV) fallback: what phones and browsers record ------------------------------
SPEECH = ROOT / "data" / "clips" / "so0003" / "000030012.opus"  # real speech, 3.36 s
OTHER_SPEAKER = ROOT / "data" / "clips" / "so0044" / "000440005.opus"


def ffmpeg_encode(samples: np.ndarray, fmt: str, codec: str, rate: int, rate_in: int = 16000):
    """Encode float ``[n]`` or ``[n, channels]`` audio with PyAV (as a recorder would)."""
    import fractions

    import av

    planar = np.ascontiguousarray(np.atleast_2d(samples.T), dtype=np.float32)
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        ctx = stream.codec_context
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate_in, 0
        frame.time_base = fractions.Fraction(1, rate_in)
        fmt_name = ctx.codec.audio_formats[0].name
        resampler = av.AudioResampler(fmt_name, layout, rate, frame_size=ctx.frame_size or None)
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech():
    return load_audio(SPEECH)


RECORDER_FORMATS = {  # suffix: (container, codec, sample rate)
    "m4a": ("ipod", "aac", 44100),  # phones' voice memos
    "webm": ("webm", "libopus", 48000),  # a browser's MediaRecorder
    "mp4": ("mp4", "aac", 48000),
    "mkv": ("matroska", "libopus", 48000),
}


@pytest.mark.parametrize("suffix", sorted(RECORDER_FORMATS))
def test_ffmpeg_formats_decode_like_the_source(suffix, speech, tmp_path):
    container, codec, rate = RECORDER_FORMATS[suffix]
    data = ffmpeg_encode(speech.samples, container, codec, rate)
    with pytest.raises(sf.LibsndfileError):  # so this really is the FFmpeg path
        sf.info(io.BytesIO(data))
    path = tmp_path / f"probe.{suffix}"
    path.write_bytes(data)
    clip = load_audio(path)
    assert (clip.original_sample_rate, clip.channels, clip.source) == (rate, 1, str(path))
    assert abs(clip.duration - speech.duration) <= 0.005  # encoder delay/padding removed
    n = min(len(clip.samples), len(speech.samples))
    assert np.corrcoef(clip.samples[:n], speech.samples[:n])[0, 1] > 0.99  # aligned, lossy
    assert clip.samples.dtype == np.float32 and np.abs(clip.samples).max() <= 1.0
    from_bytes = load_audio(data)  # in memory, as before
    np.testing.assert_array_equal(from_bytes.samples, clip.samples)
    assert from_bytes.sha256 == clip.sha256 and from_bytes.source == "<bytes>"


def test_ffmpeg_integer_pcm_is_scaled_like_libsndfile_and_channels_averaged():
    rng = np.random.default_rng(3)
    ints = rng.integers(-20000, 20000, size=(16000, 2), dtype=np.int16)
    floats = ints.astype(np.float32) / 32768.0
    for codec in ("pcm_s16le", "pcm_s32le", "flac"):
        clip = load_audio(ffmpeg_encode(floats, "matroska", codec, 16000))
        assert clip.channels == 2
        np.testing.assert_allclose(clip.samples, floats.mean(axis=1), atol=1e-7, err_msg=codec)


def test_ffmpeg_stereo_is_averaged(speech):
    stereo = np.stack([speech.samples, 0.5 * speech.samples], axis=1)
    clip = load_audio(ffmpeg_encode(stereo, "ipod", "aac", 48000))
    assert clip.channels == 2
    n = min(len(clip.samples), len(speech.samples))
    gain = float(clip.samples[:n] @ speech.samples[:n] / (speech.samples[:n] @ speech.samples[:n]))
    assert gain == pytest.approx(0.75, abs=0.02)  # (1 + 0.5) / 2


@needs_asset
def test_ffmpeg_decoded_speech_keeps_the_voice(speech):
    """The real-voice model hears the same speaker in every re-encoded copy."""
    from speakerid.embedding.embedder import Embedder

    emb = Embedder(TEST_MODEL)
    ref = emb.embed(speech).vector
    other = float(ref @ emb.embed(load_audio(OTHER_SPEAKER)).vector)
    for suffix, (container, codec, rate) in RECORDER_FORMATS.items():
        copy = emb.embed(ffmpeg_encode(speech.samples, container, codec, rate)).vector
        assert float(ref @ copy) > 0.97 > other + 0.5, suffix


def test_corrupt_ffmpeg_files_give_one_line_decode_errors(speech, tmp_path, tiny_ckpt):
    m4a = ffmpeg_encode(speech.samples, "ipod", "aac", 44100)
    with pytest.raises(errors.AudioDecodeError, match="not a readable audio file"):
        load_audio(m4a[: len(m4a) // 2])  # truncated: the index (moov) is at the end
    garbled = bytearray(m4a)
    garbled[2000:22000] = np.random.default_rng(0).bytes(20000)
    with pytest.raises(errors.AudioDecodeError, match=r"corrupt or unsupported audio \(mov: "):
        load_audio(bytes(garbled))
    webm = ffmpeg_encode(speech.samples, "webm", "libopus", 48000)
    files = {
        "half.m4a": m4a[: len(m4a) // 2],
        "garbled.m4a": bytes(garbled),
        "head.webm": webm[:200],
    }
    runner = CliRunner()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        result = runner.invoke(app, ["embed", str(tmp_path / name), "--model", str(tiny_ckpt)])
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}: "), lines
        assert result.stdout == ""


def test_container_without_audio_stream():
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        video = out.add_stream("ffv1", rate=5)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        for _ in range(3):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8))))
        out.mux(video.encode(None))
    with pytest.raises(errors.AudioDecodeError, match="no audio stream in this matroska file"):
        load_audio(buf.getvalue())


def test_pyav_is_imported_only_for_what_libsndfile_cannot_read(speech, tmp_path):
    import subprocess
    import sys

    (tmp_path / "a.m4a").write_bytes(ffmpeg_encode(speech.samples, "ipod", "aac", 16000))
    code = (
        "import sys; from speakerid.audio.decode import load_audio; "
        f"load_audio(r'{SPEECH}'); print('av' in sys.modules); "
        f"load_audio(r'{tmp_path / 'a.m4a'}'); print('av' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "True"]


def test_folder_scans_include_phone_and_browser_formats():
    for suffix in (".m4a", ".aac", ".webm", ".mp4", ".mka", ".mkv", ".wma", ".wav", ".opus"):
        assert suffix in AUDIO_EXTENSIONS
