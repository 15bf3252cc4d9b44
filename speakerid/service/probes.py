"""``Probes``: the queries of ``SpeakerID`` (identify, verify, compare) over one binding.

Every probe is decoded and gated (``gates.load_probes``: too little speech is rejected unscored)
before any is embedded; identification runs in chunks of ``PROBE_CHUNK`` files, in bounded
memory, and a probe in which several voices speak gets no single answer (``tracking.guard``):
``identify`` names nobody, ``verify`` and ``compare`` reject it unscored, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import config
from ..audio.gates import REJECTED_SCORE, check_min_speech, load_probes, with_rejected
from ..audio.quality import MIN_SPEECH_SECONDS
from ..errors import EmptyRegistryError, InvalidInputError
from ..registry.binding import ModelBinding
from ..registry.cohort import Cohort
from ..registry.store import check_name
from ..registry.thresholds import Thresholds
from ..results import Candidate, CompareResult, FileError, IdentifyResult, VerifyResult

Progress = Callable[[int], None]

#: Probes decoded (and gated) at a time by ``identify_many``.
PROBE_CHUNK = 64


class Probes:
    """Scores probes against the registry of ``bound`` at the thresholds of ``thresholds``."""

    def __init__(self, bound: ModelBinding, thresholds: Thresholds) -> None:
        self.bound = bound
        self.thresholds = thresholds

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
        """See ``SpeakerID.identify_many``."""
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        t, _ = self.thresholds.resolve(threshold, asnorm)  # validate before the costly part
        self.require_speakers()
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
                items, reasons, speech = pending.result()
                if k + 1 < len(parts):
                    pending = pool.submit(load, parts[k + 1])
                keep = [
                    i
                    for i, (c, r) in enumerate(zip(items, reasons))
                    if r is None and not _failed(c)
                ]
                kept = [items[i] for i in keep]
                found = []
                if kept:
                    embs, checks = self._embed_checked(
                        kept, t, asnorm, [speech[i] for i in keep], on_progress
                    )
                    found = self.identify_embeddings(
                        np.stack([e.vector for e in embs]),
                        top_k,
                        threshold,
                        [e.source for e in embs],
                        asnorm,
                    )
                    found = [  # several voices: no single answer (see tracking.guard)
                        IdentifyResult(
                            r.file, None, REJECTED_SCORE, False, t, [], _several(c, r.file)
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
        """See ``SpeakerID.identify_embeddings``."""
        if top_k < 1:
            raise InvalidInputError("top-k must be at least 1")
        if threshold is not None:
            config.parse_threshold(threshold, asnorm)  # bad input fails before any work
        registry = self.bound.registry
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        cands = registry.search(vectors, top_k if not asnorm else max(top_k, 20))
        # the registry row the search just read (one query for both)
        t, _ = self.thresholds.resolve(threshold, asnorm, lambda: registry.last_binding)
        if asnorm:
            cands = self._asnorm_candidates(vectors, cands, top_k)
        out = []
        for i, c in enumerate(cands):
            best = c[0].score if c else -1.0
            ok = bool(c) and best >= t
            src = sources[i] if sources else f"<embedding {i}>"
            out.append(IdentifyResult(src, c[0].speaker if ok else None, best, ok, t, c))
        return out

    def _cohort(self) -> Cohort:
        """The registry's voiceprints, read once per registry generation (not per request)."""
        cohort = self.bound.registry.cohort()
        if len(cohort) < 3:
            raise InvalidInputError("AS-Norm needs at least 3 enrolled speakers as cohort")
        return cohort

    def _asnorm_candidates(self, q: np.ndarray, cands, top_k: int):
        """Re-rank raw candidates by AS-Norm, the same rule as ``verify`` (scoring.py)."""
        from ..scoring.scores import registry_asnorm

        cohort = self._cohort()
        # a candidate the cohort lacks was removed (or renamed) after the search: not a speaker
        known = cohort.rows
        flat = [(qi, c.speaker) for qi, row in enumerate(cands) for c in row if c.speaker in known]
        if not flat:
            return [[] for _ in cands]
        claimed, probes = [name for _, name in flat], q[[qi for qi, _ in flat]]
        norm = registry_asnorm(cohort.vectors, cohort.names, claimed, probes, rows=cohort.rows)
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
        """See ``SpeakerID.verify``."""
        t, _ = self.thresholds.resolve(threshold, asnorm)
        voiceprint = self.bound.registry.voiceprint(name)  # unknown speaker: before embedding
        clips, reasons, speech = load_probes([audio], min_speech)
        if reasons[0]:
            return VerifyResult(
                check_name(name), clips[0].source, REJECTED_SCORE, t, False, reasons[0]
            )
        (emb,), (check,) = self._embed_checked(clips, t, asnorm, speech)
        if check.several:
            return VerifyResult(
                check_name(name), emb.source, REJECTED_SCORE, t, False, _several(check, emb.source)
            )
        score = _cosine(voiceprint, emb.vector)
        if asnorm:
            from ..scoring.scores import registry_asnorm

            c = self._cohort()  # the speaker removed since its voiceprint was read: a 404
            score = float(
                registry_asnorm(c.vectors, c.names, [check_name(name)], emb.vector, rows=c.rows)[0]
            )
        return VerifyResult(check_name(name), emb.source, score, t, score >= t)

    def compare(
        self, a, b, threshold: float | None = None, min_speech: float = MIN_SPEECH_SECONDS
    ) -> CompareResult:
        """See ``SpeakerID.compare``."""
        self.bound.registry_free()
        t, _ = self.thresholds.resolve(threshold)
        clips, reasons, speech = load_probes([a, b], min_speech)
        if any(reasons):
            why = "; ".join(r for r in reasons if r)
            return CompareResult(clips[0].source, clips[1].source, REJECTED_SCORE, t, False, why)
        (ea, eb), checks = self._embed_checked(clips, t, False, speech)
        several = [_several(c, e.source) for c, e in zip(checks, (ea, eb)) if c.several]
        if several:
            return CompareResult(ea.source, eb.source, REJECTED_SCORE, t, False, "; ".join(several))
        score = _cosine(ea.vector, eb.vector)
        return CompareResult(ea.source, eb.source, score, t, score >= t)

    def _embed_checked(
        self,
        clips: list,
        threshold: float,
        asnorm: bool,
        speech: list,
        on_progress: Progress | None = None,
    ) -> tuple[list, list]:
        """Embeddings and multi-speaker checks (``tracking.guard``) of decoded probes, with
        the speech segments their gate found. The guard compares cosines: with AS-Norm scores
        it uses the raw threshold, not ``threshold``."""
        from .guard import embed_checked

        raw = self.thresholds.resolve()[0] if asnorm else threshold
        return embed_checked(self.bound.embedder, clips, raw, on_progress, speech)

    def require_speakers(self) -> None:
        if self.bound.registry.is_empty():
            raise EmptyRegistryError(
                "the registry is empty: enroll speakers first (speakerid enroll NAME FILE...)"
            )


def _several(check, source: str) -> str:
    """The reason given for a probe in which several voices speak: no single answer."""
    return f"{check.message(source)}; use speakerid track to see who speaks when"


def _failed(item) -> bool:
    return isinstance(item, FileError)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of unit vectors, clipped to [-1, 1] against float rounding."""
    return min(1.0, max(-1.0, float(a @ b)))
