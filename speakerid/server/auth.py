"""API keys on requests: ``Authorization: Bearer KEY``, scopes read < write < admin.

With no keys in the registry a loopback server runs open (and says so when it starts); a server
on any other address refuses to start without keys unless ``--no-auth`` (an authenticating proxy
in front). Keys are checked against the registry on every request, so ``speakerid keys revoke``
takes effect at once, also for a running server.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ..errors import AuthenticationError, NotReadyError, PermissionDeniedError
from ..keys import KeyInfo

#: Documents the scheme in the OpenAPI document; the header is parsed below.
bearer = HTTPBearer(auto_error=False, description="An API key: speakerid keys create NAME")


def key_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("send the API key as 'Authorization: Bearer KEY'")
    return secret.strip()


def authorize(state, header: str | None, scope: str) -> KeyInfo | None:
    """The key allowed to do ``scope`` (None when the server runs open), or a typed error."""
    if not state.ready:
        raise NotReadyError("the server is starting or stopping")
    if state.settings.no_auth:
        return None
    secret = key_from_header(header)
    if state.keys.count() == 0:
        if state.settings.loopback:
            return None  # open on loopback until the first key is created
        raise AuthenticationError(
            "this server has no API keys yet: create one with speakerid keys create NAME "
            "--scope admin"
        )
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


def require(scope: str):
    """A route dependency: the request's key must allow ``scope``."""

    async def check(request: Request, _credentials=Depends(bearer)) -> KeyInfo | None:
        state = request.app.state.server
        header = request.headers.get("authorization")
        return await state.light(authorize, state, header, scope)

    return check
