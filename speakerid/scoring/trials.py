"""Verification trials for ``evaluate``/``calibrate``, and how many of them a rate needs.

A trial list (3D-Speaker/VoxCeleb format ``enroll_path test_path label``) is used as given. A
folder with one sub-folder per speaker yields **every** pair of its files: all same-speaker pairs
are target trials, all different-speaker pairs non-target trials; scores for all of them come from
one matrix product of the embeddings, so there is no reason to throw any away. Only when a class
would exceed its cap (``MAX_TARGETS`` / ``MAX_NONTARGETS``, i.e. folders of several thousand
files) is it replaced by a seeded uniform sample of that many distinct pairs, and the report
says so.

Trial counts limit which error rates can be measured. We follow the "rule of 30" (Doddington et
al. 2000; ISO/IEC 19795-1): to know a rate p within +-30% (90% confidence) at least 30 errors must
be expected, i.e. at least ``30 / p`` trials of the relevant kind. With fewer, a warning says so;
a rate measured as 0 on N trials is only known to be below ``3 / N`` (the "rule of 3", 95%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

LABELS = {"1": True, "target": True, "0": False, "nontarget": False}
MAX_TARGETS = 1_000_000
MAX_NONTARGETS = 5_000_000
RULE_OF = 30


@dataclass(frozen=True)
class Trial:
    enroll: Path
    test: Path
    target: bool


@dataclass
class TrialSet:
    """Trials as indices into ``files``: trial k is ``(files[enroll[k]], files[test[k]])``."""

    files: list[Path]
    enroll: np.ndarray
    test: np.ndarray
    target: np.ndarray
    description: str

    @property
    def n_target(self) -> int:
        return int(self.target.sum())

    @property
    def n_nontarget(self) -> int:
        return int(len(self.target) - self.target.sum())


def read_trials(path: Path, root: Path | None = None) -> list[Trial]:
    root = root or path.parent
    trials = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read trial list ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) != 3 or parts[2].lower() not in LABELS:
            raise InvalidInputError(
                f"{path}:{n}: expected 'enroll_path test_path label' with label "
                f"1|0|target|nontarget, got {line.strip()!r}"
            )
        trials.append(Trial(root / parts[0], root / parts[1], LABELS[parts[2].lower()]))
    if not any(t.target for t in trials) or all(t.target for t in trials):
        raise InvalidInputError(f"{path}: needs both target and non-target trials")
    return trials


def list_trials(trials: Sequence[Trial]) -> TrialSet:
    """A trial list as a ``TrialSet`` (order and duplicates kept)."""
    files = list(dict.fromkeys([t.enroll for t in trials] + [t.test for t in trials]))
    pos = {p: i for i, p in enumerate(files)}
    return TrialSet(
        files,
        np.array([pos[t.enroll] for t in trials], dtype=np.int64),
        np.array([pos[t.test] for t in trials], dtype=np.int64),
        np.array([t.target for t in trials], dtype=bool),
        "trial list",
    )


def _pairs(lo: np.ndarray, count: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair numbers ``k`` as ``(i, j)``: file i's partners are ``lo[i]`` .. ``lo[i]+count[i]-1``
    and pairs are numbered file by file."""
    ends = np.cumsum(count)
    i = np.searchsorted(ends, k, side="right")
    return i, lo[i] + (k - (ends[i] - count[i]))


def folder_trials(
    speakers: dict[str, list[Path]],
    seed: int = 0,
    max_targets: int = MAX_TARGETS,
    max_nontargets: int = MAX_NONTARGETS,
) -> TrialSet:
    """Every same-speaker pair (targets) and every different-speaker pair (non-targets) of the
    files, each pair once; a class above its cap becomes a seeded uniform sample of distinct
    pairs (reproducible for a given seed)."""
    names = sorted(speakers)
    files = [p for n in names for p in speakers[n]]
    sizes = np.array([len(speakers[n]) for n in names], dtype=np.int64)
    if len(names) < 2 or not (sizes > 1).any():
        raise InvalidInputError("need at least 2 speakers, one with 2 or more recordings")
    end = np.repeat(np.cumsum(sizes), sizes)  # one past the last file of each file's speaker
    idx = np.arange(len(files), dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts, notes = [], []
    for label, lo, count, cap in (
        ("same-speaker", idx + 1, end - idx - 1, max_targets),
        ("different-speaker", end, len(files) - end, max_nontargets),
    ):
        total = int(count.sum())
        if total > cap:
            k = np.sort(rng.choice(total, size=cap, replace=False))
            notes.append(f"a seeded sample (seed {seed}) of {cap:,} of {total:,} {label} pairs")
        else:
            k = np.arange(total, dtype=np.int64)
            notes.append(f"all {total:,} {label} pairs")
        parts.append(_pairs(lo, count, k))
    (ti, tj), (ni, nj) = parts
    return TrialSet(
        files,
        np.concatenate([ti, ni]),
        np.concatenate([tj, nj]),
        np.concatenate([np.ones(len(ti), bool), np.zeros(len(ni), bool)]),
        " and ".join(notes),
    )


def _pct(p: float) -> str:
    return f"{100 * p:.2f}".rstrip("0").rstrip(".") + "%"


def rate_warning(what: str, rate: float, trials: int, kind: str) -> str | None:
    """A warning when ``trials`` trials of ``kind`` are too few to measure ``rate``, else None."""
    if trials <= 0:
        return f"{what}: no {kind} trials"
    if rate <= 0:
        return (
            f"{what} 0% on {trials:,} {kind} trials: only known to be below "
            f"{_pct(3 / trials)} (rule of 3)"
        )
    need = math.ceil(RULE_OF / rate)
    if trials < need:
        return (
            f"{what} {_pct(rate)} needs at least {need:,} {kind} trials "
            f"(rule of {RULE_OF}: {RULE_OF}/rate), only {trials:,}: it is unreliable"
        )
    return None


def trial_warnings(
    n_target: int,
    n_nontarget: int,
    far_points: Sequence[float] = (),
    eer: float | None = None,
    frr: float | None = None,
) -> list[str]:
    """Warnings for every requested FAR point, the EER and an FRR that the counts cannot carry."""
    found = [rate_warning("FAR", p, n_nontarget, "non-target") for p in far_points]
    if eer is not None:
        found += [
            rate_warning("EER", eer, n_target, "target"),
            rate_warning("EER", eer, n_nontarget, "non-target"),
        ]
    if frr is not None:
        found.append(rate_warning("FRR", frr, n_target, "target"))
    return [w for w in found if w]
