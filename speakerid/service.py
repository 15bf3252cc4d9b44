"""``SpeakerID``: the one facade over embedder + registry that the CLI and Python users call.

Every write embeds (and so validates) all audio first and only then touches the registry, so bad
input never leaves a half-written registry. Nothing here imports torch until audio must be embedded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .audio import AudioClip
from .errors import (
    AudioError,
    AudioQualityError,
    EmptyRegistryError,
    InvalidInputError,
    ModelError,
    ModelNotInstalledError,
    SpeakerExistsError,
)
from .gates import (
    REJECTED_SCORE,
    check_min_speech,
    gate_enrollment_files,
    load_probes,
    split_enrolled,
    with_rejected,
)
from .quality import MIN_SPEECH_SECONDS
from .registry.database import DatabaseURL
from .registry.index import VectorIndex
from .registry.store import NewUtterance, Registry, check_name
from .results import (
    Candidate,
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
        backend: str | None = None,
        on_prepare: Callable[[str], Any] | None = None,
        precision: str | None = None,
    ) -> None:
        self._index_kind = index_kind or config.default_index_kind()
        #: Where the registry lives (a SQLite file or a PostgreSQL URL); ``path`` is the file.
        self.location = DatabaseURL.parse(db if db else config.default_db())
        self.path = self.location.path
        self._registry: Registry | None = None
        self._model = str(model) if model else None
        self._threshold = None if threshold is None else config.parse_threshold(threshold)
        self._device = device
        self._download_progress = download_progress
        #: ``auto`` (default: ONNX Runtime on CPU, PyTorch on CUDA), ``torch`` or ``onnx``
        self._backend = config.check_backend(backend) if backend else None
        self._on_prepare = on_prepare  # shown while a model is exported for ONNX Runtime
        self._precision = config.check_precision(precision) if precision else None
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
            self._registry = Registry(self.location, self._index_kind, create=False)
        return self._registry

    def _writable_registry(self) -> Registry:
        """The registry for a write, created (with its folder) when it does not exist yet."""
        if self._registry is None:
            self._registry = Registry(self.location, self._index_kind, create=True)
        return self._registry

    def _binding(self):
        """The registry's binding, or None when it is unbound or does not exist (no files made)."""
        if self._detached or not self._exists():
            return None
        return self.registry.binding()

    def _exists(self) -> bool:
        """Whether the registry exists (opened, or there to open); creates nothing."""
        return self._registry is not None or self.location.exists()

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
                emb = Embedder(
                    ref,
                    device=self._device,
                    progress=self._download_progress,
                    backend=self._backend,
                    on_prepare=self._on_prepare,
                    precision=self._precision,
                )
            except ModelError as exc:
                if binding is None or requested:
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

    def _bind(self) -> None:
        """Bind a new registry to the embedder's model (checked when already bound)."""
        e = self.embedder
        self._writable_registry().bind(e.name, e.ref, e.sha256, e.dim)

    def _model_card_threshold(self, binding=None) -> tuple[float, str] | None:
        """The threshold from the card of the bound (or else requested/default) model."""
        from . import weights

        binding = binding or self._binding()
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
        return self._threshold_with(override, asnorm, self._binding)

    def _threshold_with(
        self, override: float | None, asnorm: bool, get_binding: Callable[[], Any]
    ) -> tuple[float, str]:
        """``threshold`` with the registry row from ``get_binding`` (read only if needed)."""
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
        if self._threshold is not None:
            return self._threshold, "argument"
        env = config.env_threshold()
        if env is not None:
            return env, f"${config.ENV_THRESHOLD}"
        binding = get_binding()
        if binding is not None and binding.threshold is not None:
            return binding.threshold, binding.threshold_source or "registry"
        card = self._model_card_threshold(binding)
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
        name = check_name(name)
        if not audio_files:
            raise InvalidInputError("enroll needs at least one audio file")
        if not append and self._exists() and self.registry.exists(name):  # before embedding
            raise SpeakerExistsError(
                f"speaker {name!r} already exists; use --append to add utterances to it"
            )
        clips, warnings, report = gate_enrollment_files(audio_files, vad, force, min_speech)
        embs = self._embed_enrollment(clips, force, on_progress)
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
        from .audio import speaker_folders

        root = Path(directory)
        folders = speaker_folders(root)
        if not folders:
            raise InvalidInputError(f"{root}: no speaker sub-folders with audio files")
        plan = {check_name(n): files for n, files in folders.items()}
        if len(plan) != len(folders):
            raise InvalidInputError("the same speaker name appears twice in one enrollment")
        min_speech = check_min_speech(min_speech)
        exists = self._exists()  # a first enroll-dir creates the registry only at the end
        if not append and exists:  # fail before the costly embedding, as enroll does
            for name in plan:
                if self.registry.exists(name):
                    raise SpeakerExistsError(
                        f"speaker {name!r} already exists; use --append to add utterances to it"
                    )
        errors: list[str] = []
        lookup = self.registry.enrolled_hashes if exists else (lambda hashes: {})
        todo, skipped = split_enrolled(lookup, plan, errors if skip_errors else None)
        reports, accepted = {}, {}
        for name, files in todo.items():  # every file is checked before any is embedded
            clips, warnings, quality = gate_enrollment_files(
                files, vad, force, min_speech, errors if skip_errors else None
            )
            accepted[name] = [Path(c.source) for c in clips]  # decoded again below: bounded
            reports[name] = (warnings, quality)  # memory, one speaker at a time
        items = []
        for name, files in accepted.items():
            left_out = len(todo[name]) + len(skipped[name]) - len(files)
            if on_progress and left_out:
                on_progress(left_out)
            if files:
                clips = gate_enrollment_files(files, vad, True, min_speech)[0]
                embs = self._embed_enrollment(
                    clips, force, on_progress, errors if skip_errors else None
                )
                utts = [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs]
                if utts:
                    items.append((name, utts))
        done = {}
        if items:
            self._bind()
            done = {r.speaker: r for r in self.registry.enroll_many(items, append=append)}
        results = []
        for name in plan:
            warnings, quality = reports[name]
            if name in done:
                r = done[name]
                skips = skipped[name] + r.skipped
                results.append(replace(r, skipped=skips, warnings=warnings, quality=quality))
            elif skipped[name]:  # nothing new for this speaker
                total = self.registry.speaker(name).utterances
                results.append(
                    EnrollResult(name, False, 0, skipped[name], total, warnings, quality)
                )
        return results, errors

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

    def _embed_enrollment(self, clips, force: bool, on_progress, errors: list | None = None):
        """Embeddings of enrollment clips; a recording in which a second voice speaks for a
        significant share is refused (``tracking.guard``) unless ``force``, or with ``errors``
        reported there and left out."""
        from .tracking.guard import embed_checked

        embs, checks = embed_checked(self.embedder, clips, self.threshold()[0], on_progress)
        out = []
        for emb, check in zip(embs, checks):
            if check.several and not force:
                msg = (
                    f"{check.message(emb.source)}; enroll one speaker per recording "
                    f"(speakerid track splits a conversation) or use --force"
                )
                if errors is None:
                    raise AudioQualityError(msg)
                errors.append(msg)
                continue
            out.append(emb)
        return out

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
        from .audio import source_name
        from .tracking.pipeline import check_counts, track

        check_counts(num_speakers, max_speakers)
        self.registry_free()
        identify, t = None, None
        if self._binding() is not None and not self.registry.is_empty():
            t, _ = self.threshold(threshold)

            def identify(vectors):
                return self.identify_embeddings(vectors, top_k=2, threshold=t)
        elif threshold is not None:
            config.parse_threshold(threshold)
        out: list[TrackResult | FileError] = []
        for f in files:
            try:
                out.append(
                    track(f, self.embedder, identify, t, num_speakers, max_speakers, on_progress)
                )
            except AudioError as exc:
                if fail_fast:
                    raise
                out.append(FileError(source_name(f), str(exc)))
        return out

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
        from .tracking.windows import read_spans

        unknown = [s.speaker for s in result.speakers if not s.enrolled]
        if voice not in unknown:
            known = ", ".join(unknown) or "none"
            raise InvalidInputError(
                f"{voice}: no such unknown voice in {result.file} (unknown voices: {known})"
            )
        spans, total = [], 0
        for s in result.segments:
            if s.speaker == voice and total < ENROLL_VOICE_SECONDS * 16000:
                a, b = round(s.start * 16000), round(s.end * 16000)
                spans.append((a, b))
                total += b - a
        samples = np.concatenate(read_spans(audio, spans)).astype(np.float32)
        digest = hashlib.sha256(samples.tobytes()).hexdigest()
        clip = AudioClip(samples, f"{result.file}#{voice}", 16000, 1, digest)
        return self.enroll(name, [clip], append=append, force=force, min_speech=min_speech)

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
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        t, _ = self.threshold(threshold, asnorm)  # validate before the costly part
        self._require_speakers()
        min_speech = check_min_speech(min_speech)
        files = list(files)
        out: list[IdentifyResult | FileError] = []
        parts = [files[i : i + PROBE_CHUNK] for i in range(0, len(files), PROBE_CHUNK)]

        def load(part: list) -> tuple[list, list]:
            return load_probes(part, min_speech, fail_fast=fail_fast)

        # bounded memory for large folders; the next chunk is decoded and gated (VAD) on a
        # background thread while the network embeds this one
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, parts[0]) if parts else None
            for k in range(len(parts)):
                items, reasons = pending.result()
                if k + 1 < len(parts):
                    pending = pool.submit(load, parts[k + 1])
                kept = [c for c, r in zip(items, reasons) if r is None and not _failed(c)]
                found = []
                if kept:
                    from .tracking.guard import embed_checked

                    raw_t = self.threshold()[0] if asnorm else t  # the guard compares cosines
                    embs, checks = embed_checked(self.embedder, kept, raw_t, on_progress)
                    found = self.identify_embeddings(
                        np.stack([e.vector for e in embs]),
                        top_k,
                        threshold,
                        [e.source for e in embs],
                        asnorm,
                    )
                    found = [  # several voices: no single answer (see tracking.guard)
                        IdentifyResult(
                            r.file, None, REJECTED_SCORE, False, t, [],
                            f"{c.message(r.file)}; use speakerid track to see who speaks when",
                        ) if c.several else r
                        for r, c in zip(found, checks)
                    ]  # fmt: skip
                for _ in range(len(items) - len(kept) if on_progress else 0):
                    on_progress(1)  # failed or rejected files count as done, one by one
                out.extend(with_rejected(found, items, reasons, t))
        return out

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
        if threshold is not None:
            config.parse_threshold(threshold, asnorm)  # bad input fails before any work
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        cands = self.registry.search(vectors, top_k if not asnorm else max(top_k, 20))
        # the registry row the search just read (one query for both)
        t, _ = self._threshold_with(threshold, asnorm, lambda: self.registry.last_binding)
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
        self,
        name: str,
        audio,
        threshold: float | None = None,
        asnorm: bool = False,
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> VerifyResult:
        """Is this really ``name``? Cosine (or AS-Norm score) against the voiceprint.

        A probe with less than ``min_speech`` s of speech is rejected unscored (``reason``)."""
        t, _ = self.threshold(threshold, asnorm)
        voiceprint = self.registry.voiceprint(name)  # unknown speaker fails before embedding
        clips, reasons = load_probes([audio], min_speech)
        if reasons[0]:
            return VerifyResult(
                check_name(name), clips[0].source, REJECTED_SCORE, t, False, reasons[0]
            )
        emb = self.embedder.embed_many(clips)[0]
        score = _cosine(voiceprint, emb.vector)
        if asnorm:
            from .scoring import registry_asnorm

            cohort, names = self._cohort()
            score = float(registry_asnorm(cohort, names, [check_name(name)], emb.vector)[0])
        return VerifyResult(check_name(name), emb.source, score, t, score >= t)

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
        from .audio import source_name

        self.threshold(threshold, asnorm)  # bad threshold or unknown speaker: before any work
        self.registry.voiceprint(name)
        out: list[VerifyResult | FileError] = []
        for f in files:
            try:
                out.append(self.verify(name, f, threshold, asnorm, min_speech))
            except AudioError as exc:
                if fail_fast:
                    raise
                out.append(FileError(source_name(f), str(exc)))
            if on_progress:
                on_progress(1)
        return out

    def compare(
        self, a, b, threshold: float | None = None, min_speech: float = MIN_SPEECH_SECONDS
    ) -> CompareResult:
        """Same speaker in two recordings? Registry-free: nothing is created or written; an
        existing registry only lends its model and threshold when no other model is asked for.
        Rejected unscored (``reason``) when either has less than ``min_speech`` s of speech."""
        self.registry_free()
        t, _ = self.threshold(threshold)
        clips, reasons = load_probes([a, b], min_speech)
        if any(reasons):
            why = "; ".join(r for r in reasons if r)
            return CompareResult(clips[0].source, clips[1].source, REJECTED_SCORE, t, False, why)
        ea, eb = self.embedder.embed_many(clips)
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


PROBE_CHUNK = 64
#: Most speech of one voice that ``enroll_voice`` enrolls (seconds).
ENROLL_VOICE_SECONDS = 120.0


def _failed(item) -> bool:
    return isinstance(item, FileError)


def _resolvable(ref: str) -> bool:
    """Whether a stored model reference still points at something (a path that exists, or a
    name, which ``weights.resolve`` finds or reports itself)."""
    return Path(ref).is_file() if os.path.isabs(ref) else True


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of unit vectors, clipped to [-1, 1] against float rounding."""
    return min(1.0, max(-1.0, float(a @ b)))
