"""Long recordings in bounded memory: decode a file block by block as 16 kHz mono float32.

The same decoders and rules as :func:`speakerid.audio.decode.load_audio` (libsndfile first, then
FFmpeg through PyAV; int16 / 32768; channels averaged; other rates resampled with torchaudio's
default sinc resampler, restated in numpy by ``speakerid.audio.resample``), but the file is
never held decoded as a whole: an hour of 48 kHz stereo would be 1.4 GB of float32. Resampling
runs on overlapping slices whose start is aligned to the rate ratio, so the stitched output
equals resampling the whole signal at once (the kernel only reads a few dozen input samples on
each side; we keep ``_MARGIN`` of context).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioTooShortError,
    EmptyAudioError,
    InvalidSamplesError,
    SilentAudioError,
)
from .decode import (
    SAMPLE_RATE,
    SILENCE_PEAK,
    AudioBytes,
    AudioSource,
    DecodeLimit,
    decode_limit,
    source_name,
)

#: Native frames decoded per step (about 10 s at 48 kHz).
BLOCK_FRAMES = 1 << 19
#: Input context kept on each side of a resampled slice (samples at the native rate).
_MARGIN = 4096


class Resampler:
    """Streaming ``torchaudio.functional.resample`` (same output, block by block)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        g = math.gcd(rate, SAMPLE_RATE)
        self.orig, self.new = rate // g, SAMPLE_RATE // g
        self.margin = -(-_MARGIN // self.orig) * self.orig
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # absolute input index of buf[0], a multiple of self.orig
        self.seen = 0  # input samples received
        self.emitted = 0  # output samples returned

    def _resample(self, x: np.ndarray) -> np.ndarray:
        from .resample import resample  # torchaudio's resampler without torch

        return resample(x, self.rate, SAMPLE_RATE)

    def _emit(self, upto: int, final: bool) -> np.ndarray:
        """Output samples ``[emitted, upto)`` from the buffered input."""
        if upto <= self.emitted:
            return np.zeros(0, np.float32)
        y = self._resample(self.buf)
        first = self.buf_start // self.orig * self.new  # output index of y[0]
        if final:
            y = y[: upto - first]
        out = y[self.emitted - first : upto - first]
        self.emitted = upto
        keep_from = max(0, (self.emitted * self.orig // self.new) - self.margin)
        keep_from = keep_from // self.orig * self.orig
        if keep_from > self.buf_start:
            self.buf = self.buf[keep_from - self.buf_start :]
            self.buf_start = keep_from
        return out

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.orig == self.new:
            return x
        self.buf = np.concatenate([self.buf, x])
        self.seen += len(x)
        safe = (self.seen - self.margin) // self.orig * self.orig  # inputs far from the end
        return self._emit(max(0, safe) // self.orig * self.new, final=False)

    def flush(self) -> np.ndarray:
        if self.orig == self.new:
            return np.zeros(0, np.float32)
        return self._emit(math.ceil(self.new * self.seen / self.orig), final=True)


def _open_bytes(source: AudioSource) -> tuple[object, str]:
    """A seekable binary input for both decoders, and the source's display name."""
    name = source_name(source)
    if isinstance(source, AudioBytes):
        return io.BytesIO(source.data), name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), name
    path = Path(source)
    if not path.exists():
        raise AudioFileNotFoundError(f"{name}: no such file")
    if path.is_dir():
        raise AudioDecodeError(f"{name}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    try:
        return open(path, "rb"), name  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise AudioDecodeError(f"{name}: cannot read file ({exc.strerror or exc})") from None


def _native_sndfile(fh, name: str) -> Iterator[tuple[np.ndarray, int]] | None:
    """Blocks ``(float32 [frames, channels], rate)`` from libsndfile, or None if it can't."""
    import soundfile as sf

    try:
        f = sf.SoundFile(fh)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError):
        fh.seek(0)
        return None

    def gen() -> Iterator[tuple[np.ndarray, int]]:
        with f:
            pcm16 = f.subtype == "PCM_16"
            while True:
                try:
                    if pcm16:  # exactly the official scaling: int16 / 32768
                        block = f.read(BLOCK_FRAMES, dtype="int16", always_2d=True)
                        block = block.astype(np.float32) / 32768.0
                    else:
                        block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                    raise AudioDecodeError(
                        f"{name}: corrupt or unsupported audio ({exc})"
                    ) from None
                if len(block) == 0:
                    return
                yield block, f.samplerate

    return gen()


def _native_ffmpeg(fh, name: str) -> Iterator[tuple[np.ndarray, int]]:
    """Blocks from FFmpeg (PyAV): the first audio stream, frame by frame."""
    import av

    from .decode import _frame_samples

    try:
        container = av.open(fh, mode="r")
    except (av.FFmpegError, OSError, ValueError):
        raise AudioDecodeError(f"{name}: not a readable audio file (unknown format)") from None
    with container:
        fmt = container.format.name.split(",")[0]
        if not container.streams.audio:
            raise AudioDecodeError(f"{name}: no audio stream in this {fmt} file")
        stream = container.streams.audio[0]
        exact = None
        if fmt == "mov" and stream.duration and stream.time_base and stream.sample_rate:
            exact = round(float(stream.duration * stream.time_base) * stream.sample_rate)
        done = 0
        shape = None
        try:
            for frame in container.decode(stream):
                if shape and (frame.sample_rate, frame.layout.nb_channels) != shape:
                    raise AudioDecodeError(
                        f"{name}: sample rate or channel count changes inside the stream"
                    )
                shape = (frame.sample_rate, frame.layout.nb_channels)
                x = _frame_samples(frame)
                if exact is not None:  # MP4/M4A: drop the padding of the last AAC frame
                    x = x[: max(0, exact - done)]
                done += len(x)
                if len(x):
                    yield x, frame.sample_rate
        except (av.FFmpegError, OSError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise AudioDecodeError(
                f"{name}: corrupt or unsupported audio ({fmt}: {detail})"
            ) from None


def stream_audio(source: AudioSource, limit: DecodeLimit | None = None) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of a file or bytes, checked like ``load_audio``: NaN/inf,
    empty, shorter than 0.5 s and silent audio raise the same typed errors (the last two once
    the whole stream has been read); a stream that crosses ``limit`` (default: the streamed
    :func:`~speakerid.audio.decode.decode_limit`) raises ``LimitExceededError`` there."""
    from .decode import MIN_SECONDS

    limit = limit or decode_limit(streamed=True)
    fh, name = _open_bytes(source)
    try:
        native = _native_sndfile(fh, name)
        if native is None:
            native = _native_ffmpeg(fh, name)
        resampler: Resampler | None = None
        total, peak, frames = 0, 0.0, 0
        for block, rate in native:
            frames += len(block)
            if frames > limit.frames(rate):
                raise limit.refuse(name)
            if not np.isfinite(block).all():
                raise InvalidSamplesError(f"{name}: audio contains NaN or infinite samples")
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
            if resampler is None:
                resampler = Resampler(rate)
            out = resampler.push(np.ascontiguousarray(mono, dtype=np.float32))
            if len(out):
                total += len(out)
                peak = max(peak, float(np.max(np.abs(out))))
                yield out
        if resampler is None:
            raise EmptyAudioError(f"{name}: audio contains no samples")
        out = resampler.flush()
        if len(out):
            total += len(out)
            peak = max(peak, float(np.max(np.abs(out))))
            yield out
        if total < MIN_SECONDS * SAMPLE_RATE:
            raise AudioTooShortError(
                f"{name}: audio is {total / SAMPLE_RATE:.2f} s long; at least "
                f"{MIN_SECONDS:.2f} s is needed"
            )
        if peak < SILENCE_PEAK:
            raise SilentAudioError(f"{name}: audio is silent (peak below -80 dBFS)")
    finally:
        if hasattr(fh, "close"):
            fh.close()


def probe_duration(source: AudioSource) -> float | None:
    """Duration in seconds from the container's header (no decoding), or None if unknown."""
    import soundfile as sf

    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        try:
            info = sf.info(str(source))
            return info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            pass
        try:
            import av

            with av.open(str(source)) as c:
                if c.duration:
                    return c.duration / 1_000_000
        except Exception:  # noqa: BLE001 - only an estimate for the progress bar
            return None
    return None
