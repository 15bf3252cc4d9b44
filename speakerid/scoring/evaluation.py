"""Measure accuracy on the user's own data: trials → EER/minDCF/thresholds, enrollment →
identification accuracy, optionally with AS-Norm, VAD trimming, cropping and both scoring modes.

Inputs: (a) a trial list in the 3D-Speaker/VoxCeleb format ``enroll_path test_path label``
(label ``1|0|target|nontarget``, paths relative to ``root``) or (b) a folder with one sub-folder
per speaker, of which every pair of files is a trial (``trials.folder_trials``). Every file is
embedded once per run (``EmbeddingCache``). Operating points that the trial counts cannot carry
come back as ``warnings`` (rule of 30, see ``trials.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio.decode import speaker_folders
from .metrics import eer, min_dcf, threshold_at_far
from .scores import DEFAULT_TOP_N, asnorm_scores, pair_scores
from .trials import (
    MAX_NONTARGETS,
    MAX_TARGETS,
    Trial,
    TrialSet,
    folder_trials,
    list_trials,
    read_trials,
    trial_warnings,
)

__all__ = [
    "Calibration",
    "EmbeddingCache",
    "EvalReport",
    "Trial",
    "calibrate",
    "evaluate",
    "read_trials",
    "speaker_folders",
]
FAR_POINTS = (0.01, 0.001)  # the operating points every report gives


class EmbeddingCache:
    """Embeds each file once per run (after optional VAD trimming / cropping)."""

    def __init__(self, embedder, vad: bool = False, max_seconds: float | None = None) -> None:
        self.embedder, self.vad, self.max_seconds = embedder, vad, max_seconds
        self.vectors: dict[Path, np.ndarray] = {}

    def _prepare(self, clip):
        """VAD trimming / cropping of one decoded clip (runs on the decoding thread)."""
        from ..audio.decode import AudioClip
        from ..audio.quality import trim_silence

        samples = clip.samples
        if self.vad:
            samples = trim_silence(samples)
        if self.max_seconds:
            samples = samples[: int(self.max_seconds * 16000)]
        return AudioClip(
            samples, clip.source, clip.original_sample_rate, clip.channels, clip.sha256
        )

    def embed(
        self,
        paths: Sequence[Path],
        on_progress: Callable[[int], None] | None = None,
        chunk: int | None = None,
    ) -> None:
        """Embed what is not cached yet through ``Embedder.embed_many``, the path every
        command takes (decoding and trimming on a background thread, overlapped with the
        network; it used to decode serially and call ``embed_clips`` chunk by chunk)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.vectors]
        prepare = self._prepare if self.vad or self.max_seconds else None
        embs = self.embedder.embed_many(todo, chunk=chunk, on_progress=on_progress, prepare=prepare)
        for p, e in zip(todo, embs):
            self.vectors[p] = e.vector

    def matrix(self, paths: Sequence[Path]) -> np.ndarray:
        return np.stack([self.vectors[p] for p in paths])


@dataclass
class EvalReport:
    model: str
    target_trials: int
    nontarget_trials: int
    eer: float
    eer_threshold: float
    min_dcf_p01: float
    min_dcf_p05: float
    threshold_far_1pct: float
    frr_at_far_1pct: float
    threshold_far_01pct: float
    frr_at_far_01pct: float
    threshold: float
    far_at_threshold: float
    frr_at_threshold: float
    vad: bool = False
    max_seconds: float | None = None
    asnorm: dict | None = None
    identification: dict | None = None
    trials: str = ""
    warnings: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("scores")
        return d


def verification_metrics(target: np.ndarray, nontarget: np.ndarray) -> dict:
    rate, thr = eer(target, nontarget)
    t1, _, frr1 = threshold_at_far(target, nontarget, 0.01)
    t01, _, frr01 = threshold_at_far(target, nontarget, 0.001)
    return {
        "eer": rate,
        "eer_threshold": thr,
        "min_dcf_p01": min_dcf(target, nontarget, 0.01)[0],
        "min_dcf_p05": min_dcf(target, nontarget, 0.05)[0],
        "threshold_far_1pct": t1,
        "frr_at_far_1pct": frr1,
        "threshold_far_01pct": t01,
        "frr_at_far_01pct": frr01,
    }


