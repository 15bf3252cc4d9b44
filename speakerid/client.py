"""``Client``: a speakerid server (``speakerid serve``) with the methods and result types of
:class:`~speakerid.service.facade.SpeakerID`, so that a script moves from in-process to warm HTTP by
changing one line::

    from speakerid.client import Client

    with Client("http://127.0.0.1:8000", key="spk_...") as sid:
        sid.enroll("alice", ["a1.wav", "a2.wav"])
        print(sid.identify("unknown.wav", top_k=3).speaker)

Errors are the library's typed errors (the server names them in its problem+json answers);
a server that cannot be reached raises :class:`~speakerid.errors.ServerError`. Nothing here
imports torch.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import fields
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np

from . import __version__, config
from . import errors as E
from .audio.decode import AudioBytes, _read_bytes, chunk_samples
from .audio.gates import each_file
from .audio.quality import MIN_SPEECH_SECONDS
from .results import (
    Candidate,
    CompareResult,
    EnrollResult,
    FileError,
    IdentifyResult,
    RegistryInfo,
    SpeakerInfo,
    StreamErrorEvent,
    StreamEvent,
    TrackResult,
    TrackSegment,
    TrackSpeaker,
    UtteranceInfo,
    VerifyResult,
    event_from_dict,
)

Progress = Callable[[int], None]

#: Speakers asked for per page by ``Client.list`` (the server's most; it follows the pages).
LIST_PAGE = 10_000

#: Fallbacks for answers that do not name a typed error (e.g. from a proxy in front).
_BY_STATUS: dict[int, type[E.SpeakerIDError]] = {
    400: E.InvalidInputError,
    401: E.AuthenticationError,
    403: E.PermissionDeniedError,
    404: E.SpeakerNotFoundError,
    409: E.SpeakerExistsError,
    413: E.LimitExceededError,
    503: E.NotReadyError,
}
#: A live stream's ``error`` event also says 408: it sent nothing for the idle limit.
_STREAM_STATUS = {**_BY_STATUS, 408: E.LimitExceededError, 500: E.ServerError}
#: Seconds the sending thread gets to notice that the stream ended.
_SENDER_JOIN = 5.0


def _build(cls: type, data: dict[str, Any], **override: Any) -> Any:
    """A result dataclass from its ``to_dict()``; fields the server adds later are kept when
    the local class has them and ignored otherwise (either side may be newer)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in {**data, **override}.items() if k in names})


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.removesuffix("Z")) if value else None


def _speaker(d: dict[str, Any]) -> SpeakerInfo:
    details = None
    if "sources" in d:
        details = [
            UtteranceInfo(u["source"], u["duration"], u["sha256"], _time(u["created"]))
            for u in d["sources"]
        ]
    return SpeakerInfo(
        d["name"],
        d["utterances"],
        _time(d["created"]),
        _time(d["updated"]),
        d.get("metadata"),
        details,
    )


def _pcm16(chunk: Any) -> np.ndarray:
    """A chunk as the wire's little-endian int16: int16 as it is, floats in [-1, 1] scaled by
    32768 (as the stream scales int16 back), NaN or infinity refused before anything is sent."""
    x = np.asarray(chunk).reshape(-1)
    if x.dtype == np.int16:
        return x.astype("<i2", copy=False)
    x = chunk_samples(x)  # the stream's own rule for what a chunk may hold
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def _identified(d: dict[str, Any]) -> Any:
    if "error" in d and "speaker" not in d:  # a file of the batch that could not be answered
        return FileError(d["file"], d["error"])
    return _build(IdentifyResult, d, candidates=[Candidate(**c) for c in d["candidates"]])


