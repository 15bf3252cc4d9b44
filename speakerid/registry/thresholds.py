"""``Thresholds``: which decision threshold a call uses, and where it comes from.

Order: the call's value > the constructor's > ``$SPEAKERID_THRESHOLD`` > the registry's stored
value > the model's card > the official card's 0.365. AS-Norm scores are z-scores: they use
only the call's value or the registry's calibrated ``threshold_asnorm``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import config
from ..errors import InvalidInputError
from .binding import ModelBinding


class Thresholds:
    """Threshold resolution and storage for one ``ModelBinding``; ``configured`` is the
    constructor's value (None: not given)."""

    def __init__(self, bound: ModelBinding, configured: float | None = None) -> None:
        self.bound = bound
        self.configured = None if configured is None else config.parse_threshold(configured)

    def resolve(
        self,
        override: float | None = None,
        asnorm: bool = False,
        get_binding: Callable[[], Any] | None = None,
    ) -> tuple[float, str]:
        """Effective threshold and its origin; the registry row comes from ``get_binding``
        (default: the binding's), read only if needed. Nothing here creates a registry."""
        get_binding = get_binding or self.bound.binding
        if override is not None:
            return config.parse_threshold(override, asnorm), "argument"
        if asnorm:
            b = get_binding()
            if b is None or b.threshold_asnorm is None:
                raise InvalidInputError(
                    "AS-Norm scores need their own threshold: pass --threshold or run "
                    "speakerid calibrate --asnorm --apply"
                )
            return b.threshold_asnorm, b.threshold_asnorm_source or "registry"
        if self.configured is not None:
            return self.configured, "argument"
        env = config.env_threshold()
        if env is not None:
            return env, f"${config.ENV_THRESHOLD}"
        binding = get_binding()
        if binding is not None and binding.threshold is not None:
            return binding.threshold, binding.threshold_source or "registry"
        card = self.model_card(binding)
        if card is not None:
            return card
        return config.DEFAULT_THRESHOLD, "default (official ERes2NetV2 card; calibrate this model)"

    def model_card(self, binding=None) -> tuple[float, str] | None:
        """The threshold from the card of the bound (or else requested/default) model."""
        from ..embedding import weights

        binding = binding or self.bound.binding()
        if binding is not None:
            ref, sha, name = binding.model_ref, binding.model_sha256, binding.model_name
        else:
            ref = self.bound.requested or config.DEFAULT_MODEL
            sha, name = None, Path(ref).stem if os.sep in ref else ref
        value = weights.card_threshold(ref, sha)
        return None if value is None else (value, f"model card ({name})")

    def store(self, value: float | None, source: str = "set by user", asnorm: bool = False) -> None:
        """Store the registry's threshold; ``None`` resets it to the model card's."""
        binding = self.bound.binding()
        if binding is None:
            self.bound.bind()
        elif self.bound.requested:
            self.bound.bind_identity(binding.dim)  # a requested model must be the bound one
        stored = None if value is None else config.parse_threshold(value, asnorm)
        self.bound.registry.set_threshold(stored, None if value is None else source, asnorm)
