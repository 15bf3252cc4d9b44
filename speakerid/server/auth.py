"""Who may call the server: API keys (``Authorization: Bearer KEY``, scopes read < write <
admin), an open loopback server, and the Host/Origin checks that keep browsers out of it.

Every request is decided by :class:`AccessMiddleware` from its method, path and headers alone,
before any of its body is read: a caller without a valid key never makes the server buffer an
upload (uvicorn discards a refused request's body as it arrives). The route declares the scope
it needs (``dependencies=[Depends(require("write"))]``), so the rule lives in one place.

Openness only ever tightens while a server runs (:class:`Openness`): it starts open only with no
keys on a loopback bind (or ``--no-auth``), the first key it sees closes it, and revoking the
last key does not reopen it. An open server answers only requests addressed to it on this
machine: the Host header must name it and an Origin, when sent, must be its own; requests a
proxy relayed are refused (a proxy on the same host arrives from loopback too).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.routing import Match

from ..errors import AuthenticationError, NotReadyError, PermissionDeniedError, SpeakerIDError
from ..registry.keys import KeyInfo
from .problems import error_response, problem

log = logging.getLogger("speakerid")

#: Documents the scheme in the OpenAPI document; the header is read by the middleware.
bearer = HTTPBearer(auto_error=False, description="An API key: speakerid keys create NAME")

#: The request scope's entry for the key the middleware let in (None: the server runs open).
KEY = "speakerid.key"

#: Headers only a proxy adds: an open server refuses what a proxy relays.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


class Openness:
    """Whether requests without a key are let in. Decided when the server starts; afterwards it
    can only close. Worker processes of one server (``--workers N``) share it through a flag
    file the supervisor creates: the first worker to see a key deletes it, so workers that have
    not seen the key yet, and workers restarted later, are closed as well. Replicas that share
    the database each close at their first request after a key exists."""

    def __init__(self, settings: Any, keys: Any) -> None:
        self.disabled = bool(settings.no_auth)
        self.flag: str | None = settings.open_flag
        self.keys = keys
        self._lock = threading.Lock()
        self._open = (
            not self.disabled
            and settings.loopback
            and (self.flag is None or os.path.exists(self.flag))
            and keys.count() == 0
        )
        if not self._open:
            self._drop_flag()

    @property
    def mode(self) -> str:
        """disabled (``--no-auth``), open (no keys yet, loopback) or keys."""
        return "disabled" if self.disabled else "open" if self._open else "keys"

    @property
    def may_be_open(self) -> bool:
        """False once closed (no query needed); True may still turn out closed."""
        return self._open

    def still_open(self) -> bool:
        """Whether this request may come without a key (one count query while open, none once
        closed): the first key created anywhere closes the server for the rest of its life."""
        if not self._open:
            return False
        if (self.flag is not None and not os.path.exists(self.flag)) or self.keys.count():
            self.close()
        return self._open

    def close(self) -> None:
        with self._lock:
            if self._open:
                log.warning(
                    "an API key exists: requests need 'Authorization: Bearer KEY' from now on "
                    "(revoking every key does not reopen this server; restart it for that)"
                )
            self._open = False
        self._drop_flag()

    def _drop_flag(self) -> None:
        if self.flag is not None:
            try:
                os.unlink(self.flag)
            except FileNotFoundError:
                pass


def key_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("send the API key as 'Authorization: Bearer KEY'")
    return secret.strip()


#: Browsers cannot set headers on a WebSocket: they offer the key as this subprotocol.
SUBPROTOCOL_PREFIX = "bearer."


def offered_bearer(scope: dict) -> str | None:
    """The subprotocol ``bearer.KEY`` a WebSocket client offered (the server accepts with it
    selected: a browser drops a connection whose server picks none of those it offered)."""
    return next(
        (p for p in scope.get("subprotocols") or () if p.startswith(SUBPROTOCOL_PREFIX)), None
    )


def _headers(scope: dict) -> Headers:
    """The request's headers; on a WebSocket without ``Authorization``, the key of its
    ``bearer.KEY`` subprotocol stands in for that header (the same check follows)."""
    headers = Headers(scope=scope)
    offered = offered_bearer(scope) if scope["type"] == "websocket" else None
    if offered is None or "authorization" in headers:
        return headers
    bearer = f"Bearer {offered[len(SUBPROTOCOL_PREFIX) :]}".encode("latin-1")
    return Headers(raw=[*scope["headers"], (b"authorization", bearer)])


def check_local(settings: Any, headers: Headers, port: int) -> None:
    """An open server answers programs on this machine that address it by name: a web page
    elsewhere (a cross-site form, DNS rebinding) or a proxy gets 403."""
    bound = settings.url(port).split("//", 1)[1]  # host:port as the server was bound
    names = {"127.0.0.1", "localhost", "[::1]", bound.rsplit(":", 1)[0]}
    allowed = {f"{n}:{port}".lower() for n in names}
    if port == 80:  # browsers leave the default port out
        allowed |= {n.lower() for n in names}
    hint = "; create an API key (speakerid keys create NAME --scope admin) to serve other clients"
    host = headers.get("host", "").strip().lower()
    if host not in allowed:
        raise PermissionDeniedError(
            f"this server runs open (no API keys) and answers only requests addressed to it on "
            f"this machine ({bound} or localhost:{port}), not Host {host or '(none)'!r}{hint}"
        )
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in allowed}:
        raise PermissionDeniedError(
            f"cross-site request refused: Origin {origin!r} is not this server's "
            f"(http://{host}){hint}"
        )
    relayed = next((h for h in PROXY_HEADERS if h in headers), None)
    if relayed:
        raise PermissionDeniedError(
            f"this server runs open (no API keys) and refuses requests relayed by a proxy "
            f"({relayed} header){hint}"
        )


def authorize(state: Any, header: str | None, scope: str) -> KeyInfo | None:
    """The key allowed to do ``scope`` (None when the server runs open), or a typed error."""
    if state.openness.disabled or state.openness.still_open():
        return None
    secret = key_from_header(header)
    if secret is None:
        raise AuthenticationError("this server needs an API key: send 'Authorization: Bearer KEY'")
    key = state.keys.authenticate(secret)
    if key is None:
        raise AuthenticationError("unknown API key (revoked or mistyped)")
    if not key.allows(scope):
        raise PermissionDeniedError(
            f"the API key {key.name!r} has scope {key.scope!r}; this needs {scope!r}"
        )
    return key


def admit(state: Any, headers: Headers, port: int, needs: str | None) -> KeyInfo | None:
    """The whole decision for one request (blocking: it may query the keys)."""
    if state.openness.still_open():
        check_local(state.settings, headers, port)
    return authorize(state, headers.get("authorization"), needs) if needs else None


def may_see_details(state: Any, header: str | None) -> bool:
    """Whether ``/readyz`` may say more than ready/not ready: a valid key (any scope), or an
    open server (whose callers passed the Host/Origin check and may do anything anyway)."""
    if not state.ready:
        return False
    try:
        if state.openness.still_open():
            return True
        secret = key_from_header(header)
        return secret is not None and state.keys.authenticate(secret) is not None
    except (SpeakerIDError, SQLAlchemyError):
        return False


def require(scope: str):
    """A route dependency that declares the scope the route needs. The check itself runs in
    :class:`AccessMiddleware` before the body is read; this only hands the key on."""

    async def check(request: Request, _credentials=Depends(bearer)) -> KeyInfo | None:
        if KEY not in request.scope:  # never let a request in that the middleware did not see
            raise AuthenticationError("this request was not authorized")
        return request.scope[KEY]

    check.needs = scope  # type: ignore[attr-defined]
    return check


def needed_scope(routes: list, scope: dict) -> str | None:
    """The scope the route this request reaches declares (None: public, unknown or 405)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            for dep in getattr(route, "dependencies", ()):
                needs = getattr(dep.dependency, "needs", None)
                if needs:
                    return needs
            return None
    return None


