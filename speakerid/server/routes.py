"""The HTTP API (``/v1``): each route reads its uploads, checks limits, and calls the same
:class:`~speakerid.service.facade.SpeakerID` method as the CLI, in a worker thread; the answer is
the result's ``to_dict()``, i.e. the CLI's ``--json`` contract."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from ..audio.decode import AudioBytes
from ..audio.quality import MIN_SPEECH_SECONDS
from ..errors import InvalidInputError, NotReadyError
from . import schemas as S
from .auth import require
from .limits import check_length, check_sources

#: Largest top-k a request may ask for (a server limit, not a scoring rule).
MAX_TOP_K = 100
#: ``GET /v1/speakers``: speakers per page unless ``limit`` asks otherwise, and the most.
SPEAKERS_PAGE = 1000
SPEAKERS_PAGE_MAX = 10_000

MIN_SPEECH = MIN_SPEECH_SECONDS
MIN_SPEECH_HELP = "Probes with less net speech (s) are rejected unscored as 'no speech'; 0: off"

router = APIRouter()
READ, WRITE, ADMIN = (Depends(require(s)) for s in ("read", "write", "admin"))


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers a route can give."""
    return {c: {"model": S.Problem} for c in sorted({*codes, 401, 403, 503})}


def ok(model: type, status: int = 200, **more: Any) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, **more}}


def _state(request: Request):
    return request.app.state.server


async def _read(files: list[UploadFile]) -> list[AudioBytes]:
    return [AudioBytes(await f.read(), f.filename or "upload") for f in files]


def _checked(state, sources: list[AudioBytes]) -> list[AudioBytes]:
    s = state.settings
    check_sources(sources, s.max_files, s.max_audio_seconds)
    return sources


FilesField = File(..., description="One or more audio files (WAV, FLAC, Ogg/Opus, MP3, ...)")


# --- service ---------------------------------------------------------------------------------
@router.get("/healthz", tags=["service"], responses=ok(S.Health))
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the model or the registry)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], responses={**ok(S.Ready), **errors(503)})
async def readyz(request: Request) -> dict[str, Any]:
    """The model is loaded and the registry answers: send traffic. Callers without a key get
    only that (the model, counts and auth mode need a key, or an open server)."""
    state = _state(request)
    if not state.ready:
        raise NotReadyError("the server is starting or stopping")
    return await state.light(state.readiness, request.headers.get("authorization"))


@router.get("/v1/info", tags=["service"], dependencies=[READ], responses={**ok(S.Info), **errors()})
async def info(request: Request) -> dict[str, Any]:
    """Registry path, bound model, counts, threshold and index state (``speakerid info``)."""
    state = _state(request)
    return (await state.run(state.sid.info)).to_dict()


@router.get(
    "/v1/threshold",
    tags=["service"],
    dependencies=[READ],
    responses={**ok(S.ThresholdOut), **errors(400)},
)
async def get_threshold(request: Request, asnorm: bool = False) -> dict[str, Any]:
    """The effective threshold and where it comes from (``speakerid threshold``)."""
    state = _state(request)
    t, source = await state.run(state.sid.threshold, None, asnorm)
    return {"threshold": t, "source": source}


@router.put(
    "/v1/threshold",
    tags=["service"],
    dependencies=[ADMIN],
    responses={**ok(S.ThresholdOut), **errors(400)},
)
async def set_threshold(request: Request, body: S.ThresholdIn) -> dict[str, Any]:
    """Store the registry's threshold, or forget it with ``null`` (admin)."""
    state = _state(request)

    def work():
        state.sid.set_threshold(body.threshold, body.source, asnorm=body.asnorm)
        return state.sid.threshold(None, body.asnorm)

    t, source = await state.run(work)
    return {"threshold": t, "source": source}


# --- speakers ----------------------------------------------------------------------------------
@router.get(
    "/v1/speakers",
    tags=["speakers"],
    dependencies=[READ],
    responses={**ok(list[S.SpeakerRow]), **errors(400)},
)
async def list_speakers(
    request: Request,
    response: Response,
    metadata: bool = Query(False, description="Include each speaker's metadata"),
    limit: int = Query(SPEAKERS_PAGE, ge=1, le=SPEAKERS_PAGE_MAX, description="Speakers per page"),
    after: str | None = Query(
        None, description="Start after this name (the previous page's last; see Link)"
    ),
) -> list[dict[str, Any]]:
    """Enrolled speakers in code-point order of names, one page at a time (``speakerid list
    --json``; with ``metadata``, as the Python API). When more follow, the ``Link`` header
    holds the next page's query: ``<?limit=N&after=NAME>; rel="next"``."""
    state = _state(request)
    rows = await state.run(state.sid.list, limit + 1, after)
    if len(rows) > limit:  # one more than asked: there is a next page
        rows = rows[:limit]
        query = {"limit": limit, "after": rows[-1].name}
        if metadata:
            query["metadata"] = "true"
        pairs = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
        response.headers["Link"] = f'<?{pairs}>; rel="next"'
    if metadata:
        return [r.to_dict() for r in rows]
    return [{k: v for k, v in r.to_dict().items() if k != "metadata"} for r in rows]


