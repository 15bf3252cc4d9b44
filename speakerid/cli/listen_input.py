"""Where ``speakerid listen`` hears audio: the microphone, a file, or raw PCM on stdin.

Each input is a :class:`Source`: mono chunks at one sample rate, pulled by whoever feeds the
live stream (``SpeakerID.stream`` in-process, ``Client.stream`` with ``--server``). A file and
stdin are paced by the wall clock, so they arrive as a microphone's audio would (``--fast``:
as fast as they can be read); the microphone paces itself. Reading happens on a thread of its
own, so the caller never blocks on the input and a Ctrl-C (``stop``) ends the chunks between
two of them. An input that fails (a corrupt file, stdin ending mid-sample, a microphone that
goes away) ends the chunks too and leaves its error in ``Source.error``, so that the stream is
still closed and its final segments given before the error is reported.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmptyAudioError, InvalidInputError, SpeakerIDError

log = logging.getLogger("speakerid")

#: Seconds of audio per chunk handed to the stream (a microphone's block; pacing granularity).
CHUNK_SECONDS = 0.1
#: Chunks read ahead of the stream from a file or stdin (bounded memory under --fast).
READ_AHEAD = 100
#: How often a waiting reader looks at ``stop`` (seconds).
POLL = 0.1

NO_DEVICE = (
    "no audio input device (microphone) found; use --input FILE, or --input - for raw PCM on stdin"
)
NO_PORTAUDIO = (
    "the microphone needs the PortAudio library, which is not installed (Debian/Ubuntu: "
    "apt install libportaudio2; Fedora: dnf install portaudio; macOS: brew install "
    "portaudio); --input FILE and --input - work without it"
)
NO_SOUNDDEVICE = (
    "the microphone needs the Python package sounddevice, which is not installed (pip install "
    "sounddevice); --input FILE and --input - work without it"
)

_END = object()


class Source:
    """Mono audio chunks at ``rate`` Hz for one live stream (see the module)."""

    def __init__(self, rate: int, uri: str, description: str, stop: threading.Event) -> None:
        self.rate = rate
        self.uri = uri  # the RTTM file id
        self.description = description  # what a person is told is being listened to
        self.stop = stop
        self.error: SpeakerIDError | None = None
        self.samples = 0  # handed to the stream so far
        self.limit: int | None = None  # samples at most (``--duration``)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
        self._done = threading.Event()  # the chunks ended: the input stops producing

    def set_duration(self, seconds: float | None) -> None:
        """End the chunks after ``seconds`` of audio (None: at the end of the input)."""
        if seconds is not None and not seconds > 0:
            raise InvalidInputError(
                f"--duration must be a positive number of seconds, got {seconds:g}"
            )
        self.limit = None if seconds is None else max(1, round(seconds * self.rate))

    @property
    def seconds(self) -> float:
        """Stream time: seconds of audio handed to the stream so far."""
        return self.samples / self.rate

    def _begin(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Release the input (the chunks ended, for whatever reason)."""

    def chunks(self) -> Iterator[np.ndarray]:
        """The input's chunks, from the moment the first is asked for (pacing starts there),
        until the input ends, ``limit`` is reached, ``stop`` is set or the input fails
        (``error``)."""
        try:
            self._begin()
            while not self.stop.is_set():
                if self.limit is not None and self.samples >= self.limit:
                    return
                try:
                    item = self._queue.get(timeout=POLL)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if self.limit is not None:
                    item = item[: self.limit - self.samples]
                self.samples += len(item)
                yield item
        except SpeakerIDError as exc:
            self.error = exc
        finally:
            self._done.set()
            self._finish()


class _Reader(Source):
    """A file's or stdin's blocks, cut into chunks and (unless ``fast``) paced by the clock."""

    def __init__(
        self,
        blocks: Iterator[np.ndarray],
        rate: int,
        uri: str,
        description: str,
        stop: threading.Event,
        fast: bool,
    ) -> None:
        super().__init__(rate, uri, description, stop)
        self._blocks = blocks
        self._fast = fast

    def _begin(self) -> None:
        threading.Thread(target=self._read, name="speakerid-listen-input", daemon=True).start()

    def _put(self, item: Any) -> bool:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        step = max(1, round(self.rate * CHUNK_SECONDS))
        start, sent = time.monotonic(), 0
        try:
            for block in self._blocks:
                for i in range(0, len(block), step):
                    chunk = block[i : i + step]
                    sent += len(chunk)
                    if not self._fast:  # a chunk is there once its last sample was "spoken"
                        wait = start + sent / self.rate - time.monotonic()
                        if wait > 0 and self._done.wait(wait):
                            return
                    if not self._put(chunk):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._put(exc)
            return
        self._put(_END)


def file_source(path: str, stop: threading.Event, fast: bool) -> Source:
    """A file speakerid decodes, streamed in bounded memory as ``track`` streams it (16 kHz).
    Its first block is decoded here, so a missing or unreadable file is refused at once."""
    from ..audio.decode import SAMPLE_RATE
    from ..audio.stream import stream_audio

    blocks = stream_audio(path)
    first = next(blocks)
    pace = "as fast as it decodes" if fast else "at real time"
    return _Reader(
        itertools.chain([first], blocks),
        SAMPLE_RATE,
        Path(path).stem or "live",
        f"{path} ({pace})",
        stop,
        fast,
    )


