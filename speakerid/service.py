"""``SpeakerID``: the one facade over embedder + registry that the CLI and Python users call.

Every write embeds (and so validates) all audio first and only then touches the registry, so bad
input never leaves a half-written registry. Nothing here imports torch until audio must be embedded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .errors import (
    EmptyRegistryError,
    InvalidInputError,
    ModelMismatchError,
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
from .registry.index import VectorIndex
from .registry.store import NewUtterance, Registry, check_name
from .results import (
    Candidate,
    CompareResult,
    EnrollResult,
    IdentifyResult,
    IndexReport,
    RegistryInfo,
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
        kind = index_kind or config.default_index_kind()
        self.registry = Registry(Path(db) if db else config.default_db_path(), kind)
        self._model = str(model) if model else None
        self._threshold = None if threshold is None else config.parse_threshold(threshold)
        self._device = device
        self._download_progress = download_progress
        self._embedder = None

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> SpeakerID:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- model -----------------------------------------------------------------------------
    @property
    def embedder(self):
        """The embedder, loaded on first use and checked against the registry's binding."""
        if self._embedder is None:
            from .embedder import Embedder

            binding = self.registry.binding()
            ref = self._model or (binding.model_ref if binding else config.default_model())
            emb = Embedder(ref, device=self._device, progress=self._download_progress)
            if binding and emb.sha256 != binding.model_sha256:
                raise ModelMismatchError(
                    f"registry {self.registry.path} is bound to model {binding.model_name!r} "
                    f"(sha256 {binding.model_sha256[:12]}); {emb.name!r} "
                    f"(sha256 {emb.sha256[:12]}) gives embeddings that are not comparable: "
                    f"use the registry's model or another --db"
                )
            self._embedder = emb
        return self._embedder

    def _bind(self) -> None:
        if self.registry.binding() is None:
            e = self.embedder
            self.registry.bind(
                e.name,
                str(e.path) if self._model and Path(self._model).is_file() else e.name,
                e.sha256,
                e.dim,
            )
            self._adopt_card_threshold(e.name)

    def _adopt_card_threshold(self, model_name: str) -> None:
        """A bundled model's scores live on its own scale: start from its card's threshold."""
        from . import weights

        card = weights.model_card(model_name)
        if "recommended_threshold" in card:
            self.registry.set_threshold(
                float(card["recommended_threshold"]), f"model card ({model_name})", False
            )

    def threshold(self, override: float | None = None, asnorm: bool = False) -> tuple[float, str]:
        """Effective threshold and its origin: call > constructor > env > registry > default.

        AS-Norm scores are z-scores: they use only the call's value or the registry's
        calibrated ``threshold_asnorm`` (``speakerid calibrate --asnorm --apply``).
        """
        if override is not None:
            return config.parse_threshold(override, asnorm), "argument"
        if asnorm:
            b = self.registry.binding()
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
        binding = self.registry.binding()
        if binding is not None and binding.threshold is not None:
            return binding.threshold, binding.threshold_source or "registry"
        return config.DEFAULT_THRESHOLD, "default (model card)"

    def set_threshold(
        self, value: float, source: str = "set by user", asnorm: bool = False
    ) -> None:
        self._bind()
        self.registry.set_threshold(config.parse_threshold(value, asnorm), source, asnorm)

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
        if not append and self.registry.exists(name):  # fail before the costly embedding
            raise SpeakerExistsError(
                f"speaker {name!r} already exists; use --append to add utterances to it"
            )
        clips, warnings, report = gate_enrollment_files(audio_files, vad, force, min_speech)
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
        if not append:  # fail before the costly embedding, as enroll does
            for name in plan:
                if self.registry.exists(name):
                    raise SpeakerExistsError(
                        f"speaker {name!r} already exists; use --append to add utterances to it"
                    )
        errors: list[str] = []
        todo, skipped = split_enrolled(self.registry, plan, errors if skip_errors else None)
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
                embs = self.embedder.embed_many(clips, on_progress=on_progress)
                utts = [NewUtterance(e.vector, e.source, e.duration, e.sha256) for e in embs]
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
        binding = self.registry.binding()
        if binding is None:
            from . import weights

            resolved = weights.resolve(
                self._model or config.default_model(), progress=self._download_progress
            )
            ref = str(resolved.path) if Path(str(self._model or "")).is_file() else resolved.name
            self.registry.bind(resolved.name, ref, resolved.sha256, int(vectors.shape[1]))
            self._adopt_card_threshold(resolved.name)
        groups: dict[str, list[NewUtterance]] = {}
        for i, name in enumerate(names):
            src = sources[i] if sources else None
            groups.setdefault(check_name(name), []).append(NewUtterance(vectors[i], src))
        return self.registry.enroll_many(list(groups.items()), append=append)

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
        min_speech: float = MIN_SPEECH_SECONDS,
    ) -> list[IdentifyResult]:
        """Identify each file; a probe with less than ``min_speech`` s of speech gets no match
        (speaker None, no candidates, ``reason`` "no speech: ...") and is never embedded."""
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        t, _ = self.threshold(threshold, asnorm)  # validate before the costly part
        self._require_speakers()
        clips, reasons = load_probes(files, min_speech)
        kept = [c for c, r in zip(clips, reasons) if r is None]
        found = []
        if kept:
            embs = self.embedder.embed_many(kept, on_progress=on_progress)
            found = self.identify_embeddings(
                np.stack([e.vector for e in embs]),
                top_k,
                threshold,
                [e.source for e in embs],
                asnorm,
            )
        if on_progress and len(kept) < len(clips):
            on_progress(len(clips) - len(kept))
        return with_rejected(found, clips, reasons, t)

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
        """Re-rank raw candidates by AS-Norm against the registry's other speakers."""
        from .scoring import DEFAULT_TOP_N, asnorm, cohort_stats

        cohort, names = self._cohort()
        index = {n: i for i, n in enumerate(names)}
        out = []
        for qi, row in enumerate(cands):
            test_stats = cohort_stats(q[qi], cohort, DEFAULT_TOP_N)
            rescored = []
            for c in row:
                keep = np.arange(len(names)) != index[c.speaker]
                stats_e = cohort_stats(cohort[index[c.speaker]], cohort[keep], DEFAULT_TOP_N)
                norm = asnorm(np.array([c.score]), stats_e, test_stats)[0]
                rescored.append(Candidate(c.speaker, float(norm)))
            out.append(sorted(rescored, key=lambda c: -c.score)[:top_k])
        return out

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
            from .scoring import DEFAULT_TOP_N, cohort_stats
            from .scoring import asnorm as normalize

            cohort, names = self._cohort()
            others = cohort[[n != check_name(name) for n in names]]
            score = float(
                normalize(
                    np.array([score]),
                    cohort_stats(voiceprint, others, DEFAULT_TOP_N),
                    cohort_stats(emb.vector, others, DEFAULT_TOP_N),
                )[0]
            )
        return VerifyResult(check_name(name), emb.source, score, t, score >= t)

    def compare(
        self, a, b, threshold: float | None = None, min_speech: float = MIN_SPEECH_SECONDS
    ) -> CompareResult:
        """Same speaker in two recordings? (No registry entries involved.) Rejected unscored
        (``reason``) when either has less than ``min_speech`` s of speech."""
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
        """Write ``embeddings.npy`` + ``names.txt`` (re-importable) and ``speakers.json``."""
        out = Path(directory)
        rows = self.registry.export_rows()
        if not rows:
            raise EmptyRegistryError("the registry is empty: nothing to export")
        out.mkdir(parents=True, exist_ok=True)
        names, vecs, speakers = [], [], []
        for name, meta, utts in rows:
            speakers.append(
                {
                    "name": name,
                    "metadata": json.loads(meta) if meta else None,
                    "utterances": [
                        {"source": s, "duration": d, "sha256": h} for _, s, d, h in utts
                    ],
                }
            )
            for vec, *_ in utts:
                names.append(name)
                vecs.append(vec)
        np.save(out / "embeddings.npy", np.stack(vecs).astype(np.float32))
        (out / "names.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        b = self.registry.binding()
        manifest = {
            "model": b.model_name,
            "model_sha256": b.model_sha256,
            "dim": b.dim,
            "speakers": speakers,
        }
        (out / "speakers.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        return {"directory": str(out), "speakers": len(rows), "utterances": len(names)}

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

    def rebuild_index(self) -> IndexReport:
        return self.registry.rebuild_index()

    def check_index(self) -> IndexReport:
        return self.registry.check_index()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of unit vectors, clipped to [-1, 1] against float rounding."""
    return min(1.0, max(-1.0, float(a @ b)))