@router.get(
    "/v1/speakers/{name:path}",
    tags=["speakers"],
    dependencies=[READ],
    responses={**ok(S.SpeakerDetail), **errors(400, 404)},
)
async def show_speaker(request: Request, name: str) -> dict[str, Any]:
    """One speaker's recordings (sources, durations, hashes) and metadata (``show --json``)."""
    state = _state(request)
    return (await state.run(state.sid.show, name)).to_dict()


@router.delete(
    "/v1/speakers/{name:path}",
    tags=["speakers"],
    dependencies=[WRITE],
    responses={**ok(S.Removed), **errors(400, 404)},
)
async def remove_speaker(request: Request, name: str) -> dict[str, Any]:
    """Delete a speaker and all its embeddings (``remove --json``)."""
    state = _state(request)
    count = await state.run(state.sid.remove, name)
    return {"removed": name, "utterances": count}


@router.patch(
    "/v1/speakers/{name:path}",
    tags=["speakers"],
    dependencies=[WRITE],
    responses={**ok(S.Renamed), **errors(400, 404, 409)},
)
async def rename_speaker(request: Request, name: str, body: S.RenameIn) -> dict[str, Any]:
    """Rename a speaker: body ``{"name": NEW}`` (``rename --json``)."""
    state = _state(request)
    await state.run(state.sid.rename, name, body.name)
    return {"old": name, "new": body.name}


@router.post(
    "/v1/speakers/{name:path}/enrollments",
    tags=["speakers"],
    dependencies=[WRITE],
    responses={
        **ok(S.EnrollOut, 201, description="A new speaker was created"),
        **ok(S.EnrollOut, 200, description="Recordings were added to the speaker (append)"),
        **errors(400, 404, 409, 413),
    },
)
async def enroll(
    request: Request,
    name: str,
    files: list[UploadFile] = FilesField,
    metadata: str | None = Form(None, description="A JSON object stored with the speaker"),
    append: bool = Query(False, description="Add to an existing speaker"),
    force: bool = Query(False, description="Enroll despite too little speech"),
    vad: bool = Query(False, description="Trim silence before embedding"),
    min_speech: float = Query(MIN_SPEECH_SECONDS, description="Minimum net speech (s)"),
) -> JSONResponse:
    """Enroll a speaker from one or more recordings, all or nothing (``enroll --json``)."""
    state = _state(request)
    meta = _metadata(metadata)
    sources = await _read(files)

    def work():
        return state.sid.enroll(
            name,
            _checked(state, sources),
            append=append,
            metadata=meta,
            force=force,
            vad=vad,
            min_speech=min_speech,
        )

    res = await state.run(work)
    return JSONResponse(res.to_dict(), status_code=201 if res.created else 200)


def _metadata(raw: str | None) -> dict | None:
    if raw is None or raw == "":
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise InvalidInputError("metadata must be a JSON object") from None
    if not isinstance(meta, dict):
        raise InvalidInputError("metadata must be a JSON object")
    return meta or None


# --- recognition -----------------------------------------------------------------------------
@router.post(
    "/v1/identify",
    tags=["recognition"],
    dependencies=[READ],
    responses={**ok(list[S.IdentifyItem | S.FileErrorRow]), **errors(400, 409, 413)},
)
async def identify(
    request: Request,
    files: list[UploadFile] = FilesField,
    top_k: int = Query(1, le=MAX_TOP_K, description="Candidates to list"),
    threshold: float | None = Query(None, description="Cosine threshold (default: the registry's)"),
    asnorm: bool = Query(False, description="AS-Norm scores against the registry's speakers"),
    min_speech: float = Query(MIN_SPEECH, ge=0, description=MIN_SPEECH_HELP),
    fail_fast: bool = Query(
        True, description="A bad file fails the request (false: it gets {file, error})"
    ),
) -> list[dict[str, Any]]:
    """Who is speaking? One answer per file, open-set (``identify --json``)."""
    state = _state(request)
    sources = await _read(files)

    def work():
        return state.sid.identify_many(
            _checked(state, sources),
            top_k=top_k,
            threshold=threshold,
            asnorm=asnorm,
            fail_fast=fail_fast,
            min_speech=min_speech,
        )

    return [r.to_dict() for r in await state.run(work)]


