"""From labelled windows to timed segments, temporal smoothing, and RTTM.

Each stretch of speech belongs to the window whose centre is nearest (inside one VAD segment,
the boundary between two consecutive windows is the midpoint of their centres, as 3D-Speaker
does), so overlapping windows never give overlapping segments. Consecutive pieces of the same
voice merge, across pauses shorter than ``BRIDGE`` seconds too.

Smoothing: a speaker rarely changes every 0.75 s, so window labels are decoded jointly with
Viterbi: each window scores its cosine to each voice's centroid, and a change of voice costs
``SWITCH_IN`` inside one speech segment and the smaller ``SWITCH_GAP`` across a pause, where
turns usually change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audio.decode import SAMPLE_RATE

#: Pauses shorter than this between two segments of the same voice are bridged (seconds).
BRIDGE = 0.5
SWITCH_IN = 0.4
SWITCH_GAP = 0.2


def segment_ids(windows: np.ndarray, speech: list[tuple[int, int]]) -> np.ndarray:
    """Index of the speech segment holding each window."""
    ids = np.zeros(len(windows), int)
    starts = np.asarray([a for a, _ in speech], dtype=np.int64)
    if len(windows):
        ids = np.searchsorted(starts, windows[:, 0], side="right") - 1
    return ids


def time_order(windows: np.ndarray) -> np.ndarray:
    return np.argsort(windows[:, 0] + windows[:, 1], kind="stable")


def viterbi(
    scores: np.ndarray, same_segment: np.ndarray, switch_in: float, switch_gap: float
) -> np.ndarray:
    """Best label path through ``scores [n, k]`` (higher is better) with a cost per change:
    ``switch_in`` when window i is in the same speech segment as window i-1, else
    ``switch_gap``."""
    n, k = scores.shape
    if n == 0 or k == 0:
        return np.zeros(n, int)
    dp = scores[0].astype(np.float64).copy()
    back = np.zeros((n, k), int)
    stay_idx = np.arange(k)
    for i in range(1, n):
        cost = switch_in if same_segment[i] else switch_gap
        best = int(dp.argmax())
        switch = dp[best] - cost
        take = switch > dp
        back[i] = np.where(take, best, stay_idx)
        dp = np.where(take, switch, dp) + scores[i]
    path = np.zeros(n, int)
    path[-1] = int(dp.argmax())
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


def smooth_labels(
    vectors: np.ndarray,
    windows: np.ndarray,
    speech: list[tuple[int, int]],
    refs: np.ndarray,
    switch_in: float = SWITCH_IN,
    switch_gap: float = SWITCH_GAP,
) -> np.ndarray:
    """Each window's voice (index into ``refs``, unit rows) decoded jointly in time order."""
    if not len(vectors) or not len(refs):
        return np.zeros(len(vectors), int)
    order = time_order(windows)
    ids = segment_ids(windows, speech)[order]
    same = np.r_[False, ids[1:] == ids[:-1]]
    path = viterbi(vectors[order] @ refs.T, same, switch_in, switch_gap)
    out = np.zeros(len(vectors), int)
    out[order] = path
    return out


def to_segments(
    windows: np.ndarray,
    speech: list[tuple[int, int]],
    labels: np.ndarray,
    bridge: float = BRIDGE,
) -> list[tuple[int, int, int, list[int]]]:
    """``[(start, end, label, window indices), ...]`` in samples, sorted, not overlapping."""
    pieces = []
    if len(windows):
        centres = (windows[:, 0] + windows[:, 1]) / 2
        ids = segment_ids(windows, speech)
        for s, (a, b) in enumerate(speech):
            idx = np.flatnonzero(ids == s)
            if not len(idx):
                continue
            idx = idx[np.argsort(centres[idx], kind="stable")]
            c = centres[idx]
            bounds = [a, *((c[:-1] + c[1:]) / 2).round().astype(int).tolist(), b]
            for j, i in enumerate(idx):
                if bounds[j + 1] > bounds[j]:
                    pieces.append((bounds[j], bounds[j + 1], int(labels[i]), int(i)))
    pieces.sort()
    gap = int(bridge * SAMPLE_RATE)
    out: list[list] = []
    for a, b, label, i in pieces:
        if out and out[-1][2] == label and a - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], b)
            out[-1][3].append(i)
        else:
            out.append([a, b, label, [i]])
    return [(a, b, label, idx) for a, b, label, idx in out]


def write_rttm(path: str | Path, uri: str, segments) -> None:
    """NIST RTTM, one ``SPEAKER`` line per segment (``segments``: objects with ``start``,
    ``end``, ``speaker``), as pyannote, 3D-Speaker and dscore read it. Spaces in ``uri`` or a
    name become underscores (RTTM fields are space-separated)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(rttm_lines(uri, segments))


def rttm_lines(uri: str, segments) -> str:
    uri = "_".join(uri.split()) or "audio"
    lines = []
    for s in segments:
        name = "_".join(str(s.speaker).split())
        lines.append(
            f"SPEAKER {uri} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {name} <NA> <NA>\n"
        )
    return "".join(lines)
