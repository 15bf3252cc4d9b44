"""Request limits: body size (``--max-upload-mb``), files per request, seconds per file.

The body limit is enforced while the body streams in, before anything is parsed: a declared
``Content-Length`` above the limit is answered at once, and a body that grows past it (chunked
uploads) is cut off. In both cases the rest of the body is read and dropped (up to a bound) so
that the client reads a clean 413 instead of a broken connection.

Seconds per file (``--max-audio-seconds``): from the header before anything is decoded where
libsndfile can tell it, and in any case while decoding: the server makes it the process's
decode limit (:func:`speakerid.audio.decode.set_decode_limit`), so every decode, whole or streamed,
in any thread, stops where the audio crosses it (WebM or streamed MP3 carry no length).
"""

from __future__ import annotations

import io

from ..audio.decode import AudioBytes, DecodeLimit
from ..errors import LimitExceededError
from .problems import BODY_TOO_LARGE, problem

#: Beyond this many times the limit an oversized body is no longer drained: the connection is
#: closed instead (a client streaming without end gets no 413, only a closed socket).
DRAIN_FACTOR = 8


class _TooLarge(Exception):
    pass


def too_large_message(max_bytes: int) -> str:
    return (
        f"request body is larger than this server's limit of {max_bytes / 1024 / 1024:g} MiB "
        f"(--max-upload-mb)"
    )


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def message(self) -> str:
        return too_large_message(self.max_bytes)

    async def _drain(self, receive, seen: int) -> None:
        while seen <= DRAIN_FACTOR * self.max_bytes:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared_n = int(declared) if declared is not None else None
        except ValueError:
            declared_n = None
        if declared_n is not None and declared_n > self.max_bytes:
            if declared_n <= DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive, 0)
            await problem(413, self.message(), "LimitExceededError")(scope, receive, send)
            return

        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    scope[BODY_TOO_LARGE] = True
                    if msg.get("more_body", False):
                        await self._drain(receive, seen)
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:  # raised outside the app's error handling (e.g. while parsing)
            await problem(413, self.message(), "LimitExceededError")(scope, receive, send)


def audio_limit(max_seconds: float) -> DecodeLimit:
    """The server's seconds per file as a decode limit (its refusals are 413)."""
    return DecodeLimit(max_seconds, f"this server accepts at most {max_seconds:g} s per file")


def probe_seconds(data: bytes) -> float | None:
    """Duration from the file header when libsndfile can tell it without decoding, else None
    (decoding stops at the limit then)."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # any failure means "unknown here": decoding will tell
        return None
    return info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None


def check_sources(sources: list[AudioBytes], max_files: int, max_seconds: float) -> None:
    """Files per request and, where the header tells it, seconds per file (before decoding)."""
    if len(sources) > max_files:
        raise LimitExceededError(
            f"{len(sources)} files in one request; this server accepts at most {max_files}"
        )
    for src in sources:
        seconds = probe_seconds(src.data)
        if seconds is not None and seconds > max_seconds:
            raise audio_limit(max_seconds).refuse(src.name, seconds)


def check_length(source: AudioBytes, max_seconds: float) -> None:
    """Seconds of one recording that is never decoded as a whole (``/v1/track`` streams it):
    from the header, else by decoding it block by block up to the limit, before tracking
    spends seconds of VAD and embeddings on the part below it."""
    if probe_seconds(source.data) is not None:
        return  # check_sources has compared it already
    from ..audio.stream import stream_audio

    for _ in stream_audio(source, audio_limit(max_seconds)):
        pass
