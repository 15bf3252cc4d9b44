"""Audio loading: any file or bytes soundfile can decode → mono float32 at 16 kHz in [-1, 1].

Rules (documented in the README):
- integer PCM is scaled by its full-scale value (int16 / 32768), exactly as the official pipeline;
- multi-channel audio is downmixed by averaging the channels (no channel selection);
- any other sample rate is resampled to 16 kHz with ``torchaudio.functional.resample``
  (windowed sinc, the torchaudio default);
- audio shorter than ``MIN_SECONDS``, empty, containing NaN/inf, or all-silent (peak below
  ``SILENCE_PEAK``, i.e. -80 dBFS) is refused with a typed error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

from .errors import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioTooShortError,
    EmptyAudioError,
    InvalidSamplesError,
    SilentAudioError,
)

log = logging.getLogger("speakerid")

SAMPLE_RATE = 16000
#: Shortest audio we embed. The network needs 9 fbank frames (0.105 s) to produce statistics at
#: all; below half a second the embedding carries too little speaker information to be useful.
MIN_SECONDS = 0.5
#: Peak amplitude below which audio counts as silent (-80 dBFS, about 3 LSB of 16-bit PCM).
SILENCE_PEAK = 1e-4

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".aiff", ".aif"}


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
    """Decode encoded audio bytes to float32 ``[frames, channels]``, sample rate, channels."""
    if not data:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if subtype == "PCM_16":
                # Exactly the official scaling: int16 / 32768.
                samples = f.read(dtype="int16", always_2d=True).astype(np.float32) / 32768.0
            else:
                samples = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        detail = str(exc).split(":")[-1].strip() or "unknown format"
        raise AudioDecodeError(f"{name}: not a readable audio file ({detail})") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise AudioDecodeError(f"{name}: corrupt or unsupported audio ({exc})") from None
    return samples, rate, channels


def _downmix(samples: np.ndarray) -> np.ndarray:
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return mono
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, SAMPLE_RATE)
    return out.numpy().astype(np.float32, copy=False)


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


def load_audio(source: AudioSource, min_seconds: float = MIN_SECONDS) -> AudioClip:
    """Load a file path or encoded bytes as validated 16 kHz mono float32."""
    data, name = _read_bytes(source)
    samples, rate, channels = decode(data, name)
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"{name}: audio contains no samples")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError(f"{name}: audio contains NaN or infinite samples")
    mono = _resample(_downmix(samples), rate)
    validate(mono, name, min_seconds)
    digest = hashlib.sha256(data).hexdigest()
    log.debug("loaded %s: %d Hz x%d -> %.2f s", name, rate, channels, len(mono) / SAMPLE_RATE)
    return AudioClip(np.ascontiguousarray(mono, dtype=np.float32), name, rate, channels, digest)


def speaker_folders(root: Path) -> dict[str, list[Path]]:
    """``{speaker: sorted audio files}`` for each sub-folder of ``root`` that holds audio."""
    from .errors import InvalidInputError

    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a directory")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if files:
            out[d.name] = files
    return out