class AccessMiddleware:
    """Admits or refuses each request before the app reads its body; refusals are problem+json
    (401 no or unknown key, 403 scope or a foreign Host/Origin on an open server, 503 not
    ready). Public routes on a closed server pass without a thread hop. A WebSocket handshake
    is decided the same way, before it is accepted (refused with the same problem+json as an
    HTTP answer to the handshake, where the server offers that, else a bare 403)."""

    def __init__(self, app, state: Any, routes: list) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = self.state
        needs = needed_scope(self.routes, scope)
        if not state.ready:
            if needs:
                await _refuse(
                    error_response(NotReadyError("the server is starting or stopping")),
                    scope,
                    receive,
                    send,
                )
                return
            await self.app(scope, receive, send)
            return
        if needs is None and not state.openness.may_be_open:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        port = (scope.get("server") or ("", 80))[1] or 80
        try:
            scope[KEY] = await state.light(admit, state, headers, port, needs)
        except SpeakerIDError as exc:
            await _refuse(error_response(exc), scope, receive, send)
            return
        except SQLAlchemyError as exc:  # the driver's message is for the log, not the caller
            log.error("registry error while checking access to %s: %s", scope["path"], exc)
            response = problem(
                503,
                "the registry database does not answer (the server log has the details)",
                "NotReadyError",
            )
            await _refuse(response, scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _refuse(response, scope, receive, send) -> None:
    """A refusal: the response itself, or on a WebSocket whose server cannot answer a handshake
    with a response (ASGI's ``websocket.http.response``), a close before accept (a bare 403)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
        "extensions", {}
    ):
        await send({"type": "websocket.close", "code": 1008})
        return
    await response(scope, receive, send)


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every answer, errors and 500s included (it wraps
    the whole app, outside Starlette's error handling)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), _NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


_NOSNIFF = (b"x-content-type-options", b"nosniff")
