"""``SpeakerID``: the one facade over embedder + registry that the CLI and Python users call.

Every write embeds (and so validates) all audio first and only then touches the registry, so bad
input never leaves a half-written registry. Nothing here imports torch until audio must be embedded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .errors import (
    AudioError,
    AudioQualityError,
    EmptyRegistryError,
    InvalidInputError,
    ModelError,
    ModelNotInstalledError,
    SpeakerExistsError,
)
from .quality import MIN_SPEECH_SECONDS
from .registry.index import VectorIndex
from .registry.store import NewUtterance, Registry, check_name
from .results import (
    Candidate,
    CompareResult,
    EnrollResult,
    IdentifyResult,
    IndexReport,
    RegistryInfo,
    RestoreResult,
    SpeakerInfo,
    VerifyResult,
)

log = logging.getLogger("speakerid")

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
    ) -> None:
        self._index_kind = index_kind or config.default_index_kind()
        self.path = Path(db) if db else config.default_db_path()
        self._registry: Registry | None = None
        self._model = str(model) if model else None
        self._threshold = None if threshold is None else config.parse_threshold(threshold)
        self._device = device
        self._download_progress = download_progress
        self._embedder = None
        self._detached = False

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> SpeakerID:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- registry ----------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The registry, opened on first use; reading a registry that does not exist is an
        error (``RegistryNotFoundError``), so read-only calls never create files."""
        if self._registry is None:
            self._registry = Registry(self.path, self._index_kind, create=False)
        return self._registry

    def _writable_registry(self) -> Registry:
        """The registry for a write, created (with its folder) when it does not exist yet."""
        if self._registry is None:
            self._registry = Registry(self.path, self._index_kind, create=True)
        return self._registry

    def _binding(self):
        """The registry's binding, or None when it is unbound or does not exist (no files made)."""
        if self._detached or (self._registry is None and not self.path.is_file()):
            return None
        return self.registry.binding()

    def registry_free(self) -> None:
        """For work that stores nothing (compare, evaluate): when a model other than the
        registry's is requested, use it with its own card threshold instead of refusing."""
        from . import weights

        requested = config.requested_model(self._model)
        binding = self._binding()
        if requested and binding is not None and self._embedder is None:
            if weights.identity(requested).sha256 != binding.model_sha256:
                self._detached = True

    # --- model -----------------------------------------------------------------------------
    @property
    def embedder(self):
        """The embedder: the requested model (``model=`` or ``$SPEAKERID_MODEL``) or the
        registry's bound one; a requested model must have the bound model's sha256."""
        if self._embedder is None:
            from .embedder import Embedder

            binding = self._binding()
            requested = config.requested_model(self._model)
            ref = requested or (binding.model_ref if binding else config.DEFAULT_MODEL)
            try:
                emb = Embedder(ref, device=self._device, progress=self._download_progress)
            except ModelError as exc:
                if binding is None or requested:
                    raise
                raise ModelNotInstalledError(
                    f"registry {self.path} is bound to model {binding.model_name!r} "
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

    def _bind(self) -> None:
        """Bind a new registry to the embedder's model (checked when already bound)."""
        e = self.embedder
        self._writable_registry().bind(e.name, e.ref, e.sha256, e.dim)

    def _model_card_threshold(self) -> tuple[float, str] | None:
        """The threshold from the card of the bound (or else requested/default) model."""
        from . import weights

        binding = self._binding()
        if binding is not None:
            ref, sha, name = binding.model_ref, binding.model_sha256, binding.model_name
        else:
            ref = config.requested_model(self._model) or config.DEFAULT_MODEL
            sha, name = None, Path(ref).stem if os.sep in ref else ref
        value = weights.card_threshold(ref, sha)
        return None if value is None else (value, f"model card ({name})")

    def threshold(self, override: float | None = None, asnorm: bool = False) -> tuple[float, str]:
        """Effective threshold and its origin: call > constructor > env > registry's stored
        value > the model's card > the official card's 0.365.

        AS-Norm scores are z-scores: they use only the call's value or the registry's
        calibrated ``threshold_asnorm`` (``speakerid calibrate --asnorm --apply``). Nothing
        here creates a registry.
        """
        if override is not None:
            return config.parse_threshold(override, asnorm), "argument"
        if asnorm:
            b = self._binding()
            if b is None or b.threshold_asnorm is None:
                raise InvalidInputError(
                    "AS-Norm scores need their own threshold: pass --threshold or run "
                    "speakerid calibrate --asnorm --apply"
                )
            return b.threshold_asnorm, b.threshold_asnorm_source or "registry"
        if self._threshold is not None:
            return self._threshold, "argument"
        env = config.env_threshold()
        if env is not None:
            return env, f"${config.ENV_THRESHOLD}"
        binding = self._binding()
        if binding is not None and binding.threshold is not None:
            return binding.threshold, binding.threshold_source or "registry"
        card = self._model_card_threshold()
        if card is not None:
            return card
        return config.DEFAULT_THRESHOLD, "default (official ERes2NetV2 card; calibrate this model)"

    def set_threshold(
        self, value: float | None, source: str = "set by user", asnorm: bool = False
    ) -> None:
        """Store the registry's threshold; ``None`` resets it to the model card's."""
        binding = self._binding()
        if binding is None:
            self._bind()
        elif config.requested_model(self._model):
            self._bind_identity(binding.dim)  # a requested model must be the bound one
        stored = None if value is None else config.parse_threshold(value, asnorm)
        self.registry.set_threshold(stored, None if value is None else source, asnorm)

    # --- embedding helpers -----------------------------------------------------------------
    def _embed(self, files: Sequence, on_progress: Progress | None = None):
        from .audio import load_audio

        clips = [load_audio(f) for f in files]  # validate everything before any work
        return self.embedder.embed_many(clips, on_progress=on_progress)

    # --- enrollment --------------------------------------------------------------------------
    def _prepare(
        self, files: Sequence, vad: bool, force: bool, min_speech: float
    ) -> tuple[list, list[str], list[dict]]:
        """Load, quality-check and optionally VAD-trim enrollment audio (nothing written)."""
        from .audio import AudioClip, load_audio
        from .quality import measure, trim_silence

        clips, warnings, report = [], [], []
        for f in files:
            clip = load_audio(f)
            q = measure(clip.samples)
            report.append({"file": clip.source, **q.to_dict()})
            if q.speech_seconds < min_speech and not force:
                raise AudioQualityError(
                    f"{clip.source}: only {q.speech_seconds:.2f} s of speech (minimum "
                    f"{min_speech:.2f} s); use --force to enroll it anyway"
                )
            warnings.extend(f"{clip.source}: {w}" for w in q.warnings())
            if vad:
                trimmed = trim_silence(clip.samples)
                if len(trimmed) >= 0.5 * 16000:
                    clip = AudioClip(
                        trimmed, clip.source, clip.original_sample_rate, clip.channels, clip.sha256
                    )
            clips.append(clip)
        return clips, warnings, report

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
        name = check_name(name)
        if not audio_files:
            raise InvalidInputError("enroll needs at least one audio file")
        if not append and self.path.is_file() and self.registry.exists(name):  # before embedding
            raise SpeakerExistsError(
                f"speaker {name!r} already exists; use --append to add utterances to it"
            )
        clips, warnings, report = self._prepare(audio_files, vad, force, min_speech)
        embs = self.embedder.embed_many(clips, on_progress=on_progress)
        self._bind()
        utts = [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs]
        res = self.registry.enroll(name, utts, append=append, metadata=metadata)
        return replace(res, warnings=warnings, quality=report)

    def enroll_dir(
        self,
        directory: str | os.PathLike,
        append: bool = False,
        skip_errors: bool = False,
        on_progress: Progress | None = None,
    ) -> tuple[list[EnrollResult], list[str]]:
        """Enroll every sub-folder of ``directory`` as one speaker, in one transaction."""
        from .audio import load_audio, speaker_folders

        root = Path(directory)
        plan = speaker_folders(root)
        if not plan:
            raise InvalidInputError(f"{root}: no speaker sub-folders with audio files")
        errors: list[str] = []
        items = []
        for name, files in plan.items():
            clips = []
            for f in files:
                try:
                    clips.append(load_audio(f))
                except AudioError as exc:
                    if not skip_errors:
                        raise
                    errors.append(str(exc))
            if clips:
                embs = self.embedder.embed_many(clips, on_progress=on_progress)
                items.append(
                    (name, [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs])
                )
        self._bind()
        return self.registry.enroll_many(items, append=append), errors

    def import_embeddings(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        sources: Sequence[str | None] | None = None,
        append: bool = False,
    ) -> list[EnrollResult]:
        """Add precomputed embeddings (rows of ``vectors``; repeated names = one speaker)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise InvalidInputError(
                f"{len(names)} names for an embedding matrix of shape {tuple(vectors.shape)}"
            )
        self._bind_identity(int(vectors.shape[1]))
        groups: dict[str, list[NewUtterance]] = {}
        for i, name in enumerate(names):
            src = sources[i] if sources else None
            groups.setdefault(check_name(name), []).append(NewUtterance(vectors[i], src))
        return self.registry.enroll_many(list(groups.items()), append=append)

    def _bind_identity(self, dim: int) -> None:
        """Bind (or check) the registry against the requested model without loading it:
        vectors computed elsewhere must come from the registry's model, as for ``enroll``."""
        from . import weights

        requested = config.requested_model(self._model)
        binding = self._binding()
        if binding is not None and requested is None:
            return  # the caller vouches that the vectors are the bound model's
        ident = weights.identity(requested or config.DEFAULT_MODEL, self._download_progress)
        self._writable_registry().bind(ident.name, ident.ref, ident.sha256, dim)

    # --- queries -----------------------------------------------------------------------------
    def identify(self, audio, top_k: int = 1, threshold: float | None = None) -> IdentifyResult:
        """Who is speaking? Open-set: below the threshold the answer is unknown (None)."""
        return self.identify_many([audio], top_k=top_k, threshold=threshold)[0]

    def identify_many(
        self,
        files: Sequence,
        top_k: int = 1,
        threshold: float | None = None,
        on_progress: Progress | None = None,
        asnorm: bool = False,
    ) -> list[IdentifyResult]:
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        self.threshold(threshold, asnorm)  # validate before the costly part
        self._require_speakers()
        embs = self._embed(files, on_progress)
        return self.identify_embeddings(
            np.stack([e.vector for e in embs]), top_k, threshold, [e.source for e in embs], asnorm
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
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        t, _ = self.threshold(threshold, asnorm)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        cands = self.registry.search(vectors, top_k if not asnorm else max(top_k, 20))
        if asnorm:
            cands = self._asnorm_candidates(vectors, cands, top_k)
        out = []
        for i, c in enumerate(cands):
            best = c[0].score if c else -1.0
            ok = bool(c) and best >= t
            src = sources[i] if sources else f"<embedding {i}>"
            out.append(IdentifyResult(src, c[0].speaker if ok else None, best, ok, t, c))
        return out

    def _cohort(self) -> tuple[np.ndarray, list[str]]:
        _, vecs, names = self.registry.all_voiceprints()
        if len(names) < 3:
            raise InvalidInputError("AS-Norm needs at least 3 enrolled speakers as cohort")
        return vecs, names

    def _asnorm_candidates(self, q: np.ndarray, cands, top_k: int):
        """Re-rank raw candidates by AS-Norm, the same rule as ``verify`` (scoring.py)."""
        from .scoring import registry_asnorm

        cohort, names = self._cohort()
        flat = [(qi, c.speaker) for qi, row in enumerate(cands) for c in row]
        if not flat:
            return [[] for _ in cands]
        norm = registry_asnorm(cohort, names, [name for _, name in flat], q[[qi for qi, _ in flat]])
        out: list[list[Candidate]] = [[] for _ in cands]
        for (qi, name), score in zip(flat, norm):
            out[qi].append(Candidate(name, float(score)))
        return [sorted(row, key=lambda c: -c.score)[:top_k] for row in out]

    def verify(
        self, name: str, audio, threshold: float | None = None, asnorm: bool = False
    ) -> VerifyResult:
        """Is this really ``name``? Cosine (or AS-Norm score) against the voiceprint."""
        t, _ = self.threshold(threshold, asnorm)
        voiceprint = self.registry.voiceprint(name)  # unknown speaker fails before embedding
        emb = self._embed([audio])[0]
        score = _cosine(voiceprint, emb.vector)
        if asnorm:
            from .scoring import registry_asnorm

            cohort, names = self._cohort()
            score = float(registry_asnorm(cohort, names, [check_name(name)], emb.vector)[0])
        return VerifyResult(check_name(name), emb.source, score, t, score >= t)

    def compare(self, a, b, threshold: float | None = None) -> CompareResult:
        """Same speaker in two recordings? Registry-free: nothing is created or written; an
        existing registry only lends its model and threshold when no other model is asked for."""
        self.registry_free()
        t, _ = self.threshold(threshold)
        ea, eb = self._embed([a, b])
        score = _cosine(ea.vector, eb.vector)
        return CompareResult(ea.source, eb.source, score, t, score >= t)

    def _require_speakers(self) -> None:
        if self.registry.is_empty():
            raise EmptyRegistryError(
                "the registry is empty: enroll speakers first (speakerid enroll NAME FILE...)"
            )

    # --- management --------------------------------------------------------------------------
    def list(self) -> list[SpeakerInfo]:
        return self.registry.speakers()

    def show(self, name: str) -> SpeakerInfo:
        return self.registry.speaker(name)

    def remove(self, name: str) -> int:
        return self.registry.remove(name)

    def rename(self, old: str, new: str) -> None:
        self.registry.rename(old, new)

    def export(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write a lossless backup folder (see :mod:`speakerid.backup`); never loads the model."""
        from .backup import write_backup

        return write_backup(self.registry, directory)

    def restore(self, directory: str | os.PathLike, on_conflict: str = "error") -> RestoreResult:
        """Import a backup folder, all or nothing, without loading or downloading any model.

        ``on_conflict``: ``"error"`` (speakers already present refuse the import), ``"skip"``
        (keep them) or ``"replace"`` (overwrite them with the backup's).
        """
        from .backup import restore_backup

        return restore_backup(self._writable_registry, directory, on_conflict)

    def info(self) -> RegistryInfo:
        b = self.registry.binding()
        speakers, utterances = self.registry.counts()
        t, source = self.threshold()
        header = VectorIndex.read_header(self.registry.index_path) if b else None
        return RegistryInfo(
            str(self.registry.path),
            b.model_name if b else None,
            b.model_sha256 if b else None,
            b.dim if b else None,
            speakers,
            utterances,
            t,
            source,
            header["kind"] if header else None,
            self.registry.generation(),
        )

    # --- long-running fronts (speakerid serve) ----------------------------------------------
    def prepare(self) -> None:
        """Load the model and create or check the registry's binding now, so that a server
        answers its first request warm and refuses a mismatched model at start, not later."""
        self._bind()

    def wrap_embedder(self, wrap: Callable[[Any], Any]) -> None:
        """Embed through ``wrap(embedder)`` from now on: an object with the embedder's interface
        (the server's micro-batching queue). Every rule stays here; only the compute moves."""
        self._embedder = wrap(self.embedder)

    def api_keys(self, create: bool = False):
        """The registry's API keys (:class:`speakerid.keys.KeyStore`); ``create`` makes a
        missing registry (a key may be created before any speaker)."""
        from .keys import KeyStore

        return KeyStore(self._writable_registry() if create else self.registry)

    def rebuild_index(self) -> IndexReport:
        return self.registry.rebuild_index()

    def check_index(self) -> IndexReport:
        return self.registry.check_index()


def _resolvable(ref: str) -> bool:
    """Whether a stored model reference still points at something (a path that exists, or a
    name, which ``weights.resolve`` finds or reports itself)."""
    return Path(ref).is_file() if os.path.isabs(ref) else True


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of unit vectors, clipped to [-1, 1] against float rounding."""
    return min(1.0, max(-1.0, float(a @ b)))
