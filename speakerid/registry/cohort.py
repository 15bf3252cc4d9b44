"""The AS-Norm cohort of a registry (every voiceprint, by name), read once per generation.

``verify``/``identify --asnorm`` score against every enrolled voiceprint. Reading them all from
the database for each request would make one request's cost grow with the registry, so the
cohort is kept in memory and reused while the registry's change-log head (generation and
identity, one primary-key query) stays the same. Every write appends to the change log in its
own transaction, renames included, whichever process makes it, so a cohort is never older than
the head the request saw. Memory: 4 bytes per dimension per speaker plus the names (about
0.8 GB at a million 192-d voiceprints), held only once AS-Norm has been asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .cache import Head


@dataclass(frozen=True)
class Cohort:
    """Every voiceprint of the registry as of ``generation``, with a name -> row map."""

    generation: int
    uid: str | None
    vectors: np.ndarray  # [n, dim] float32, read-only
    names: list[str]
    rows: Mapping[str, int]

    def __len__(self) -> int:
        return len(self.names)


class CohortFeed(Protocol):
    """What the cohort needs from storage (``Registry`` provides it)."""

    def head(self) -> Head: ...

    def all_voiceprints(self) -> tuple[np.ndarray, np.ndarray, list[str]]: ...


class CohortCache:
    """One process's cohort, reloaded when the registry's head moves."""

    def __init__(self, feed: CohortFeed) -> None:
        self.feed = feed
        self._cohort: Cohort | None = None
        self._mutex = threading.Lock()  # concurrent requests wait for one load, not load all

    def get(self) -> Cohort:
        """The cohort as of the registry's current head (at most one load per generation)."""
        head = self.feed.head()
        stamp = (head.generation, head.uid)
        with self._mutex:
            cached = self._cohort
            if cached is not None and (cached.generation, cached.uid) == stamp:
                return cached
            # head first, then the voiceprints: a write in between makes the cohort newer than
            # its stamp, and the next request (seeing a newer head) reads it again
            _, vectors, names = self.feed.all_voiceprints()
            vectors = np.asarray(vectors)
            vectors.flags.writeable = False
            cohort = Cohort(
                head.generation,
                head.uid,
                vectors,
                names,
                {name: i for i, name in enumerate(names)},
            )
            self._cohort = cohort
            return cohort

    def clear(self) -> None:
        with self._mutex:
            self._cohort = None
