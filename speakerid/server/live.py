"""``GET /v1/stream``: live identification over a WebSocket, a front of
:meth:`SpeakerID.stream <speakerid.service.facade.SpeakerID.stream>` (the rules live there).

The handshake is admitted or refused by :class:`~.auth.AccessMiddleware`, the same decision as
every HTTP request (scope ``read``; an open server's Host/Origin checks; the key from
``Authorization: Bearer KEY`` or, for browsers, the subprotocol ``bearer.KEY``), before the
connection is accepted. Once accepted, the server sends ``ready``, then the events each binary
message of little-endian int16 mono PCM (at most 1 s) causes, and after ``{"type": "end"}`` the
final segments and a normal close (1000). A stream that breaks the protocol or a limit gets an
``error`` event, then a close code with the reason (:data:`CLOSE_CODES`).

Each message is fed in a worker thread (one per open stream at most), so the event loop only
moves bytes and the streams' embeddings join the HTTP routes' micro-batches on the server's
``BatchingEmbedder``. A client that vanishes ends its stream at the next message or event: the
stream is dropped, its slot and gauge released; nothing is computed for it afterwards.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, WebSocket
from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from ..errors import InvalidInputError, LimitExceededError, SpeakerIDError
from ..results import StreamErrorEvent
from .auth import KEY, offered_bearer
from .problems import registry_problem, status_of

log = logging.getLogger("speakerid")

#: Largest WebSocket message uvicorn takes (1 s of int16 at the highest rate is 375 KiB);
#: a bigger frame is closed by the protocol layer with 1009 before the app sees it.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Close codes (RFC 6455): what each refusal or failure ends the connection with.
CLOSE_CODES = {
    "done": 1000,  # after {"type": "end"} and the final segments
    "bad_audio": 1007,  # odd byte count, or a message longer than 1 s
    "unknown_message": 1003,  # a text message that is not {"type": "end"}
    "policy": 1008,  # bad query, the stream's length limit, idle too long
    "server_error": 1011,  # a failure on the server's side
    "try_later": 1013,  # every stream slot taken, the embedder unavailable
}
#: How far behind real time a stream may fall before it sheds partials (seconds): the
#: expected arrival of each message is the first message's plus the audio sent since.
SHED_AFTER = 0.5
#: Longest close reason (a control frame holds 125 bytes, 2 of them the code).
_REASON_BYTES = 123
#: The client went away (send or receive on a closed connection, or it stopped reading).
_GONE = (WebSocketDisconnect, WebSocketDisconnected, TimeoutError)

router = APIRouter()


def uvicorn_options() -> dict[str, Any]:
    """uvicorn's WebSocket settings for ``speakerid serve``: the ``websockets`` package's
    protocol (named, so a missing package fails at start instead of answering every upgrade
    with 404), messages bounded, no per-message deflate (PCM barely compresses; it would cost
    the server CPU per stream and let a small frame inflate)."""
    from uvicorn.config import WS_PROTOCOLS

    ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
    return {"ws": ws, "ws_max_size": MAX_MESSAGE_BYTES, "ws_per_message_deflate": False}


class LiveStreams:
    """The process's open streams: a slot per stream up to ``--max-streams``, and the threads
    their feeds run in (one each at most, apart from the HTTP routes' limiter)."""

    def __init__(self, max_streams: int, metrics: Any) -> None:
        self.max_streams = max_streams
        self.metrics = metrics
        self.open = 0
        self.limiter = anyio.CapacityLimiter(max_streams)

    def take(self) -> bool:
        if self.open >= self.max_streams:
            return False
        self.open += 1
        self.metrics.streams_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self.metrics.streams_open.set(self.open)


def install(app: Any, state: Any) -> None:
    """Add the route and the stream slots to ``app`` (see ``create_app``)."""
    app.state.live = LiveStreams(state.settings.max_streams, state.metrics)
    app.include_router(router)


async def _admitted(websocket: WebSocket) -> None:
    """Declares the scope (read by ``auth.needed_scope``); the middleware decided already."""
    if KEY not in websocket.scope:  # never a stream the middleware did not see
        from starlette.exceptions import WebSocketException

        raise WebSocketException(CLOSE_CODES["policy"], "this stream was not authorized")


_admitted.needs = "read"  # type: ignore[attr-defined]


class Pace:
    """How far behind real time the server's processing of a stream is. A client that captures
    live sends each message once its audio has been spoken, so while the server keeps up it
    waits on the socket between messages; when it falls behind, messages queue and each is taken
    at once, later than the last one the server waited for plus the audio sent since. Only the
    server's own backlog counts: a message the server had to wait for (a slow network, a client
    sending slower than real time, a pause) starts the count again, and a client that sends
    faster than real time (a file) is never behind."""

    #: A receive that took longer than this waited for the client (the socket was empty).
    WAITED = 0.02

    def __init__(self) -> None:
        self.base: float | None = None  # when the last waited-for message arrived
        self.since = 0.0  # seconds of audio received since then

    def behind(self, received: float, waited: float, seconds: float) -> float:
        """Seconds late of the message taken at ``received`` after ``waited`` seconds in
        ``receive``, holding ``seconds`` of audio."""
        if self.base is None or waited > self.WAITED:
            self.base, self.since = received, 0.0
        late = received - self.base - self.since
        self.since += seconds
        return max(0.0, late)


class _Refused(Exception):
    """Ends a stream with an ``error`` event and a close code."""

    def __init__(self, status: int, detail: str, code: int) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


def _close_code(status: int) -> int:
    if status == 503:
        return CLOSE_CODES["try_later"]
    return CLOSE_CODES["server_error"] if status >= 500 else CLOSE_CODES["policy"]


def _refusal(exc: SpeakerIDError) -> _Refused:
    status = status_of(exc)
    return _Refused(status, str(exc), _close_code(status))


def _query(websocket: WebSocket) -> tuple[int, float | None]:
    """``sample_rate`` and ``threshold`` from the query (their ranges are the core's rules)."""
    q = websocket.query_params
    raw_rate, raw_t = q.get("sample_rate", "16000"), q.get("threshold")
    try:
        rate = int(raw_rate)
    except ValueError:
        raise InvalidInputError(f"sample_rate must be an integer, got {raw_rate!r}") from None
    try:
        threshold = None if raw_t in (None, "") else float(raw_t)
    except ValueError:
        raise InvalidInputError(f"threshold must be a number, got {raw_t!r}") from None
    return rate, threshold


@router.websocket("/v1/stream", dependencies=[Depends(_admitted)])
async def stream(websocket: WebSocket) -> None:
    """Who is speaking now: PCM in, events out (see docs/live.md#protocol-get-v1stream)."""
    state = websocket.app.state.server
    live: LiveStreams = websocket.app.state.live
    await websocket.accept(subprotocol=offered_bearer(websocket.scope))
    if not live.take():
        await _end(
            websocket,
            _Refused(
                503,
                f"this server has {live.max_streams} live streams open, its most "
                f"(--max-streams); retry later",
                CLOSE_CODES["try_later"],
            ),
        )
        return
    try:
        await _Session(websocket, state, live).run()
    finally:
        live.release()


class _Session:
    """One accepted stream: receive, feed in a thread, send the events, until the end."""

    def __init__(self, websocket: WebSocket, state: Any, live: LiveStreams) -> None:
        self.ws = websocket
        self.state = state
        self.live = live
        self.metrics = state.metrics
        self.settings = state.settings
        self.stream: Any = None
        self.pace = Pace()

    async def run(self) -> None:
        try:
            await self._serve()
        except _Refused as refused:
            await _end(self.ws, refused, self.settings.stream_idle_seconds)
        except _GONE:
            log.info("live stream ended: the client went away or stopped reading")
        except SpeakerIDError as exc:
            await _end(self.ws, _refusal(exc), self.settings.stream_idle_seconds)
        except SQLAlchemyError as exc:  # answered as the HTTP routes answer it (503)
            log.error("registry error in a live stream: %s", exc)
            refused = _Refused(503, registry_problem(exc), CLOSE_CODES["try_later"])
            await _end(self.ws, refused, self.settings.stream_idle_seconds)
        except Exception as exc:
            log.error("live stream failed", exc_info=exc)
            refused = _Refused(
                500,
                "internal server error (the server log has the details)",
                CLOSE_CODES["server_error"],
            )
            await _end(self.ws, refused, self.settings.stream_idle_seconds)
        finally:
            self.stream = None  # its audio and tracker go with it

    async def _serve(self) -> None:
        s = self.settings
        rate, threshold = _query(self.ws)
        self.stream = await self._thread(
            self.state.sid.stream, threshold, rate, s.max_stream_seconds
        )
        await self._send(self.stream.start(), None)
        while True:
            asked = time.perf_counter()
            message = await self._receive()
            received = time.perf_counter()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1006))
            data = message.get("bytes")
            if data is not None:
                samples = self._samples(data)
                behind = self.pace.behind(received, received - asked, len(samples) / rate)
                if behind > SHED_AFTER:
                    log.debug("live stream %.2f s behind real time: partials shed", behind)
                shed = self.stream.tracker.shed
                try:
                    events = await self._thread(self.stream.feed, samples, behind <= SHED_AFTER)
                except LimitExceededError as exc:  # the stream's length: the core's rule
                    detail = f"{exc} (--max-stream-seconds)"
                    raise _Refused(413, detail, CLOSE_CODES["policy"]) from None
                self.metrics.audio_seconds_streamed.inc(len(samples) / rate)
                self.metrics.partials_shed.inc(self.stream.tracker.shed - shed)
                await self._send(events, received)
                continue
            self._end_message(message.get("text") or "")
            await self._send(await self._thread(self.stream.close), received)
            await self.ws.close(CLOSE_CODES["done"])
            return

    def _samples(self, data: bytes) -> np.ndarray:
        rate = self.stream.sample_rate
        if len(data) % 2:
            raise _Refused(
                400,
                f"a binary message must hold little-endian int16 samples (an even number of "
                f"bytes), got {len(data)} bytes",
                CLOSE_CODES["bad_audio"],
            )
        if len(data) > 2 * rate:
            raise _Refused(
                400,
                f"a binary message holds at most 1 s of audio ({2 * rate} bytes at {rate} Hz), "
                f"got {len(data)} bytes",
                CLOSE_CODES["bad_audio"],
            )
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)

    @staticmethod
    def _end_message(text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not (isinstance(msg, dict) and msg.get("type") == "end"):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise _Refused(
                400,
                f'unknown message {shown!r}: send binary int16 PCM, or {{"type": "end"}} to finish',
                CLOSE_CODES["unknown_message"],
            )

    async def _receive(self) -> dict[str, Any]:
        idle = self.settings.stream_idle_seconds
        with anyio.move_on_after(idle):
            return await self.ws.receive()
        raise _Refused(
            408,
            f"no message for {idle:g} s: the stream is closed (--stream-idle-seconds)",
            CLOSE_CODES["policy"],
        )

    async def _thread(self, fn, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.live.limiter)

    async def _send(self, events: list, received: float | None) -> None:
        """Each event as JSON text; a client that stops reading for the idle time is gone."""
        for event in events:
            with anyio.fail_after(self.settings.stream_idle_seconds):
                await self.ws.send_text(json.dumps(event.to_dict()))
            if received is not None:
                self.metrics.stream_event_latency.labels(event.type).observe(
                    time.perf_counter() - received
                )


async def _end(websocket: WebSocket, refused: _Refused, wait: float = 10.0) -> None:
    """The ``error`` event, then the close code with the (shortened) reason."""
    log.info("live stream closed (%d): %s", refused.code, refused.detail)
    reason = refused.detail.encode()[:_REASON_BYTES].decode(errors="ignore")
    try:
        with anyio.fail_after(wait):
            await websocket.send_text(
                json.dumps(StreamErrorEvent(refused.status, refused.detail).to_dict())
            )
            await websocket.close(refused.code, reason)
    except (*_GONE, TimeoutError):
        pass