def _stdin_blocks(rate: int) -> Iterator[np.ndarray]:
    """Raw little-endian int16 mono PCM from stdin, as it arrives (a pipe from a recorder
    gives its audio as soon as it is written)."""
    fh = sys.stdin.buffer
    want = 2 * max(1, round(rate * CHUNK_SECONDS))
    pending, total = b"", 0
    while True:
        try:
            data = fh.read1(want)
        except OSError as exc:
            raise InvalidInputError(f"stdin: cannot read ({exc.strerror or exc})") from None
        if not data:
            break
        total += len(data)
        data = pending + data
        cut = len(data) - len(data) % 2
        pending = data[cut:]
        if cut:
            yield np.frombuffer(data[:cut], dtype="<i2")
    if pending:
        raise InvalidInputError(
            f"stdin: {total} bytes is not a whole number of samples (--input - expects raw "
            "little-endian int16 mono PCM)"
        )
    if total == 0:
        raise EmptyAudioError(
            "stdin: no audio received (--input - expects raw little-endian int16 mono PCM)"
        )


def stdin_source(rate: int, stop: threading.Event, fast: bool) -> Source:
    """Raw PCM on stdin at ``rate`` Hz (a person typing at a terminal is told what is meant)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInputError(
            "--input - reads raw little-endian int16 mono PCM from stdin, which is a terminal: "
            "pipe audio into it (e.g. arecord -f S16_LE -c 1 -r 16000 | speakerid listen "
            "--input -)"
        )
    return _Reader(_stdin_blocks(rate), rate, "live", f"PCM on stdin at {rate} Hz", stop, fast)


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """PortAudio's host APIs (ALSA, JACK) write warnings straight to file descriptor 2 while
    they look for devices ("ALSA lib pcm.c: Unknown PCM ...", "jack server is not running"):
    noise above the one line that says what is wrong. Kept with ``SPEAKERID_LOG=DEBUG``."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _portaudio() -> Any:
    """The ``sounddevice`` module, or the one line that says what is missing."""
    try:
        with _quiet_native_stderr():
            import sounddevice
    except ImportError:
        raise InvalidInputError(NO_SOUNDDEVICE) from None
    except OSError as exc:  # sounddevice raises it when it finds no PortAudio library
        log.debug("sounddevice: %s", exc)
        raise InvalidInputError(NO_PORTAUDIO) from None
    return sounddevice


class _Microphone(Source):
    """PortAudio's default input device: mono int16 PCM (what every device records and the
    server's wire carries), in blocks of ``CHUNK_SECONDS``."""

    def __init__(self, sd: Any, name: str, rate: int, stop: threading.Event) -> None:
        super().__init__(rate, "live", f"the microphone ({name}, {rate} Hz)", stop)
        self._queue = queue.Queue()  # PortAudio's callback must never block
        self._sd = sd
        self._stream: Any = None
        self.overflows = 0
        self._captured = 0

    def _callback(self, indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put_nowait(indata[:, 0].copy())
        self._captured += frames
        if self.limit is not None and self._captured >= self.limit:
            raise self._sd.CallbackStop  # --duration: the rest is never captured

    def _begin(self) -> None:
        sd = self._sd
        try:
            with _quiet_native_stderr():
                self._stream = sd.InputStream(
                    samplerate=self.rate,
                    channels=1,
                    dtype="int16",
                    blocksize=max(1, round(self.rate * CHUNK_SECONDS)),
                    callback=self._callback,
                )
                self._stream.start()
        except sd.PortAudioError as exc:
            raise InvalidInputError(f"cannot open the microphone: {exc}") from None

    def _finish(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self.overflows:
            log.warning("the microphone dropped audio %d times (input overflow)", self.overflows)


def microphone_source(rate: int | None, stop: threading.Event) -> Source:
    """The default input device at ``rate`` (default: the device's own rate, which it surely
    supports; the stream resamples). No device, or no PortAudio, is one clear error."""
    sd = _portaudio()
    try:
        with _quiet_native_stderr():
            info = sd.query_devices(kind="input")
    except (sd.PortAudioError, ValueError) as exc:  # PortAudio has no default input device
        log.debug("PortAudio: %s", exc)
        raise InvalidInputError(NO_DEVICE) from None
    if not info or int(info.get("max_input_channels", 0)) < 1:
        raise InvalidInputError(NO_DEVICE)
    rate = rate or int(round(info["default_samplerate"]))
    try:
        with _quiet_native_stderr():
            sd.check_input_settings(channels=1, dtype="int16", samplerate=rate)
    except (sd.PortAudioError, ValueError) as exc:
        raise InvalidInputError(
            f"the microphone ({info['name']}) cannot record mono at {rate} Hz: {exc}"
        ) from None
    return _Microphone(sd, str(info["name"]), rate, stop)