def identification(
    cache: EmbeddingCache,
    speakers: dict[str, list[Path]],
    enroll_k: int,
    threshold: float,
    seed: int = 0,
    impostor_fraction: float = 0.2,
) -> dict:
    """Closed-set top-1/top-5 (mean voiceprint and max-over-utterances scoring) for enrolled
    speakers probed with their other recordings, and the open-set false-accept rate of
    probes from held-out speakers at ``threshold``."""
    names = sorted(n for n, f in speakers.items() if len(f) > enroll_k)
    rng = random.Random(seed)
    held = set(rng.sample(names, int(len(names) * impostor_fraction))) if len(names) > 4 else set()
    enrolled = [n for n in names if n not in held]
    if len(enrolled) < 2:
        return {}
    prints, utts, owner = [], [], []
    for i, n in enumerate(enrolled):
        vecs = cache.matrix(speakers[n][:enroll_k])
        mean = vecs.mean(axis=0)
        prints.append(mean / np.linalg.norm(mean))
        utts.append(vecs)
        owner.extend([i] * len(vecs))
    prints, all_utts, owner = np.stack(prints), np.concatenate(utts), np.asarray(owner)
    probes = [(i, p) for i, n in enumerate(enrolled) for p in speakers[n][enroll_k:]]
    q = cache.matrix([p for _, p in probes])
    truth = np.array([i for i, _ in probes])
    out: dict = {
        "enrolled_speakers": len(enrolled),
        "enroll_utterances": enroll_k,
        "probes": len(probes),
    }
    max_scores = np.full((len(q), len(enrolled)), -np.inf, dtype=np.float32)
    s_utt = q @ all_utts.T
    for j in range(len(enrolled)):
        max_scores[:, j] = s_utt[:, owner == j].max(axis=1)
    for mode, scores in (("mean", q @ prints.T), ("max", max_scores)):
        order = np.argsort(-scores, axis=1)
        out[f"top1_{mode}"] = float(np.mean(order[:, 0] == truth))
        out[f"top5_{mode}"] = float(np.mean((order[:, :5] == truth[:, None]).any(axis=1)))
        tgt = scores[np.arange(len(q)), truth]
        non = scores[
            np.ones_like(scores, dtype=bool) & (np.arange(len(enrolled)) != truth[:, None])
        ]
        out[f"eer_{mode}"] = eer(tgt, non)[0]
    if held:
        imp = cache.matrix([p for n in sorted(held) for p in speakers[n]])
        best = (imp @ prints.T).max(axis=1)
        out["impostor_speakers"] = len(held)
        out["impostor_probes"] = len(imp)
        out["open_set_far"] = float(np.mean(best >= threshold))
        out["threshold"] = threshold
    return out


def evaluate(
    embedder,
    source: Path,
    *,
    root: Path | None = None,
    seed: int = 0,
    max_targets: int = MAX_TARGETS,
    max_nontargets: int = MAX_NONTARGETS,
    enroll_k: int = 3,
    threshold: float = 0.365,
    cohort: Sequence[Path] | None = None,
    cohort_top_n: int = DEFAULT_TOP_N,
    vad: bool = False,
    max_seconds: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate ``embedder`` on a trial list file or a speaker-per-folder directory."""
    source = Path(source)
    speakers = speaker_folders(source) if source.is_dir() else None
    trials: TrialSet = (
        folder_trials(speakers, seed, max_targets, max_nontargets)
        if speakers is not None
        else list_trials(read_trials(source, root))
    )
    files, cohort = trials.files, list(cohort or [])
    if on_total:
        on_total(len(dict.fromkeys(files + cohort)))
    cache = EmbeddingCache(embedder, vad=vad, max_seconds=max_seconds)
    cache.embed(files + cohort, on_progress)
    x = cache.matrix(files)
    raw = pair_scores(x, x, trials.enroll, trials.test)
    is_target = trials.target
    metrics = verification_metrics(raw[is_target], raw[~is_target])
    far = float(np.mean(raw[~is_target] >= threshold))
    frr = float(np.mean(raw[is_target] < threshold))
    report = EvalReport(
        embedder.name,
        trials.n_target,
        trials.n_nontarget,
        threshold=threshold,
        far_at_threshold=far,
        frr_at_threshold=frr,
        vad=vad,
        max_seconds=max_seconds,
        trials=trials.description,
        warnings=trial_warnings(
            trials.n_target, trials.n_nontarget, FAR_POINTS, eer=metrics["eer"]
        ),
        **metrics,
    )
    report.scores = {"target": raw[is_target], "nontarget": raw[~is_target]}
    if cohort:
        coh = cache.matrix(cohort)
        norm = asnorm_scores(x, x, coh, cohort_top_n, pairs=(trials.enroll, trials.test))
        report.scores.update(asnorm_target=norm[is_target], asnorm_nontarget=norm[~is_target])
        report.asnorm = {
            "cohort": len(coh),
            "top_n": cohort_top_n,
            **verification_metrics(norm[is_target], norm[~is_target]),
        }
        shared = len(set(cohort) & set(files))
        if shared:
            report.warnings.append(
                f"the AS-Norm cohort shares {shared} files with the evaluated data, which "
                f"biases its numbers: use recordings of speakers not under test"
            )
    if speakers and enroll_k > 0:
        report.identification = identification(cache, speakers, enroll_k, threshold, seed)
    return report


@dataclass
class Calibration:
    """A recommended threshold and what it rests on (``speakerid calibrate``)."""

    threshold: float
    far: float
    frr: float
    target_far: float
    asnorm: bool
    eer: float  # raw-cosine EER of the data, as before (the AS-Norm one is in evaluate)
    target_trials: int
    nontarget_trials: int
    trials: str
    warnings: list[str]


def calibrate(report: EvalReport, target_far: float, asnorm: bool = False) -> Calibration:
    """The lowest threshold whose false-accept rate on ``report``'s trials is at most
    ``target_far`` (raw cosine, or AS-Norm scores when ``asnorm``), with warnings when the
    trial counts cannot carry that rate or the FRR found there."""
    key = "asnorm_" if asnorm else ""
    if asnorm and report.asnorm is None:
        raise ValueError("AS-Norm calibration needs a report evaluated with a cohort")
    tgt, non = report.scores[f"{key}target"], report.scores[f"{key}nontarget"]
    thr, far, frr = threshold_at_far(tgt, non, target_far)
    rate = report.asnorm["eer"] if asnorm else report.eer
    warnings = trial_warnings(len(tgt), len(non), (target_far,), eer=rate, frr=frr)
    warnings += [w for w in report.warnings if w.startswith("the AS-Norm cohort")]
    return Calibration(
        round(thr, 6),
        far,
        frr,
        target_far,
        asnorm,
        report.eer,
        len(tgt),
        len(non),
        report.trials,
        warnings,
    )
