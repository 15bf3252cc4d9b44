"""speakerid: local speaker enrollment, identification and verification with ERes2NetV2.

The heavy parts (torch) load lazily, so ``import speakerid`` and the registry-only
commands stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import config, errors

config.bound_openmp_spinning()  # before torch is imported (docs/performance.md, "Threads")

__version__ = "0.1.0"

__all__ = [
    "SpeakerID",
    "Client",
    "Embedder",
    "Embedding",
    "AudioClip",
    "load_audio",
    "errors",
    "__version__",
]

_LAZY = {
    "SpeakerID": ("speakerid.service.facade", "SpeakerID"),
    "Client": ("speakerid.client", "Client"),
    "Embedder": ("speakerid.embedding.embedder", "Embedder"),
    "Embedding": ("speakerid.embedding.embedder", "Embedding"),
    "AudioClip": ("speakerid.audio.decode", "AudioClip"),
    "load_audio": ("speakerid.audio.decode", "load_audio"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .audio.decode import AudioClip, load_audio
    from .client import Client
    from .embedding.embedder import Embedder, Embedding
    from .service.facade import SpeakerID


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'speakerid' has no attribute {name!r}")
