"""API keys of the HTTP service, kept in the registry database (``speakerid keys``).

A key is a random 256-bit secret shown once when it is created; the registry stores only its
sha256 (a fast hash is enough for a secret of that entropy: nothing to brute-force). A presented
key is hashed and compared with every stored hash in constant time, so neither the answer nor
its timing tells how close a guess was. Scopes are ordered: ``read`` (identify, verify, compare,
embed, list, show) < ``write`` (also enroll, rename, remove) < ``admin`` (also keys and
thresholds).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidInputError, KeyExistsError, KeyNotFoundError
from ..results import _iso
from .schema import ApiKey, utcnow
from .store import Registry, check_name

SCOPES = ("read", "write", "admin")
#: Every secret starts with this, so that leaked keys are easy to recognise (secret scanners).
KEY_PREFIX = "spk_"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    scope: str
    created: datetime

    def allows(self, scope: str) -> bool:
        """Whether this key's scope includes ``scope`` (read < write < admin)."""
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "created": _iso(self.created)}


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInputError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    return scope


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """Create, list, revoke and check the API keys of one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def create(self, name: str, scope: str) -> tuple[KeyInfo, str]:
        """A new key ``(info, secret)``; the secret is not stored and cannot be shown again."""
        name = check_name(name)
        check_scope(scope)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(name=name, scope=scope, key_sha256=_digest(secret), created=utcnow())
        try:
            with self.registry.db.write() as s:
                if s.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
                    raise KeyExistsError(f"an API key named {name!r} already exists")
                s.add(row)
        except IntegrityError:  # pragma: no cover - another process won the race
            raise KeyExistsError(f"an API key named {name!r} already exists") from None
        return KeyInfo(name, scope, row.created), secret

    def list(self) -> list[KeyInfo]:
        with self.registry.db.Session() as s:
            rows = s.execute(
                select(ApiKey.name, ApiKey.scope, ApiKey.created).order_by(ApiKey.name)
            )
            return [KeyInfo(n, sc, c) for n, sc, c in rows]

    def revoke(self, name: str) -> None:
        name = check_name(name)
        with self.registry.db.write() as s:
            gone = s.execute(delete(ApiKey).where(ApiKey.name == name)).rowcount
        if not gone:
            raise KeyNotFoundError(f"no API key named {name!r}")

    def count(self) -> int:
        with self.registry.db.Session() as s:
            return s.scalar(select(func.count(ApiKey.id))) or 0

    def authenticate(self, secret: str) -> KeyInfo | None:
        """The key whose secret this is, or None; every stored hash is compared in constant time
        (no early exit), so timing reveals nothing about the stored keys."""
        digest = _digest(secret)
        with self.registry.db.Session() as s:
            rows = s.execute(select(ApiKey.name, ApiKey.scope, ApiKey.created, ApiKey.key_sha256))
            found = None
            for name, scope, created, stored in rows:
                if hmac.compare_digest(digest, stored):
                    found = KeyInfo(name, scope, created)
        return found
