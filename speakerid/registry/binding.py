"""``ModelBinding``: one registry and the embedding model bound to it.

The registry is opened on first use (reads never create files); the model is the requested
one (``model=`` or ``$SPEAKERID_MODEL``) or else the registry's, and a requested model must be
the bound one (same sha256). Nothing here imports torch until the embedder is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import config
from ..errors import (
    DeviceError,
    ModelError,
    ModelMismatchError,
    ModelNotInstalledError,
    OnnxUnavailableError,
)
from .database import DatabaseURL
from .store import Registry

#: Model errors about how to run the network, not about the file: never "if the file moved".
RUN_ERRORS = (DeviceError, OnnxUnavailableError)


class ModelBinding:
    """Which registry, which model, and the check that the two belong together."""

    def __init__(
        self,
        location: DatabaseURL,
        index_kind: str,
        model: str | None = None,
        device: str | None = None,
        download_progress: Callable[[int, int | None], None] | None = None,
        backend: str | None = None,
        on_prepare: Callable[[str], Any] | None = None,
        precision: str | None = None,
    ) -> None:
        self.location = location
        self.model = model
        self.download_progress = download_progress
        self._index_kind = index_kind
        self._device = device
        self._backend = backend  # auto (ONNX Runtime on CPU, PyTorch on CUDA), torch or onnx
        self._on_prepare = on_prepare  # shown while a model is exported for ONNX Runtime
        self._precision = precision
        self._registry: Registry | None = None
        self._embedder = None
        self._detached = False

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    # --- registry ----------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The registry, opened on first use; reading a registry that does not exist is an
        error (``RegistryNotFoundError``), so read-only calls never create files."""
        if self._registry is None:
            self._registry = Registry(self.location, self._index_kind, create=False)
        return self._registry

    def writable_registry(self) -> Registry:
        """The registry for a write, created (with its folder) when it does not exist yet."""
        if self._registry is None:
            self._registry = Registry(self.location, self._index_kind, create=True)
        return self._registry

    def exists(self) -> bool:
        """Whether the registry exists (opened, or there to open); creates nothing."""
        return self._registry is not None or self.location.exists()

    def binding(self):
        """The registry's binding, or None when it is unbound or does not exist (no files made)."""
        if self._detached or not self.exists():
            return None
        return self.registry.binding()

    @property
    def requested(self) -> str | None:
        """The model asked for (``model=`` or ``$SPEAKERID_MODEL``), if any."""
        return config.requested_model(self.model)

    def registry_free(self) -> None:
        """For work that stores nothing (compare, evaluate): when a model other than the
        registry's is requested, use it with its own card threshold instead of refusing."""
        from ..embedding import weights

        requested = self.requested
        binding = self.binding()
        if requested and binding is not None and self._embedder is None:
            if weights.identity(requested).sha256 != binding.model_sha256:
                self._detached = True

    # --- model -------------------------------------------------------------------------------
    @property
    def embedder(self):
        """The embedder: the requested model or the registry's bound one; a requested model
        must have the bound model's sha256."""
        if self._embedder is None:
            from ..embedding.embedder import Embedder

            binding = self.binding()
            requested = self.requested
            ref = requested or (binding.model_ref if binding else config.DEFAULT_MODEL)
            try:
                emb = Embedder(
                    ref,
                    device=self._device,
                    progress=self.download_progress,
                    backend=self._backend,
                    on_prepare=self._on_prepare,
                    precision=self._precision,
                )
            except ModelError as exc:
                # how to run it (device, precision, backend) is not about where the file is
                if binding is None or requested or isinstance(exc, RUN_ERRORS):
                    raise
                raise ModelNotInstalledError(
                    f"registry {self.location} is bound to model {binding.model_name!r} "
                    f"({binding.model_ref}, sha256 {binding.model_sha256[:12]}), which cannot "
                    f"be loaded: {exc}. If the file moved, pass --model NEW_PATH (or set "
                    f"{config.ENV_MODEL}) once: the registry checks its sha256 and remembers "
                    f"the new place"
                ) from None
            if binding is not None:
                if emb.sha256 != binding.model_sha256:
                    self.registry.bind(emb.name, emb.ref, emb.sha256, emb.dim)  # raises
                if emb.ref != binding.model_ref and not _resolvable(binding.model_ref):
                    self.registry.bind(emb.name, emb.ref, emb.sha256, emb.dim, repair_ref=True)
            self._embedder = emb
        return self._embedder

    def wrap_embedder(self, wrap: Callable[[Any], Any]) -> None:
        """Embed through ``wrap(embedder)`` from now on (see ``SpeakerID.wrap_embedder``)."""
        self._embedder = wrap(self.embedder)

    def bind(self) -> None:
        """Bind a new registry to the embedder's model (checked when already bound)."""
        e = self.embedder
        self.writable_registry().bind(e.name, e.ref, e.sha256, e.dim)

    def bind_identity(self, dim: int, made_by=None, what: str = "the vectors") -> None:
        """Bind (or check) the registry without loading a model: vectors computed elsewhere
        must come from the registry's model, as for ``enroll``. ``made_by`` (a
        ``vector_files.Provenance``) is the model that made them, which must also be the
        requested one; without it the requested model is assumed, else the bound one (the
        caller vouches). Refusals happen before anything is written."""
        from ..embedding import weights

        requested = self.requested
        binding = self.binding()
        if made_by is None:
            if binding is not None and requested is None:
                return  # the caller vouches that the vectors are the bound model's
            ident = weights.identity(requested or config.DEFAULT_MODEL, self.download_progress)
        else:
            ident = weights.ModelIdentity(made_by.name, made_by.ref, made_by.sha256)
            if requested is not None:
                asked = weights.identity(requested, self.download_progress)
                if asked.sha256 != made_by.sha256:
                    raise ModelMismatchError(
                        f"{what} were made by {made_by.describe()}, not by the requested model "
                        f"{asked.name!r} (sha256 {asked.sha256[:12]}, from --model or "
                        f"${config.ENV_MODEL}): embeddings of different models are not comparable"
                    )
                ident = asked  # the same model, by a reference that resolves here
            if binding is not None and binding.model_sha256 != made_by.sha256:
                raise ModelMismatchError(
                    f"{what} were made by {made_by.describe()}, but registry {self.location} is "
                    f"bound to model {binding.model_name!r} (sha256 "
                    f"{binding.model_sha256[:12]}): embeddings of different models are not "
                    f"comparable; embed the audio with the registry's model or use another --db"
                )
        self.writable_registry().bind(ident.name, ident.ref, ident.sha256, dim)


def _resolvable(ref: str) -> bool:
    """Whether a stored model reference still points at something (a path that exists, or a
    name, which ``weights.resolve`` finds or reports itself)."""
    return Path(ref).is_file() if os.path.isabs(ref) else True