@router.post(
    "/v1/verify",
    tags=["recognition"],
    dependencies=[READ],
    responses={**ok(S.VerifyOut), **errors(400, 404, 413)},
)
async def verify(
    request: Request,
    file: UploadFile = File(..., description="The recording to check"),
    speaker: str = Form(..., description="The claimed speaker"),
    threshold: float | None = Query(None, description="Cosine threshold (default: the registry's)"),
    asnorm: bool = Query(False, description="AS-Norm score against the registry's speakers"),
    min_speech: float = Query(MIN_SPEECH, ge=0, description=MIN_SPEECH_HELP),
) -> dict[str, Any]:
    """Is this really SPEAKER? (``verify --json``; ``accepted`` is the answer)."""
    state = _state(request)
    sources = await _read([file])

    def work():
        src = _checked(state, sources)[0]
        return state.sid.verify(speaker, src, threshold, asnorm, min_speech)

    return (await state.run(work)).to_dict()


@router.post(
    "/v1/compare",
    tags=["recognition"],
    dependencies=[READ],
    responses={**ok(S.CompareOut), **errors(400, 413)},
)
async def compare(
    request: Request,
    file1: UploadFile = File(..., description="First recording"),
    file2: UploadFile = File(..., description="Second recording"),
    threshold: float | None = Query(None, description="Cosine threshold (default: the registry's)"),
    min_speech: float = Query(MIN_SPEECH, ge=0, description=MIN_SPEECH_HELP),
) -> dict[str, Any]:
    """Same speaker in two recordings? (``compare --json``; no registry entry involved)."""
    state = _state(request)
    sources = await _read([file1, file2])

    def work():
        a, b = _checked(state, sources)
        return state.sid.compare(a, b, threshold=threshold, min_speech=min_speech)

    return (await state.run(work)).to_dict()


@router.post(
    "/v1/embed",
    tags=["recognition"],
    dependencies=[READ],
    responses={**ok(list[S.EmbedRow]), **errors(400, 413)},
)
async def embed(request: Request, files: list[UploadFile] = FilesField) -> list[dict[str, Any]]:
    """L2-normalized embeddings of the registry's model (``embed --json``)."""
    state = _state(request)
    sources = await _read(files)

    def work():
        return state.sid.embedder.embed_many(_checked(state, sources))

    rows = await state.run(work)
    return [
        {
            "file": src.name,
            "model": e.model,
            "dim": e.dim,
            "embedding": [round(float(v), 7) for v in e.vector],
        }
        for src, e in zip(sources, rows)
    ]


@router.post(
    "/v1/track",
    tags=["recognition"],
    dependencies=[READ],
    responses={**ok(S.TrackOut), **errors(400, 413)},
)
async def track(
    request: Request,
    file: UploadFile = File(..., description="One recording (a meeting, a call, ...)"),
    threshold: float | None = Query(None, description="Cosine threshold (default: the registry's)"),
    num_speakers: int | None = Query(None, ge=1, description="Exact number of speakers"),
    max_speakers: int | None = Query(None, ge=1, description="At most this many speakers"),
) -> dict[str, Any]:
    """Who speaks when? Enrolled voices by name, the others ``unknown-1``, ... (``track
    --json``: the object of the one file). One tracking computes at a time per process."""
    state = _state(request)
    sources = await _read([file])

    def work():
        src = _checked(state, sources)[0]
        check_length(src, state.settings.max_audio_seconds)
        return state.sid.track(src, threshold, num_speakers, max_speakers)

    async with state.track_lock:
        res = await state.run(work)
    state.metrics.audio_seconds_tracked.inc(res.duration)
    return res.to_dict()


# --- keys ------------------------------------------------------------------------------------
@router.get(
    "/v1/keys", tags=["keys"], dependencies=[ADMIN], responses={**ok(list[S.KeyRow]), **errors()}
)
async def list_keys(request: Request) -> list[dict[str, Any]]:
    """API keys: names, scopes, creation times (never the secrets)."""
    state = _state(request)
    return [k.to_dict() for k in await state.run(state.keys.list)]


@router.post(
    "/v1/keys",
    tags=["keys"],
    dependencies=[ADMIN],
    status_code=201,
    responses={**ok(S.KeyCreated, 201), **errors(400, 409)},
)
async def create_key(request: Request, body: S.KeyIn = Body(...)) -> dict[str, Any]:
    """Create a key; the answer holds its secret, which is not stored and never shown again."""
    state = _state(request)
    info, secret = await state.run(state.keys.create, body.name, body.scope)
    return {"name": info.name, "scope": info.scope, "key": secret}


@router.delete(
    "/v1/keys/{name:path}",
    tags=["keys"],
    dependencies=[ADMIN],
    responses={**ok(S.Revoked), **errors(400, 404)},
)
async def revoke_key(request: Request, name: str) -> dict[str, Any]:
    """Revoke a key: requests with it are refused from now on."""
    state = _state(request)
    await state.run(state.keys.revoke, name)
    return {"revoked": name}


# --- metrics ---------------------------------------------------------------------------------
@router.get(
    "/metrics",
    tags=["service"],
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text: requests and latency by route and status, audio seconds embedded,
    batch sizes, queue depth."""
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)
