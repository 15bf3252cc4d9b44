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
    "SpeakerID": ("speakerid.service", "SpeakerID"),
    "Client": ("speakerid.client", "Client"),
    "Embedder": ("speakerid.embedder", "Embedder"),
    "Embedding": ("speakerid.embedder", "Embedding"),
    "AudioClip": ("speakerid.audio", "AudioClip"),
    "load_audio": ("speakerid.audio", "load_audio"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioClip, load_audio
    from .client import Client
    from .embedder import Embedder, Embedding
    from .service import SpeakerID


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'speakerid' has no attribute {name!r}")
