"""Errors as ``application/problem+json`` (RFC 9457), mapped from the library's typed errors.

``detail`` is the one-line message the CLI prints after ``error:``; ``error`` names the typed
error (:mod:`speakerid.errors`), so that :class:`speakerid.client.Client` raises the same class.
User input never gives a 500 and no response ever carries a stack trace: anything unexpected is
logged on the server and answered with a generic 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E

log = logging.getLogger("speakerid")

PROBLEM = "application/problem+json"

#: Typed error -> HTTP status; the first matching row wins (subclasses before their bases).
STATUS: tuple[tuple[type[E.SpeakerIDError], int], ...] = (
    (E.LimitExceededError, 413),
    (E.PermissionDeniedError, 403),
    (E.AuthenticationError, 401),
    (E.EmbedderUnavailableError, 503),
    (E.NotReadyError, 503),
    (E.SpeakerNotFoundError, 404),
    (E.KeyNotFoundError, 404),
    (E.SpeakerExistsError, 409),
    (E.KeyExistsError, 409),
    (E.DuplicateEnrollmentError, 409),
    (E.EmptyRegistryError, 409),
    (E.ModelMismatchError, 409),
    (E.RegistryLockedError, 503),
    (E.RegistryCorruptError, 503),
    (E.RegistryNotFoundError, 503),
    (E.ModelError, 503),
    (E.AudioError, 400),
    (E.InvalidInputError, 400),
    (E.SpeakerIDError, 400),
)

#: Marks a request whose body went over the limit while it was being read (see limits.py).
BODY_TOO_LARGE = "speakerid.body_too_large"


def status_of(exc: E.SpeakerIDError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def problem(status: int, detail: str, error: str | None = None, headers=None) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = " ".join(str(detail).split())
    if error:
        body["error"] = error
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def error_response(exc: E.SpeakerIDError) -> JSONResponse:
    return problem(status_of(exc), str(exc), type(exc).__name__)


def registry_problem(exc: Exception) -> str:
    """One line for a database failure (the driver's message, not the SQL statement)."""
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return f"the registry database does not answer: {detail}"


def _validation_detail(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = {"query": "query parameter", "path": "path parameter", "header": "header"}
    if len(loc) >= 2 and loc[0] in where:
        name = f"{where[loc[0]]} {loc[1]!r}"
    else:
        name = f"field {loc[-1]!r}" if loc else "request"
    msg = first.get("msg", "invalid request")
    if first.get("type") == "missing":
        return f"{name} is required"
    return f"{name}: {msg}"


def install(app: FastAPI, limit_message) -> None:
    """Register the handlers; ``limit_message()`` words the 413 of an oversized body."""

    @app.exception_handler(E.SpeakerIDError)
    async def speakerid_error(_request: Request, exc: E.SpeakerIDError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.scope.get(BODY_TOO_LARGE):
            return problem(413, limit_message(), "LimitExceededError")
        return problem(400, _validation_detail(exc), "InvalidInputError")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.scope.get(BODY_TOO_LARGE):
            return problem(413, limit_message(), "LimitExceededError")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and "parsing the body" in detail:
            detail = "the request body is not valid multipart/form-data or JSON"
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def registry_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("registry error in %s %s: %s", request.method, request.url.path, exc)
        return problem(503, registry_problem(exc), "NotReadyError")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error in %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal server error (the server log has the details)")
