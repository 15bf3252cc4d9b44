"""Audio loading: any file or bytes we can decode → mono float32 at 16 kHz in [-1, 1].

Decoders: libsndfile first (WAV/FLAC/OGG/Opus/MP3, exact and fast), then FFmpeg through PyAV for
everything else phones and browsers record (m4a/AAC, WebM/Opus, MP4, Matroska, WMA, ...). PyAV
is imported only when libsndfile cannot read the data.

Rules (documented in docs/cli.md, "Audio"), the same for both decoders:
- integer PCM is scaled by its full-scale value (int16 / 32768), exactly as the official pipeline;
- multi-channel audio is downmixed by averaging the channels (no channel selection);
- any other sample rate is resampled to 16 kHz with torchaudio's default resampler (windowed
  sinc, ``torchaudio.functional.resample``), restated in numpy (``speakerid.audio.resample``) so
  that loading audio never imports torch;
- audio shorter than ``MIN_SECONDS``, empty, containing NaN/inf, or all-silent (peak below
  ``SILENCE_PEAK``, i.e. -80 dBFS) is refused with a typed error;
- audio longer than the decode limit (:func:`decode_limit`) is refused with
  ``LimitExceededError`` as soon as the decoded samples cross it: a header need not tell the
  length (WebM, streamed MP3/AAC), so a few MB of low-bitrate Opus cannot make us decode hours
  into memory. Memory is bounded by the limit, not by the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

from ..errors import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioTooShortError,
    EmptyAudioError,
    InvalidSamplesError,
    LimitExceededError,
    SilentAudioError,
)

log = logging.getLogger("speakerid")

SAMPLE_RATE = 16000
#: Shortest audio we embed. The network needs 9 fbank frames (0.105 s) to produce statistics at
#: all; below half a second the embedding carries too little speaker information to be useful.
MIN_SECONDS = 0.5
#: Peak amplitude below which audio counts as silent (-80 dBFS, about 3 LSB of 16-bit PCM).
SILENCE_PEAK = 1e-4

#: File suffixes that folder scans (enroll-dir, identify DIR, evaluate, train) treat as audio.
AUDIO_EXTENSIONS = {
    # libsndfile
    ".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".aiff", ".aif",
    # FFmpeg (PyAV): phones, browsers (MediaRecorder), video containers
    ".m4a", ".m4b", ".aac", ".mp4", ".3gp", ".webm", ".weba", ".mka", ".mkv", ".wma", ".amr",
    ".caf",
}  # fmt: skip
#: Samples per full scale of FFmpeg's integer sample formats (planar or packed).
_INT_FULL_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}
#: Decoded mono samples per stored chunk (32 MiB of float32, 175 s at 48 kHz).
_CHUNK = 1 << 23


@dataclass(frozen=True)
class DecodeLimit:
    """The most seconds of audio one file may hold, and what a refusal tells the user to do."""

    seconds: float
    advice: str  # e.g. "this server accepts at most 300 s per file"

    def frames(self, rate: int) -> int:
        """Most frames at ``rate`` Hz within the limit."""
        return math.floor(self.seconds * rate)

    def refuse(self, name: str, seconds: float | None = None) -> LimitExceededError:
        """The error for a file over the limit; ``seconds`` when a header told the length."""
        if seconds is None:
            return LimitExceededError(
                f"{name}: audio is longer than {self.seconds:g} s; {self.advice}"
            )
        return LimitExceededError(f"{name}: audio is {seconds:.1f} s long; {self.advice}")


_process_limit: DecodeLimit | None = None


def set_decode_limit(limit: DecodeLimit | None) -> DecodeLimit | None:
    """Make ``limit`` the cap of every decode in this process, whole or streamed, in every
    thread (a server's ``--max-audio-seconds``); None: back to the defaults. Returns the
    previous one. Process-wide on purpose: the library decodes on helper threads too."""
    global _process_limit
    previous, _process_limit = _process_limit, limit
    return previous


def decode_limit(streamed: bool = False) -> DecodeLimit:
    """The cap in force: the process's (:func:`set_decode_limit`), else the user's
    ``SPEAKERID_MAX_AUDIO_SECONDS`` for files decoded whole (default 1 h: memory grows with the
    length) or ``SPEAKERID_MAX_TRACK_SECONDS`` for streamed ones (``track``, default 24 h:
    memory stays bounded, only time grows)."""
    if _process_limit is not None:
        return _process_limit
    from .. import config

    if streamed:
        seconds, env, who = config.max_track_seconds(), config.ENV_MAX_TRACK_SECONDS, "track"
    else:
        seconds, env, who = config.max_audio_seconds(), config.ENV_MAX_AUDIO_SECONDS, "speakerid"
    return DecodeLimit(
        seconds, f"{who} accepts at most {seconds:g} s per file (set {env} to raise this limit)"
    )


@dataclass(frozen=True)
class AudioBytes:
    """Encoded audio held in memory under a display name (e.g. ``"-"`` for standard input)."""

    data: bytes = field(repr=False)
    name: str = "<bytes>"


AudioSource = Union[str, os.PathLike, bytes, AudioBytes]


@dataclass(frozen=True)
class AudioClip:
    """Decoded audio ready for feature extraction."""

    samples: np.ndarray  # float32, mono, 16 kHz, in [-1, 1]
    source: str  # file path or "<bytes>"
    original_sample_rate: int
    channels: int
    sha256: str  # of the encoded input bytes, to recognise re-enrollment of the same file

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def source_name(source: AudioSource) -> str:
    """How errors and results name a source: its path, ``AudioBytes.name`` or ``<bytes>``."""
    if isinstance(source, AudioBytes):
        return source.name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(source)


def _read_bytes(source: AudioSource) -> tuple[bytes, str]:
    if isinstance(source, AudioBytes):
        return bytes(source.data), source.name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    path = Path(source)
    name = str(source)
    if not path.exists():
        raise AudioFileNotFoundError(f"{name}: no such file")
    if path.is_dir():
        raise AudioDecodeError(f"{name}: is a directory, not an audio file")
    try:
        return path.read_bytes(), name
    except OSError as exc:
        raise AudioDecodeError(f"{name}: cannot read file ({exc.strerror or exc})") from None


def decode(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, int, int]:
    """Decode encoded audio bytes to mono float32 ``[frames]`` (channels averaged), sample
    rate, channels; at most :func:`decode_limit` seconds (``LimitExceededError`` beyond).

    libsndfile first; whatever it cannot read goes to FFmpeg (PyAV).
    """
    if not data:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    limit = decode_limit()
    try:
        return _decode_sndfile(data, name, limit)
    except AudioDecodeError as sf_error:
        return _decode_ffmpeg(data, name, sf_error, limit)


def _checked_mono(
    block: np.ndarray, total: int, rate: int, name: str, limit: DecodeLimit
) -> np.ndarray:
    """``block`` (float32 ``[frames, channels]``) averaged to mono; refused when ``total``,
    the frames decoded so far with it, crosses the limit, or when it holds NaN/inf."""
    if total > limit.frames(rate):
        raise limit.refuse(name)
    if not np.isfinite(block).all():
        raise InvalidSamplesError(f"{name}: audio contains NaN or infinite samples")
    return _downmix(block)


class _Collector:
    """Decoded blocks, checked and downmixed as they come, up to the limit: a file is refused
    once its samples cross it, so nothing beyond the limit is ever held. Averaging channels
    block by block gives the same samples as averaging the whole array.

    Samples go into chunks of ``_CHUNK`` (above glibc's largest mmap threshold, so each chunk
    is its own mapping: pages count only once written, and a freed chunk goes back to the
    system), not into one small array per codec frame: 180,000 Opus frames per hour would stay
    in the heap after they are freed. The result is assembled chunk by chunk, freeing each one
    as it is copied, so the peak stays one copy of the audio plus one chunk."""

    def __init__(self, name: str, limit: DecodeLimit) -> None:
        self.name, self.limit = name, limit
        self.chunks: list[np.ndarray] = []
        self.fill = _CHUNK  # samples used in the last chunk
        self.frames = 0

    def add(self, block: np.ndarray, rate: int) -> None:
        """``block``: float32 ``[frames, channels]`` at ``rate`` Hz."""
        self.frames += len(block)
        mono = _checked_mono(block, self.frames, rate, self.name, self.limit)
        while len(mono):
            if self.fill == _CHUNK:
                self.chunks.append(np.empty(_CHUNK, np.float32))
                self.fill = 0
            n = min(len(mono), _CHUNK - self.fill)
            self.chunks[-1][self.fill : self.fill + n] = mono[:n]
            self.fill += n
            mono = mono[n:]

    def samples(self) -> np.ndarray:
        out = np.empty(self.frames, np.float32)
        chunks, self.chunks = self.chunks[::-1], []
        at = 0
        while chunks:
            chunk = chunks.pop()
            n = min(_CHUNK, self.frames - at)
            out[at : at + n] = chunk[:n]
            at += n
            del chunk
        return out


def _decode_sndfile(data: bytes, name: str, limit: DecodeLimit) -> tuple[np.ndarray, int, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if f.format != "MP3" and f.frames > limit.frames(rate):
                # the header's length is exact here (MP3's is estimated from the bitrate)
                raise limit.refuse(name, f.frames / rate)
            # one read, as libsndfile's MP3 decoder rounds differently across reads; one
            # frame more than the limit tells a longer MP3 (reads stop at the file's end)
            most = limit.frames(rate) + 1
            if subtype == "PCM_16":
                # Exactly the official scaling: int16 / 32768.
                samples = f.read(most, dtype="int16", always_2d=True).astype(np.float32) / 32768.0
            else:
                samples = f.read(most, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        detail = str(exc).split(":")[-1].strip() or "unknown format"
        raise AudioDecodeError(f"{name}: not a readable audio file ({detail})") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise AudioDecodeError(f"{name}: corrupt or unsupported audio ({exc})") from None
    return _checked_mono(samples, len(samples), rate, name, limit), rate, channels


def _frame_samples(frame) -> np.ndarray:
    """One decoded FFmpeg frame as float32 ``[frames, channels]``, integers scaled like sndfile."""
    channels = frame.layout.nb_channels
    raw = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels]
    x = raw.T if frame.format.is_planar else raw.reshape(-1, channels)
    kind = frame.format.name.rstrip("p")
    if kind == "u8":
        return (x.astype(np.float32) - 128.0) / 128.0
    if kind in _INT_FULL_SCALE:
        return (x.astype(np.float64) / _INT_FULL_SCALE[kind]).astype(np.float32)
    return x.astype(np.float32, copy=False)


def _decode_ffmpeg(
    data: bytes, name: str, sf_error: AudioDecodeError, limit: DecodeLimit
) -> tuple[np.ndarray, int, int]:
    """Decode the first audio stream with FFmpeg (m4a/AAC, WebM/Opus, ...), from memory, frame
    by frame up to the limit (containers' durations are not trusted: counted here)."""
    import av  # lazy: only for what libsndfile cannot read

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, ValueError):
        raise sf_error from None  # neither decoder knows it: keep libsndfile's message
    with container:
        fmt = container.format.name.split(",")[0]
        if not container.streams.audio:
            raise AudioDecodeError(f"{name}: no audio stream in this {fmt} file")
        stream = container.streams.audio[0]
        out = _Collector(name, limit)
        rate = channels = 0
        exact = None  # MP4/M4A state the exact length; AAC's last frame is padded beyond it.
        try:
            for frame in container.decode(stream):
                shape = (frame.sample_rate, frame.layout.nb_channels)
                if out.frames and shape != (rate, channels):
                    raise AudioDecodeError(
                        f"{name}: sample rate or channel count changes inside the stream"
                    )
                rate, channels = shape
                if exact is None:
                    exact = 0
                    if fmt == "mov" and stream.duration and stream.time_base:
                        exact = round(float(stream.duration * stream.time_base) * rate)
                x = _frame_samples(frame)
                if exact > 0:
                    x = x[: max(0, exact - out.frames)]
                if len(x):
                    out.add(x, rate)
        except (av.FFmpegError, OSError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise AudioDecodeError(
                f"{name}: corrupt or unsupported audio ({fmt}: {detail})"
            ) from None
        if not out.frames:
            raise EmptyAudioError(f"{name}: audio contains no samples")
    return out.samples(), rate, channels


def _downmix(samples: np.ndarray) -> np.ndarray:
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return mono
    from .resample import resample

    return resample(mono, rate, SAMPLE_RATE)


def chunk_samples(chunk) -> np.ndarray:
    """A chunk of a live stream as float32 mono samples: int16 PCM scaled by 1/32768 (as files
    are), floats as they are; NaN or infinity is refused (it would poison every later
    embedding), and so is any other type."""
    x = np.asarray(chunk).reshape(-1)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidSamplesError(f"samples must be int16 or float, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if len(x) and not np.isfinite(x).all():
        raise InvalidSamplesError("samples contain NaN or infinity")
    return x


def validate(samples: np.ndarray, name: str, min_seconds: float = MIN_SECONDS) -> None:
    """Refuse audio that cannot give a meaningful embedding (see module docstring)."""
    if samples.size == 0:
        raise EmptyAudioError(f"{name}: audio contains no samples")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError(f"{name}: audio contains NaN or infinite samples")
    seconds = samples.size / SAMPLE_RATE
    if seconds < min_seconds:
        raise AudioTooShortError(
            f"{name}: audio is {seconds:.2f} s long; at least {min_seconds:.2f} s is needed"
        )
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise SilentAudioError(f"{name}: audio is silent (peak below -80 dBFS)")


def file_sha256(source: AudioSource) -> str:
    """sha256 of the encoded bytes (what ``AudioClip.sha256`` holds), without decoding them."""
    data, _ = _read_bytes(source)
    return hashlib.sha256(data).hexdigest()


def load_audio(source: AudioSource, min_seconds: float = MIN_SECONDS) -> AudioClip:
    """Load a file path or encoded bytes as validated 16 kHz mono float32."""
    data, name = _read_bytes(source)
    samples, rate, channels = decode(data, name)
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"{name}: audio contains no samples")
    mono = _resample(samples, rate)
    validate(mono, name, min_seconds)
    digest = hashlib.sha256(data).hexdigest()
    log.debug("loaded %s: %d Hz x%d -> %.2f s", name, rate, channels, len(mono) / SAMPLE_RATE)
    return AudioClip(np.ascontiguousarray(mono, dtype=np.float32), name, rate, channels, digest)


def audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, by suffix, sorted)."""
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )


def expand_sources(
    items: Sequence[str | os.PathLike], read_stdin: Callable[[], bytes] | None = None
) -> list[AudioSource]:
    """Command-line inputs as sources: a directory gives the audio files under it (recursive,
    sorted), ``"-"`` the bytes of standard input (named ``"-"``, at most once); anything else
    stays a path, so that a missing file is reported for that file only."""
    from ..errors import InvalidInputError

    if sum(str(i) == "-" for i in items) > 1:
        raise InvalidInputError("'-' (standard input) can be given only once")
    out: list[AudioSource] = []
    for item in items:
        if str(item) == "-":
            if read_stdin is None:
                raise InvalidInputError("'-' (standard input) is not available here")
            out.append(AudioBytes(read_stdin(), "-"))
        elif Path(item).is_dir():
            found = audio_files(Path(item))
            if not found:
                raise InvalidInputError(
                    f"{item}: no audio files in this directory "
                    f"({', '.join(sorted(AUDIO_EXTENSIONS))})"
                )
            out.extend(found)
        else:
            out.append(Path(item))
    return out


def speaker_folders(root: Path) -> dict[str, list[Path]]:
    """``{speaker: sorted audio files}`` for each sub-folder of ``root`` that holds audio."""
    from ..errors import InvalidInputError

    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a directory")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = audio_files(d)
        if files:
            out[d.name] = files
    return out
