"""``Enrollment``: the writes of ``SpeakerID`` that add voices to the registry.

Every write embeds (and so validates) all audio first and only then touches the registry, so
bad input never leaves a half-written registry: files are gated (``gates``: too little speech
is refused, clipping and low SNR warned about) and a recording in which a second voice speaks
for a significant share is refused (``tracking.guard``) unless ``force``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioClip, load_audio
from ..audio.gates import check_min_speech, gated_files, split_enrolled, trimmed
from ..audio.quality import MIN_SPEECH_SECONDS
from ..errors import AudioQualityError, InvalidInputError, SpeakerExistsError
from ..registry import vector_files
from ..registry.binding import ModelBinding
from ..registry.store import NewUtterance, check_name
from ..registry.thresholds import Thresholds
from ..registry.vector_files import Provenance
from ..results import EnrollResult, TrackResult

Progress = Callable[[int], None]

#: Most speech of one voice that ``enroll_voice`` enrolls (seconds).
ENROLL_VOICE_SECONDS = 120.0
#: Decoded audio that ``enroll_dir`` keeps between checking every file and embedding them
#: (seconds, about 4 MB a minute); files beyond it are decoded again (but not gated again).
KEEP_SECONDS = 1200.0


@dataclass(frozen=True)
class _Accepted:
    """A file that passed the gate of ``enroll_dir``: its gated ``clip`` while the memory
    budget allows, else None, and then the file is decoded again and cut to ``spans``."""

    path: Path
    spans: list[tuple[int, int]] | None
    clip: AudioClip | None = None
    speech: list[tuple[int, int]] | None = None  # Gated.speech

    def load(self) -> AudioClip:
        return self.clip if self.clip is not None else trimmed(load_audio(self.path), self.spans)


class Enrollment:
    """Enrolls speakers into the registry of ``bound``; the multi-speaker guard compares at
    the threshold of ``thresholds``."""

    def __init__(self, bound: ModelBinding, thresholds: Thresholds) -> None:
        self.bound = bound
        self.thresholds = thresholds

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
        """See ``SpeakerID.enroll``."""
        name = check_name(name)
        if not audio_files:
            raise InvalidInputError("enroll needs at least one audio file")
        if not append:
            self._refuse_existing([name])  # before embedding
        gated = list(gated_files(audio_files, vad, force, min_speech))
        embs = self._embed(
            [g.clip for g in gated], force, on_progress, speech=[g.speech for g in gated]
        )
        warnings = [w for g in gated for w in g.warnings]
        report = [g.row for g in gated]
        self.bound.bind()
        utts = [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs]
        res = self.bound.registry.enroll(name, utts, append=append, metadata=metadata)
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
        """See ``SpeakerID.enroll_dir``."""
        from ..audio.decode import speaker_folders

        root = Path(directory)
        folders = speaker_folders(root)
        if not folders:
            raise InvalidInputError(f"{root}: no speaker sub-folders with audio files")
        plan = {check_name(n): files for n, files in folders.items()}
        if len(plan) != len(folders):
            raise InvalidInputError("the same speaker name appears twice in one enrollment")
        min_speech = check_min_speech(min_speech)
        registry_exists = self.bound.exists()  # a first enroll-dir creates it only at the end
        if not append:  # fail before the costly embedding, as enroll does
            self._refuse_existing(plan)
        errors: list[str] = []
        lookup = self.bound.registry.enrolled_hashes if registry_exists else (lambda hashes: {})
        todo, skipped = split_enrolled(lookup, plan, errors if skip_errors else None)
        reports, accepted = {}, {}
        budget = int(KEEP_SECONDS * SAMPLE_RATE)  # decoded samples kept between the phases
        for name, files in todo.items():  # every file is checked before any is embedded
            warnings, quality, kept = [], [], []
            for g in gated_files(files, vad, force, min_speech, errors if skip_errors else None):
                warnings.extend(g.warnings)
                quality.append(g.row)
                keep = len(g.clip.samples) <= budget
                budget -= len(g.clip.samples) if keep else 0
                kept.append(
                    _Accepted(Path(g.clip.source), g.spans, g.clip if keep else None, g.speech)
                )
            reports[name], accepted[name] = (warnings, quality), kept
        items = []
        for name in list(accepted):
            files = accepted.pop(name)  # its clips are freed once embedded
            left_out = len(todo[name]) + len(skipped[name]) - len(files)
            if on_progress and left_out:
                on_progress(left_out)
            if files:
                clips = [f.load() for f in files]  # one speaker's audio at a time
                embs = self._embed(
                    clips,
                    force,
                    on_progress,
                    errors if skip_errors else None,
                    [f.speech for f in files],
                )
                utts = [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs]
                if utts:
                    items.append((name, utts))
        done = {}
        if items:
            self.bound.bind()
            done = {r.speaker: r for r in self.bound.registry.enroll_many(items, append=append)}
        results = []
        for name in plan:
            warnings, quality = reports[name]
            if name in done:
                r = done[name]
                skips = skipped[name] + r.skipped
                results.append(replace(r, skipped=skips, warnings=warnings, quality=quality))
            elif skipped[name]:  # nothing new for this speaker
                total = self.bound.registry.speaker(name).utterances
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
        model: str | os.PathLike | None = None,
        made_by: Provenance | None = None,
        what: str = "the vectors",
    ) -> list[EnrollResult]:
        """See ``SpeakerID.import_embeddings``; ``made_by``: the model already decided (files)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise InvalidInputError(
                f"{len(names)} names for an embedding matrix of shape {tuple(vectors.shape)}"
            )
        if made_by is None and model is not None:
            made_by = self._identity(model, int(vectors.shape[1]))
        self.bound.bind_identity(int(vectors.shape[1]), made_by, what)
        groups: dict[str, list[NewUtterance]] = {}
        for i, name in enumerate(names):
            src = sources[i] if sources else None
            groups.setdefault(check_name(name), []).append(NewUtterance(vectors[i], src))
        return self.bound.registry.enroll_many(list(groups.items()), append=append)

    def import_files(
        self,
        files: Sequence[str | os.PathLike],
        names_file: str | os.PathLike | None = None,
        speaker: str | None = None,
        model: str | os.PathLike | None = None,
        append: bool = False,
    ) -> list[EnrollResult]:
        """See ``SpeakerID.import_embedding_files``."""
        batch = vector_files.read(files, names_file, speaker)
        named = model or self.bound.model  # said for these files (not $SPEAKERID_MODEL)
        dim = int(batch.vectors.shape[-1]) if batch.vectors.ndim else 0
        declared = self._identity(named, dim) if named else None
        made_by = vector_files.made_by(batch, declared)
        what = f"the vectors of {vector_files.describe_files(batch.files)}"
        return self.import_embeddings(
            batch.names, batch.vectors, batch.sources, append, made_by=made_by, what=what
        )

    def _identity(self, model: str | os.PathLike, dim: int) -> Provenance:
        """The provenance of vectors that ``model`` made, learned without loading it."""
        from ..embedding import weights

        ident = weights.identity(model, self.bound.download_progress)
        return Provenance(ident.name, ident.ref, ident.sha256, dim)

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
        """See ``SpeakerID.enroll_voice``."""
        from ..embedding.windows import read_spans

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

    def _refuse_existing(self, names) -> None:
        """A speaker that already exists is refused without ``append`` (creates nothing)."""
        if not self.bound.exists():
            return
        for name in names:
            if self.bound.registry.exists(name):
                raise SpeakerExistsError(
                    f"speaker {name!r} already exists; use --append to add utterances to it"
                )

    def _embed(
        self, clips, force: bool, on_progress, errors: list | None = None, speech=None
    ) -> list:
        """Embeddings of enrollment clips; a recording in which a second voice speaks for a
        significant share is refused (``tracking.guard``) unless ``force``, or with ``errors``
        reported there and left out. ``speech``: the clips' segments where the gate has them."""
        from .guard import embed_checked

        threshold = self.thresholds.resolve()[0]
        embs, checks = embed_checked(self.bound.embedder, clips, threshold, on_progress, speech)
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
