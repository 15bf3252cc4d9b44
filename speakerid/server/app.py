"""The FastAPI application: one warm :class:`~speakerid.service.facade.SpeakerID` per process, its
embedding moved onto the micro-batching worker, typed errors as problem+json, limits, metrics,
the web page and offline API docs."""

from __future__ import annotations

import functools
import logging
import os
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from .. import __version__
from ..errors import NotReadyError
from . import live, problems
from .auth import AccessMiddleware, NoSniff, Openness, may_see_details
from .batching import BatchingEmbedder
from .limits import BodyLimitMiddleware, too_large_message
from .metrics import Metrics, MetricsMiddleware
from .routes import router
from .settings import ServerSettings

log = logging.getLogger("speakerid")

#: The page and the docs are self-contained: this policy forbids anything from elsewhere.
#: ``script-src 'self'`` admits the Live tab's AudioWorklet module (live-worklet.js, same origin;
#: worklets cannot be inline); ``connect-src 'self'`` also covers the page's own ws:/wss: origin
#: (CSP Level 3), i.e. the ``/v1/stream`` WebSocket. No eval anywhere.
PAGE_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


class ServerState:
    """What the routes share: settings, the facade, its keys, metrics, worker-thread limits."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.sid: Any = None
        self.keys: Any = None
        #: Whether requests without a key are let in; only ever closes (``auth.Openness``).
        self.openness: Openness | None = None
        self.batcher: BatchingEmbedder | None = None
        self.started = False
        self.ready = False
        self.limiter: anyio.CapacityLimiter | None = None
        #: ``/v1/track``: one at a time per process. Its window passes run on the batching
        #: worker, block by block between other requests' batches; two long recordings at once
        #: would only take turns there, each holding a concurrency slot meanwhile.
        self.track_lock: anyio.Lock | None = None
        self.concurrency = settings.concurrency or 1

    def start(self) -> None:
        """Load the model, bind or check the registry, warm the network up (seconds; raises
        the library's typed errors, e.g. a model the registry is not bound to)."""
        from ..audio.decode import AudioClip, set_decode_limit
        from ..service.facade import SpeakerID
        from .limits import audio_limit

        s = self.settings
        sid = SpeakerID(db=s.db, model=s.model, device=s.device)
        try:
            sid.prepare()
            noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
            sid.embedder.embed_clips([AudioClip(noise, "<warm-up>", 16000, 1, "")])

            def batching(embedder):
                return BatchingEmbedder(
                    embedder,
                    self.metrics,
                    s.batch_max,
                    s.batch_wait_ms / 1000,
                    s.max_audio_seconds,
                    s.embed_timeout,
                )

            sid.wrap_embedder(batching)
            self.batcher = sid.embedder
            self.keys = sid.api_keys()
            self.openness = Openness(s, self.keys)
            self.concurrency = s.concurrency or _auto_concurrency(sid.embedder.device.type, s)
        except BaseException:
            sid.close()
            raise
        self.sid = sid
        # every decode of this process, whole or streamed, in any thread, stops at the limit
        self._decode_limit_before = set_decode_limit(audio_limit(s.max_audio_seconds))
        self.started = self.ready = True

    def stop(self) -> None:
        """After the last request: finish queued embeddings, close the registry."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close(timeout=30)
        if self.sid is not None:
            self.sid.close()
            from ..audio.decode import set_decode_limit

            set_decode_limit(self._decode_limit_before)

    def readiness(self, authorization: str | None) -> dict[str, Any]:
        """Ready or not; the model, the counts, the auth mode and why it is not ready only for
        a caller with a key (or on an open server): nothing for strangers to map."""
        details = may_see_details(self, authorization)
        if self.batcher is not None and not self.batcher.alive:  # every embedding would 503
            log.warning("not ready: the embedding worker has stopped")
            raise NotReadyError(
                "the embedding worker has stopped" if details else "the server is not ready"
            )
        try:
            b = self.sid.registry.binding()
            speakers, _ = self.sid.registry.counts()
            auth = self.openness.mode
        except Exception as exc:  # any failure here means "not ready"
            why = problems.registry_problem(exc)
            if details:
                raise NotReadyError(why) from None
            log.warning("not ready: %s", why)
            raise NotReadyError("the server is not ready") from None
        if not details:
            return {"status": "ready"}
        return {
            "status": "ready",
            "model": b.model_name if b else None,
            "speakers": speakers,
            "auth": auth,
        }

    async def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Blocking library work in a worker thread (decoding, SQLite, waiting for the embedder),
        at most ``self.concurrency`` at once; the event loop only moves bytes."""
        if not self.ready:
            raise NotReadyError("the server is starting or stopping")
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.limiter)

    async def light(self, fn, *args: Any) -> Any:
        """Short blocking work (key checks, readiness) on anyio's default thread pool."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def _auto_concurrency(device: str, settings: ServerSettings) -> int:
    """Requests in the service at once. On CPU the network runs clip by clip, so more than a
    few per core only adds threads that decode (and resample) against the compute thread; on
    a GPU enough must wait together to fill a batch."""
    if device == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
        return max(4, 2 * cores // settings.workers)
    return max(8, 2 * settings.batch_max)


def _page(name: str) -> str:
    return resources.files("speakerid.server").joinpath("static", name).read_text("utf-8")


def create_app(settings: ServerSettings | None = None, state: ServerState | None = None) -> FastAPI:
    """The ASGI app. A ``state`` already started (``speakerid serve`` loads the model before it
    binds the port, so that errors print as one line) is used as it is."""
    state = state or ServerState(settings or ServerSettings())
    settings = state.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if not state.started:
            await anyio.to_thread.run_sync(state.start)
        state.limiter = anyio.CapacityLimiter(state.concurrency)
        state.track_lock = anyio.Lock()
        yield
        await anyio.to_thread.run_sync(state.stop)

    app = _App(
        title="speakerid",
        version=__version__,
        summary="Speaker enrollment, identification and verification (ERes2NetV2)",
        description=(
            "Bodies and fields equal the CLI's `--json` contract. Errors are "
            "`application/problem+json` whose `detail` is the CLI's one-line message. "
            "Authenticate with `Authorization: Bearer KEY` (`speakerid keys create`)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = state
    problems.install(app, functools.partial(too_large_message, settings.max_upload_bytes))
    app.include_router(router)
    live.install(app, state)  # GET /v1/stream, the live WebSocket

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page("index.html"), headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/live-worklet.js", include_in_schema=False)
    async def live_worklet() -> Response:
        return Response(_page("live-worklet.js"), media_type="text/javascript")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_page("docs.html"), headers={"Content-Security-Policy": PAGE_CSP})

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    # outside the body limit: a request without a valid key is refused before any body is read
    app.add_middleware(AccessMiddleware, state=state, routes=[*router.routes, *live.router.routes])
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    _keep_uploads_in_memory(settings.max_upload_bytes)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app


class _App(FastAPI):
    """FastAPI with :class:`~.auth.NoSniff` around everything, its 500 answers included."""

    def build_middleware_stack(self):
        return NoSniff(super().build_middleware_stack())


def _keep_uploads_in_memory(max_bytes: int) -> None:
    """Starlette spools uploads above 1 MiB to temporary files; audio must never touch the
    disk, so parts stay in memory up to the body limit (which bounds them anyway)."""
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_bytes + 1)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with our error answers: problem+json instead of its 422s."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            responses.pop("422", None)
            for code, resp in responses.items():
                content = resp.get("content", {})
                if code.isdigit() and int(code) >= 400 and "application/json" in content:
                    resp["content"] = {problems.PROBLEM: content.pop("application/json")}
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = doc
    return doc


def worker_app() -> FastAPI:
    """Factory for ``--workers N`` processes (settings from ``$SPEAKERID_SERVE_SETTINGS``)."""
    return create_app(ServerSettings.from_env())
