"""``LiveStream``: the one live path every front uses (``SpeakerID.stream``).

It takes PCM chunks of any size at the client's sample rate (float in [-1, 1] or int16),
resamples them to 16 kHz as files are (``audio.stream.Resampler``), hands them to the tracker
(``tracking.live``) and returns its events. It enforces the stream's length limit, so that a
front only translates: the CLI prints the events, the server sends them as JSON and turns the
typed errors into an ``error`` event and a close code.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..audio.decode import chunk_samples
from ..audio.stream import Resampler
from ..errors import InvalidInputError, LimitExceededError
from ..results import ReadyEvent, StreamEvent, TurnEvent
from ..tracking.live import Embed, Identify, LiveTracker

log = logging.getLogger("speakerid")

#: Sample rates a stream accepts (telephone to studio).
MIN_RATE, MAX_RATE = 8000, 192000


def check_rate(rate: int) -> int:
    """A stream's sample rate, validated (one clear error instead of a resampler's)."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise InvalidInputError(f"sample rate must be an integer, got {rate!r}")
    if not MIN_RATE <= int(rate) <= MAX_RATE:
        raise InvalidInputError(
            f"sample rate must be between {MIN_RATE} and {MAX_RATE} Hz, got {rate}"
        )
    return int(rate)


class LiveStream:
    """Who is speaking now, in one stream of audio. ``feed(chunk)`` and ``close()`` return
    events (``ReadyEvent`` first, then ``TurnEvent`` partials and segments); see
    :mod:`speakerid.tracking.live` for the rules. One stream is fed by one caller at a time
    (a lock makes concurrent feeds wait, never interleave)."""

    def __init__(
        self,
        embed: Embed,
        identify: Identify | None,
        threshold: float,
        model: str,
        sample_rate: int = 16000,
        max_seconds: float | None = None,
    ) -> None:
        self.sample_rate = check_rate(sample_rate)
        self.ready = ReadyEvent(self.sample_rate, model, threshold)
        self.max_seconds = max_seconds
        self.tracker = LiveTracker(embed, identify, threshold)
        self._resampler = Resampler(self.sample_rate)
        self._received = 0  # samples at the client's rate
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        """Audio received so far, in seconds of the stream."""
        return self._received / self.sample_rate

    def start(self) -> list[StreamEvent]:
        """The ``ready`` event (once; ``feed`` returns it first when ``start`` was not called)."""
        if self._started:
            return []
        self._started = True
        return [self.ready]

    def feed(self, chunk, partials: bool = True) -> list[StreamEvent]:
        """Events caused by the next chunk of samples (int16 PCM or float in [-1, 1]).
        ``partials=False``: skip the partials of this chunk (a front behind real time catches
        up; the final segments stay complete)."""
        x = chunk_samples(chunk)
        with self._lock:
            if self._closed:
                raise InvalidInputError("the stream is closed")
            events = self.start()
            limit = self.max_seconds
            if limit is not None and (self._received + len(x)) / self.sample_rate > limit:
                raise LimitExceededError(
                    f"the stream is longer than its limit of {limit:g} s of audio"
                )
            self._received += len(x)
            events.extend(self.tracker.feed(self._resampler.push(x), partials))
            return events

    def close(self) -> list[TurnEvent]:
        """The final segments of what is left; the stream takes no more audio."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            events: list = self.start()
            rest = self._resampler.flush()
            if len(rest):
                events.extend(self.tracker.feed(rest))
            events.extend(self.tracker.close())
            return events

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