class Client:
    """SpeakerID over HTTP. ``url`` defaults to ``$SPEAKERID_SERVER``, ``key`` to
    ``$SPEAKERID_KEY`` (sent as ``Authorization: Bearer KEY``)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        timeout: float = 300.0,
        transport: Any = None,
    ) -> None:
        import httpx

        url = config.server_url(url)
        if not url:
            raise E.InvalidInputError(f"no server given: pass a URL or set ${config.ENV_SERVER}")
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        key = key if key is not None else os.environ.get(config.ENV_KEY) or None
        headers = {"User-Agent": f"speakerid/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(self._request(method, path, **kwargs), path)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The server's answer (an ``httpx.Response``); errors raised as typed errors."""
        import httpx

        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise E.ServerError(
                f"the speakerid server at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise E.ServerError(f"cannot reach the speakerid server at {self.url}: {exc}") from None
        if r.status_code >= 400:
            raise self._error(r)
        return r

    def _json(self, r: Any, path: str) -> Any:
        try:
            return r.json()
        except ValueError:
            raise E.ServerError(
                f"{self.url}{path}: the answer is not JSON (HTTP {r.status_code}): "
                f"not a speakerid server?"
            ) from None

    def _error(self, r: Any) -> E.SpeakerIDError:
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or "detail" not in body:
            return E.ServerError(f"{self.url}: HTTP {r.status_code} {r.reason_phrase}")
        cls = getattr(E, str(body.get("error")), None)
        if not (isinstance(cls, type) and issubclass(cls, E.SpeakerIDError)):
            cls = _BY_STATUS.get(r.status_code, E.ServerError)
        return cls(str(body["detail"]))

    @staticmethod
    def _upload(field: str, source: Any) -> tuple[str, tuple[str, bytes, str]]:
        data, name = _read_bytes(source)
        return field, (name, data, "application/octet-stream")

    @staticmethod
    def _params(**values: Any) -> dict[str, Any]:
        out = {}
        for k, v in values.items():
            if v is not None:
                out[k] = ("true" if v else "false") if isinstance(v, bool) else v
        return out

    # --- enrollment ------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        audio_files: Sequence,
        append: bool = False,
        metadata: dict[str, Any] | None = None,
        on_progress: Progress | None = None,
        force: bool = False,
        vad: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> EnrollResult:
        """Enroll ``name`` from one or more recordings (all-or-nothing, on the server)."""
        if not audio_files:
            raise E.InvalidInputError("enroll needs at least one audio file")
        files = [self._upload("files", f) for f in audio_files]
        form = {"metadata": json.dumps(metadata, ensure_ascii=False)} if metadata else None
        params = self._params(append=append, force=force, vad=vad, min_speech=min_speech)
        d = self._call(
            "POST",
            f"/v1/speakers/{quote(name, safe='')}/enrollments",
            params=params,
            files=files,
            data=form,
        )
        if on_progress:
            on_progress(len(files))
        return _build(EnrollResult, d)

    # --- queries ---------------------------------------------------------------------------
    def identify(
        self, audio: Any, top_k: int = 1, threshold: float | None = None
    ) -> IdentifyResult:
        return self.identify_many([audio], top_k=top_k, threshold=threshold)[0]

    def identify_many(
        self,
        files: Sequence,
        top_k: int = 1,
        threshold: float | None = None,
        on_progress: Progress | None = None,
        asnorm: bool = False,
        fail_fast: bool = True,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> list[IdentifyResult | FileError]:
        uploads = [self._upload("files", f) for f in files]
        params = self._params(
            top_k=top_k,
            threshold=threshold,
            asnorm=asnorm,
            fail_fast=fail_fast,
            min_speech=min_speech,
        )
        rows = self._call("POST", "/v1/identify", params=params, files=uploads)
        if on_progress:
            on_progress(len(uploads))
        return [_identified(d) for d in rows]

    def verify(
        self,
        name: str,
        audio: Any,
        threshold: float | None = None,
        asnorm: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> VerifyResult:
        params = self._params(threshold=threshold, asnorm=asnorm, min_speech=min_speech)
        d = self._call(
            "POST",
            "/v1/verify",
            params=params,
            files=[self._upload("file", audio)],
            data={"speaker": name},
        )
        return _build(VerifyResult, d)

    def verify_many(
        self,
        name: str,
        files: Sequence,
        threshold: float | None = None,
        asnorm: bool = False,
        on_progress: Progress | None = None,
        fail_fast: bool = True,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> list[VerifyResult | FileError]:
        """``verify`` for each file, in order; a bad file gives a ``FileError`` unless
        ``fail_fast`` (the same contract as ``SpeakerID.verify_many``)."""
        return each_file(
            lambda f: self.verify(name, f, threshold, asnorm, min_speech),
            files,
            fail_fast,
            on_progress,
        )

    def compare(
        self, a: Any, b: Any, threshold: float | None = None, min_speech: float = MIN_SPEECH_SECONDS
    ) -> CompareResult:
        files = [self._upload("file1", a), self._upload("file2", b)]
        params = self._params(threshold=threshold, min_speech=min_speech)
        d = self._call("POST", "/v1/compare", params=params, files=files)
        return _build(CompareResult, d)

    def track(
        self,
        audio: Any,
        threshold: float | None = None,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> TrackResult:
        """Who speaks when in one recording (``POST /v1/track``)."""
        params = self._params(
            threshold=threshold, num_speakers=num_speakers, max_speakers=max_speakers
        )
        d = self._call("POST", "/v1/track", params=params, files=[self._upload("file", audio)])
        res = _build(
            TrackResult,
            d,
            segments=[_build(TrackSegment, s) for s in d["segments"]],
            speakers=[_build(TrackSpeaker, s) for s in d["speakers"]],
        )
        if on_progress:
            on_progress(2 * res.duration)
        return res

    def track_many(
        self,
        files: Sequence,
        threshold: float | None = None,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
        on_progress: Callable[[float], None] | None = None,
        fail_fast: bool = True,
    ) -> list[TrackResult | FileError]:
        """``track`` for each file, in order (one request each); a bad file gives a
        ``FileError`` unless ``fail_fast`` (the contract of ``SpeakerID.track_many``)."""
        return each_file(
            lambda f: self.track(f, threshold, num_speakers, max_speakers, on_progress),
            files,
            fail_fast,
        )

    # --- live ------------------------------------------------------------------------------
    def stream(
        self,
        chunks: Iterable[Any],
        sample_rate: int = 16000,
        threshold: float | None = None,
    ) -> Iterator[StreamEvent]:
        """Who is speaking now (``GET /v1/stream``): the events of
        :meth:`SpeakerID.stream <speakerid.service.facade.SpeakerID.stream>`, as the server
        sends them, while ``chunks`` (int16 or float arrays of any size at ``sample_rate``)
        are sent from a background thread in messages of at most 1 s. When ``chunks`` ends
        the stream ends: the final segments follow, then the iterator stops. To stop early
        and still get them (Ctrl-C on a microphone), let ``chunks`` end; leaving the loop
        instead drops the stream. An ``error`` event raises its typed error."""
        with ExitStack() as stack:
            ws = self._connect_stream(stack, sample_rate, threshold)
            done = threading.Event()
            failed: list[BaseException] = []
            sender = threading.Thread(
                target=self._send_stream,
                args=(ws, chunks, sample_rate, done, failed),
                name="speakerid-stream-sender",
                daemon=True,
            )
            sender.start()
            try:
                yield from self._stream_events(ws, failed)
            finally:
                done.set()
                ws.close()
                sender.join(_SENDER_JOIN)

    def _connect_stream(self, stack: ExitStack, sample_rate: int, threshold: float | None) -> Any:
        """The WebSocket (entered as a context, as websockets wants), authenticated as every
        request; a refused handshake raises the typed error of the server's problem+json."""
        import httpx
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        query = urlencode(self._params(sample_rate=sample_rate, threshold=threshold))
        url = "ws" + self.url.removeprefix("http") + "/v1/stream?" + query
        key = self._http.headers.get("Authorization")
        try:
            return stack.enter_context(
                connect(
                    url,
                    additional_headers={"Authorization": key} if key else None,
                    user_agent_header=f"speakerid/{__version__}",
                    compression=None,
                    open_timeout=self.timeout,
                    max_size=2**20,
                )
            )
        except InvalidStatus as exc:
            r = exc.response
            raise self._error(httpx.Response(r.status_code, content=bytes(r.body or b""))) from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise E.ServerError(
                f"cannot open a live stream at {self.url}: {type(exc).__name__}: {exc}"
            ) from None

    @staticmethod
    def _send_stream(ws, chunks, rate: int, done: threading.Event, failed: list) -> None:
        """The sending thread: PCM in messages of at most 1 s, then ``{"type": "end"}``. A bad
        chunk or a failing iterable closes the stream and is raised by the reading side."""
        from websockets.exceptions import ConnectionClosed

        try:
            for chunk in chunks:
                pcm = _pcm16(chunk)
                for i in range(0, len(pcm), rate):
                    if done.is_set():
                        return
                    ws.send(pcm[i : i + rate].tobytes())
                if done.is_set():
                    return
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # the server ended the stream: the reading side says why
        except BaseException as exc:
            failed.append(exc)
            ws.close(1000, "the client's audio failed")

    def _stream_events(self, ws, failed: list) -> Iterator[StreamEvent]:
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        while True:
            try:
                raw = ws.recv(timeout=self.timeout)
            except TimeoutError:
                raise E.ServerError(
                    f"the live stream at {self.url} sent nothing for {self.timeout:g} s"
                ) from None
            except ConnectionClosed as exc:
                if failed:
                    raise failed[0] from None
                if isinstance(exc, ConnectionClosedOK) and exc.rcvd is not None:
                    return  # the server's normal close after the final segments
                why = exc.rcvd or exc.sent
                raise E.ServerError(
                    f"the live stream at {self.url} ended without its final segments "
                    f"({f'close {why}' if why else 'connection lost'})"
                ) from None
            try:
                event = event_from_dict(json.loads(raw))
            except (ValueError, TypeError, KeyError):
                shown = repr(raw)[:200]
                raise E.ServerError(f"{self.url}/v1/stream: not a stream event: {shown}") from None
            if isinstance(event, StreamErrorEvent):
                raise _STREAM_STATUS.get(event.status, E.ServerError)(event.detail)
            yield event

    def embed(self, files: Sequence) -> list[dict[str, Any]]:
        """``embed --json`` rows: ``{"file", "model", "dim", "embedding"}``."""
        return self._call("POST", "/v1/embed", files=[self._upload("files", f) for f in files])

    # --- management ------------------------------------------------------------------------
    def list(self) -> list[SpeakerInfo]:
        """Every speaker: the server answers in pages, followed here through their
        ``Link: <...>; rel="next"`` headers (a server without pages answers in one)."""
        rows: list[dict[str, Any]] = []
        url: Any = "/v1/speakers"
        params: dict[str, Any] | None = {"metadata": "true", "limit": LIST_PAGE}
        while url is not None:
            r = self._request("GET", url, params=params)
            rows += self._json(r, "/v1/speakers")
            nxt = r.links.get("next", {}).get("url")
            url = r.request.url.join(nxt) if nxt else None  # relative to the page's URL
            params = None  # the link carries the whole query
        return [_speaker(d) for d in rows]

    def show(self, name: str) -> SpeakerInfo:
        return _speaker(self._call("GET", f"/v1/speakers/{quote(name, safe='')}"))

    def remove(self, name: str) -> int:
        return int(self._call("DELETE", f"/v1/speakers/{quote(name, safe='')}")["utterances"])

    def rename(self, old: str, new: str) -> None:
        self._call("PATCH", f"/v1/speakers/{quote(old, safe='')}", json={"name": new})

    def info(self) -> RegistryInfo:
        return _build(RegistryInfo, self._call("GET", "/v1/info"))

    def threshold(self, override: float | None = None, asnorm: bool = False) -> tuple[float, str]:
        if override is not None:
            return config.parse_threshold(override, asnorm), "argument"
        d = self._call("GET", "/v1/threshold", params=self._params(asnorm=asnorm))
        return d["threshold"], d["source"]

    def set_threshold(
        self, value: float | None, source: str = "set by user", asnorm: bool = False
    ) -> None:
        """Store the registry's threshold (``None`` forgets it); needs an admin key."""
        body = {"threshold": value, "source": source, "asnorm": asnorm}
        self._call("PUT", "/v1/threshold", json=body)

    def ready(self) -> dict[str, Any]:
        """``/readyz``: model, speakers, auth mode; raises ``NotReadyError`` when not ready."""
        return self._call("GET", "/readyz")

    # --- keys (admin) ------------------------------------------------------------------------
    def create_key(self, name: str, scope: str = "read") -> str:
        """A new key's secret (shown once)."""
        return self._call("POST", "/v1/keys", json={"name": name, "scope": scope})["key"]

    def list_keys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/keys")

    def revoke_key(self, name: str) -> None:
        self._call("DELETE", f"/v1/keys/{quote(name, safe='')}")


__all__ = ["AudioBytes", "Client"]
