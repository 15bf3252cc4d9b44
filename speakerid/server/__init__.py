"""``speakerid serve``: the HTTP service over the same
:class:`~speakerid.service.facade.SpeakerID` as the CLI (FastAPI on uvicorn). ``create_app``
builds the ASGI app; ``runner.run`` serves it."""

from __future__ import annotations

from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(*args, **kwargs):
    """See :func:`speakerid.server.app.create_app` (imported lazily: FastAPI is not light)."""
    from .app import create_app as _create

    return _create(*args, **kwargs)
