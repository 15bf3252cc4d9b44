"""``SpeakerID``: the one facade over embedder + registry that the CLI and Python users call.

It composes one object per job, each with explicit inputs: ``ModelBinding`` (the registry and
the model bound to it, ``registry/binding.py``), ``Thresholds`` (which threshold applies,
``registry/thresholds.py``), ``Enrollment`` (writes, ``enrollment.py``) and ``Probes``
(identify, verify, compare, ``probes.py``). Every write embeds (and so validates) all audio
first and only then touches the registry, so bad input never leaves a half-written registry.
Nothing here imports torch until audio must be embedded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import config
from ..audio.gates import each_file
from ..audio.quality import MIN_SPEECH_SECONDS
from ..errors import EmptyRegistryError, InvalidInputError
from ..registry.binding import ModelBinding
from ..registry.database import DatabaseURL
from ..registry.index import VectorIndex
from ..registry.store import Registry
from ..registry.thresholds import Thresholds
from ..results import (
    CompareResult,
    CopyResult,
    EnrollResult,
    FileError,
    IdentifyResult,
    IndexReport,
    RegistryInfo,
    RestoreResult,
    SpeakerInfo,
    TrackResult,
    VerifyResult,
)
from .enrollment import Enrollment
from .probes import Probes

Progress = Callable[[int], None]


class SpeakerID:
    """Enroll, identify and verify speakers in one registry bound to one embedding model."""

    def __init__(
        self,
        db: str | os.PathLike | None = None,
        model: str | os.PathLike | None = None,
        threshold: float | None = None,
        device: str | None = None,
        index_kind: str | None = None,
        download_progress: Callable[[int, int | None], None] | None = None,
        backend: str | None = None,
        on_prepare: Callable[[str], Any] | None = None,
        precision: str | None = None,
    ) -> None:
        #: Where the registry lives (a SQLite file or a PostgreSQL URL); ``path`` is the file.
        self.location = DatabaseURL.parse(db if db else config.default_db())
        self.path = self.location.path
        self._bound = ModelBinding(
            self.location,
            index_kind or config.default_index_kind(),
            str(model) if model else None,
            device,
            download_progress,
            config.check_backend(backend) if backend else None,  # auto (default), torch, onnx
            on_prepare,  # shown while a model is exported for ONNX Runtime
            config.check_precision(precision) if precision else None,
        )
        self._thresholds = Thresholds(self._bound, threshold)
        self._enrollment = Enrollment(self._bound, self._thresholds)
        self._probes = Probes(self._bound, self._thresholds)

    def close(self) -> None:
        self._bound.close()

    def __enter__(self) -> SpeakerID:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- registry and model ------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The registry, opened on first use; reading a registry that does not exist is an
        error (``RegistryNotFoundError``), so read-only calls never create files."""
        return self._bound.registry

    def _writable_registry(self) -> Registry:
        """The registry for a write, created (with its folder) when it does not exist yet."""
        return self._bound.writable_registry()

    @property
    def _model(self) -> str | None:
        """The model asked for by the constructor (None: ``$SPEAKERID_MODEL`` or the bound)."""
        return self._bound.model

    def registry_free(self) -> None:
        """For work that stores nothing (compare, evaluate): when a model other than the
        registry's is requested, use it with its own card threshold instead of refusing."""
        self._bound.registry_free()

    @property
    def embedder(self):
        """The embedder: the requested model (``model=`` or ``$SPEAKERID_MODEL``) or the
        registry's bound one; a requested model must have the bound model's sha256."""
        return self._bound.embedder

    def threshold(self, override: float | None = None, asnorm: bool = False) -> tuple[float, str]:
        """Effective threshold and its origin: call > constructor > env > registry's stored
        value > the model's card > the official card's 0.365.

        AS-Norm scores are z-scores: they use only the call's value or the registry's
        calibrated ``threshold_asnorm`` (``speakerid calibrate --asnorm --apply``). Nothing
        here creates a registry.
        """
        return self._thresholds.resolve(override, asnorm)

    def set_threshold(
        self, value: float | None, source: str = "set by user", asnorm: bool = False
    ) -> None:
        """Store the registry's threshold; ``None`` resets it to the model card's."""
        self._thresholds.store(value, source, asnorm)

    # --- enrollment --------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        audio_files: Sequence,
        append: bool = False,
        metadata: dict[str, Any] | None = None,
        on_progress: Progress | None = None,
        force: bool = False,
        vad: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> EnrollResult:
        """Enroll ``name`` from one or more recordings (all-or-nothing).

        Files with less than ``min_speech`` seconds of speech are refused unless ``force``;
        clipping and low SNR are reported as warnings. ``vad`` trims silence before embedding
        (off by default so that scores match the official pipeline).
        """
        return self._enrollment.enroll(
            name, audio_files, append, metadata, on_progress, force, vad, min_speech
        )

    def enroll_dir(
        self,
        directory: str | os.PathLike,
        append: bool = False,
        skip_errors: bool = False,
        on_progress: Progress | None = None,
        force: bool = False,
        vad: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> tuple[list[EnrollResult], list[str]]:
        """Enroll every sub-folder of ``directory`` as one speaker, in one transaction.

        The same gates and report as ``enroll`` (per-file quality, warnings, ``force``,
        ``min_speech``, ``vad``). Files whose bytes are already enrolled for that speaker are
        skipped before they are decoded or embedded (re-runs are cheap) and listed in
        ``skipped``. Unreadable or refused files fail the whole run unless ``skip_errors``,
        which returns their messages as the second value instead.
        """
        return self._enrollment.enroll_dir(
            directory, append, skip_errors, on_progress, force, vad, min_speech
        )

    def import_embeddings(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        sources: Sequence[str | None] | None = None,
        append: bool = False,
        model: str | os.PathLike | None = None,
    ) -> list[EnrollResult]:
        """Add precomputed embeddings (rows of ``vectors``; repeated names = one speaker).

        ``model`` names the model that made them; another model than the registry's (or the
        requested one) is refused. Without it the caller vouches that they are the requested
        model's, else the registry's: arrays carry no provenance (files do, see
        ``import_embedding_files``)."""
        return self._enrollment.import_embeddings(names, vectors, sources, append, model)

    def import_embedding_files(
        self,
        files: Sequence[str | os.PathLike],
        names_file: str | os.PathLike | None = None,
        speaker: str | None = None,
        model: str | os.PathLike | None = None,
        append: bool = False,
    ) -> list[EnrollResult]:
        """Import ``.npy`` embedding files: one vector each (a speaker per file stem, or all
        ``speaker``), or one N x dim matrix with ``names_file`` (one name a line).

        Files that ``embed --output`` or ``export`` wrote carry their model (a ``.npy.json``
        sidecar, ``vector_files``) and are refused when it is not the registry's. Bare files
        (3D-Speaker's ``infer_sv.py`` outputs) are refused unless ``model`` (or the
        constructor's ``model``) names the model that made them: ``$SPEAKERID_MODEL`` says
        which model the user runs, not which one made some files."""
        return self._enrollment.import_files(files, names_file, speaker, model, append)

    # --- tracking ----------------------------------------------------------------------------
    def track(
        self,
        audio,
        threshold: float | None = None,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> TrackResult:
        """Who speaks when in one recording (see ``track_many``)."""
        return self.track_many([audio], threshold, num_speakers, max_speakers, on_progress)[0]

    def track_many(
        self,
        files: Sequence,
        threshold: float | None = None,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
        on_progress: Callable[[float], None] | None = None,
        fail_fast: bool = True,
    ) -> list[TrackResult | FileError]:
        """Who speaks when, per file: voices found by clustering, named from the registry when
        one exists (open set at the threshold), else ``unknown-1``, ``unknown-2``, ... A
        registry bound to another model than the one asked for lends no names. Files stream
        through in bounded memory; ``on_progress(seconds)`` counts each file's duration twice
        (speech detection, then embedding). ``fail_fast`` as in ``identify_many``."""
        from ..tracking.pipeline import check_counts, track

        check_counts(num_speakers, max_speakers)
        self.registry_free()
        identify, t = None, None
        if self._bound.binding() is not None and not self.registry.is_empty():
            t, _ = self.threshold(threshold)

            def identify(vectors):
                return self.identify_embeddings(vectors, top_k=2, threshold=t)
        elif threshold is not None:
            config.parse_threshold(threshold)

        def answer(f) -> TrackResult:
            return track(f, self.embedder, identify, t, num_speakers, max_speakers, on_progress)

        return each_file(answer, files, fail_fast)

    def stream(
        self,
        threshold: float | None = None,
        sample_rate: int = 16000,
        max_seconds: float | None = None,
    ):
        """Who is speaking *now*: a :class:`~speakerid.service.live.LiveStream` that takes PCM
        chunks of any size (``feed``) and returns events as they happen (``ready``, then
        ``partial`` answers for the turn in progress and a final ``segment`` per turn, named as
        ``identify`` would name that audio). Without a registry (or one bound to another model)
        every voice is unknown. ``max_seconds``: the most audio the stream takes."""
        from ..audio.decode import SAMPLE_RATE, AudioClip
        from .live import LiveStream, check_rate

        check_rate(sample_rate)
        self.registry_free()
        t, _ = self.threshold(threshold)
        identify = None
        if self._bound.binding() is not None:  # enrolled later in the stream: named from then

            def identify(vectors):
                try:
                    return self.identify_embeddings(vectors, top_k=2, threshold=t)
                except EmptyRegistryError:  # nobody enrolled (yet, or any more)
                    return None

        embedder = self.embedder

        def embed(samples: np.ndarray) -> np.ndarray:
            clip = AudioClip(samples, "<stream>", SAMPLE_RATE, 1, "")
            return embedder.embed_clips([clip])[0].vector

        return LiveStream(embed, identify, t, embedder.name, sample_rate, max_seconds)

    def enroll_voice(
        self,
        result: TrackResult,
        audio,
        voice: str,
        name: str,
        append: bool = False,
        force: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> EnrollResult:
        """Enroll the speech of one unknown voice of a ``track`` result (e.g. ``unknown-2``)
        as ``name``, through ``enroll`` (same gates and checks). At most
        ``ENROLL_VOICE_SECONDS`` of its segments are used, in time order."""
        return self._enrollment.enroll_voice(result, audio, voice, name, append, force, min_speech)

    # --- queries -----------------------------------------------------------------------------
    def identify(
        self,
        audio,
        top_k: int = 1,
        threshold: float | None = None,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> IdentifyResult:
        """Who is speaking? Open-set: below the threshold the answer is unknown (None)."""
        return self.identify_many([audio], top_k, threshold, min_speech=min_speech)[0]

    def identify_many(
        self,
        files: Sequence,
        top_k: int = 1,
        threshold: float | None = None,
        on_progress: Progress | None = None,
        asnorm: bool = False,
        fail_fast: bool = True,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> list[IdentifyResult | FileError]:
        """Identify many recordings, answers in input order; ``on_progress(1)`` per file.

        A probe with less than ``min_speech`` s of speech gets no match (speaker None, no
        candidates, ``reason`` "no speech: ...") and is never embedded. ``fail_fast``
        (default): the first file whose audio is bad raises its ``AudioError``; otherwise such
        a file gets a ``FileError`` in its place and the others are answered. Errors about the
        call itself (top-k, threshold, empty registry) raise before any work.
        """
        return self._probes.identify_many(
            files, top_k, threshold, on_progress, asnorm, fail_fast, min_speech
        )

    def identify_embeddings(
        self,
        vectors: np.ndarray,
        top_k: int = 1,
        threshold: float | None = None,
        sources: Sequence[str] | None = None,
        asnorm: bool = False,
    ) -> list[IdentifyResult]:
        """Identification of precomputed embeddings (rows of ``vectors``) from this model."""
        return self._probes.identify_embeddings(vectors, top_k, threshold, sources, asnorm)

    def verify(
        self,
        name: str,
        audio,
        threshold: float | None = None,
        asnorm: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> VerifyResult:
        """Is this really ``name``? Cosine (or AS-Norm score) against the voiceprint.

        A probe with less than ``min_speech`` s of speech is rejected unscored (``reason``)."""
        return self._probes.verify(name, audio, threshold, asnorm, min_speech)

    def verify_many(
        self,
        name: str,
        files: Sequence,
        threshold: float | None = None,
        asnorm: bool = False,
        on_progress: Progress | None = None,
        fail_fast: bool = True,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> list[VerifyResult | FileError]:
        """``verify`` for each file, in order; ``fail_fast`` as in ``identify_many``."""
        self.threshold(threshold, asnorm)  # bad threshold or unknown speaker: before any work
        self.registry.voiceprint(name)

        def answer(f) -> VerifyResult:
            return self.verify(name, f, threshold, asnorm, min_speech)

        return each_file(answer, files, fail_fast, on_progress)

    def compare(
        self, a, b, threshold: float | None = None, min_speech: float = MIN_SPEECH_SECONDS
    ) -> CompareResult:
        """Same speaker in two recordings? Registry-free: nothing is created or written; an
        existing registry only lends its model and threshold when no other model is asked for.
        Rejected unscored (``reason``) when either has less than ``min_speech`` s of speech."""
        return self._probes.compare(a, b, threshold, min_speech)

    # --- management --------------------------------------------------------------------------
    def list(self, limit: int | None = None, after: str | None = None) -> list[SpeakerInfo]:
        """Speakers in code-point order of names; ``limit``/``after`` give one page (at most
        ``limit`` speakers after the name ``after``), so a server answers in bounded pieces."""
        return self.registry.speakers(limit, after)

    def show(self, name: str) -> SpeakerInfo:
        return self.registry.speaker(name)

    def remove(self, name: str) -> int:
        return self.registry.remove(name)

    def rename(self, old: str, new: str) -> None:
        self.registry.rename(old, new)

    def export(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write a lossless backup folder (see :mod:`speakerid.registry.backup`); never loads
        the model."""
        from ..registry.backup import write_backup

        return write_backup(self.registry, directory)

    def restore(self, directory: str | os.PathLike, on_conflict: str = "error") -> RestoreResult:
        """Import a backup folder, all or nothing, without loading or downloading any model.

        ``on_conflict``: ``"error"`` (speakers already present refuse the import), ``"skip"``
        (keep them) or ``"replace"`` (overwrite them with the backup's).
        """
        from ..registry.backup import restore_backup

        return restore_backup(self._writable_registry, directory, on_conflict)

    def info(self) -> RegistryInfo:
        b = self.registry.binding()
        speakers, utterances = self.registry.counts()
        t, source = self.threshold()
        header = VectorIndex.read_header(self.registry.index_path) if b else None
        return RegistryInfo(
            self.location.display,
            b.model_name if b else None,
            b.model_sha256 if b else None,
            b.dim if b else None,
            speakers,
            utterances,
            t,
            source,
            header["kind"] if header else None,
            self.registry.generation(),
            self.registry.backend,
        )

    # --- long-running fronts (speakerid serve) ----------------------------------------------
    def prepare(self) -> None:
        """Load the model and create or check the registry's binding now, so that a server
        answers its first request warm and refuses a mismatched model at start, not later."""
        self._bound.bind()

    def wrap_embedder(self, wrap: Callable[[Any], Any]) -> None:
        """Embed through ``wrap(embedder)`` from now on: an object with the embedder's interface
        (the server's micro-batching queue). Every rule stays here; only the compute moves."""
        self._bound.wrap_embedder(wrap)

    def api_keys(self, create: bool = False):
        """The registry's API keys (:class:`speakerid.registry.keys.KeyStore`); ``create`` makes a
        missing registry (a key may be created before any speaker)."""
        from ..registry.keys import KeyStore

        return KeyStore(self._writable_registry() if create else self.registry)

    def rebuild_index(self) -> IndexReport:
        return self.registry.rebuild_index()

    def check_index(self) -> IndexReport:
        return self.registry.check_index()


def copy_registry(
    source: str | os.PathLike, destination: str | os.PathLike, index_kind: str | None = None
) -> CopyResult:
    """Copy a whole registry to another database (SQLite <-> PostgreSQL, or same backend).

    The source is read as of one committed state; the destination must be new or empty and is
    written in one transaction that reads the copy back and compares counts and a checksum of
    all vectors before committing. Never loads a model."""
    src_loc, dst_loc = DatabaseURL.parse(source), DatabaseURL.parse(destination)
    if src_loc.url == dst_loc.url:
        raise InvalidInputError(f"source and destination are the same registry: {src_loc}")
    kind = index_kind or config.default_index_kind()
    with Registry(src_loc, kind, create=False) as src:
        binding, speakers = src.snapshot()
    if binding is None:
        raise EmptyRegistryError(f"registry {src_loc} is not bound to a model: nothing to copy")
    with Registry(dst_loc, kind, create=True) as dst:
        checksum = dst.copy_in(binding, speakers)
        dst_backend = dst.backend
    return CopyResult(
        src_loc.display,
        dst_loc.display,
        src_loc.backend,
        dst_backend,
        len(speakers),
        sum(len(sp.utterances) for sp in speakers),
        checksum,
    )
