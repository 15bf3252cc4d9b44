"""Synthetic conversations with ground truth, built reproducibly from speechocean762-dev.

Used by ``bench/track.py``. Speakers are split (seeded) into a dev half and a test half, so
that parameters tuned on dev conversations never saw a test voice. In each half 60 % of the
speakers are *enrolled* from 3 utterances (of at least 3 s) that never appear in a
conversation; the others are never enrolled (*unknown* voices). A conversation has 2 to 6
speakers (enrolled and unknown mixed), turns of 1 to 8 s of audio cut from the speakers' other
utterances (a turn continues where the speaker's previous turn stopped), pauses of 0.1-1.2 s
between turns, and overlaps of 0.5-2.5 s often enough that about 10 % of the speech time has
two voices at once. Each speaker gets its own level (-26 dBFS +- 3 dB); a -70 dBFS noise floor
keeps the mix from digital silence.

Ground truth: each utterance's speech as the Silero VAD finds it on the *isolated* utterance,
placed where the utterance piece lies in the mix, pauses under ``BRIDGE`` s bridged (the usual
annotation convention); RTTM per conversation.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
BRIDGE = 0.5
VERSION = 1


@dataclass
class Split:
    name: str
    enrolled: dict[str, list[str]]  # speaker -> enrollment utterance paths
    unknown: list[str]  # speakers never enrolled
    pool: dict[str, list[str]]  # speaker -> utterances available for conversations


def splits(root: Path, seed: int = 13) -> dict[str, Split]:
    """Speakers of the dataset split into dev/test halves (disjoint), 60 % enrolled each."""
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    by_spk: dict[str, list[str]] = {}
    seconds = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r["path"])
        seconds[r["path"]] = float(r["duration_s"])
    rng = np.random.default_rng(seed)
    speakers = sorted(by_spk)
    rng.shuffle(speakers)
    half = len(speakers) // 2
    out = {}
    for name, group in (("dev", speakers[:half]), ("test", speakers[half:])):
        n_enr = round(0.6 * len(group))
        enrolled, pool = {}, {}
        for i, spk in enumerate(group):
            utts = list(by_spk[spk])
            rng.shuffle(utts)
            if i < n_enr:  # 3 utterances of at least 3 s (as a user would record)
                enr = [u for u in utts if seconds[u] >= 3.0][:3]
                enrolled[spk] = sorted(enr)
                pool[spk] = [u for u in utts if u not in enr]
            else:
                pool[spk] = utts
        out[name] = Split(name, enrolled, group[n_enr:], pool)
    return out


def _speech(x: np.ndarray) -> list[tuple[int, int]]:
    from speakerid.audio.vad import speech_segments

    return speech_segments(x)


def _bridge(spans: list[tuple[float, float]], gap: float = BRIDGE) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class _Voice:
    """One speaker's utterances as a tape of speech (leading/trailing silence trimmed);
    ``loops`` > 1 plays the tape again (long recordings for timing only)."""

    def __init__(self, root: Path, utts: list[str], gain: float, loops: int = 1) -> None:
        self.pieces = []
        for u in utts:
            x, sr = sf.read(root / u, dtype="float32")
            assert sr == SR
            segs = _speech(x)
            if not segs:
                continue
            a, b = segs[0][0], segs[-1][1]
            x = x[a:b]
            rms = float(np.sqrt(np.mean(x**2))) or 1e-3
            speech = [(s - a, e - a) for s, e in segs]
            self.pieces.append((x * (gain / rms), speech))
        self.pieces *= loops
        self.i, self.pos = 0, 0

    def left(self) -> bool:
        return self.i < len(self.pieces)

    def take(self, seconds: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Up to ``seconds`` of audio from the tape, and its speech spans (local samples)."""
        want = int(seconds * SR)
        parts, speech, n = [], [], 0
        while n < want and self.left():
            x, segs = self.pieces[self.i]
            chunk = x[self.pos : self.pos + want - n]
            for s, e in segs:
                s2, e2 = max(s, self.pos), min(e, self.pos + len(chunk))
                if e2 - s2 > 0:
                    speech.append((n + s2 - self.pos, n + e2 - self.pos))
            parts.append(chunk)
            n += len(chunk)
            self.pos += len(chunk)
            if self.pos >= len(x):
                self.i, self.pos = self.i + 1, 0
                if n < want and self.left():  # a short breath between two utterances
                    gap = int(0.15 * SR)
                    parts.append(np.zeros(gap, np.float32))
                    n += gap
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), speech


def conversation(
    root: Path,
    split: Split,
    index: int,
    seed: int,
    p_overlap: float = 0.4,
    speakers: int | None = None,
    seconds: float | None = None,
    loops: int = 1,
):
    """One conversation -> (samples, reference {speaker: [(start, end)]}, info dict).
    ``speakers``, ``seconds``, ``loops``: a longer meeting (utterances replayed ``loops``
    times), for timing."""
    rng = np.random.default_rng([seed, index, 7])
    n_spk = speakers or 2 + index % 5
    n_unknown = int(rng.integers(0 if n_spk == 2 else 1, n_spk // 2 + 1))
    enrolled = sorted(split.enrolled)
    unknown = sorted(split.unknown)
    chosen = list(rng.choice(enrolled, n_spk - n_unknown, replace=False))
    chosen += list(rng.choice(unknown, n_unknown, replace=False))
    voices = {}
    for spk in chosen:
        utts = list(split.pool[spk])
        rng.shuffle(utts)
        gain = 10 ** ((-26 + rng.uniform(-3, 3)) / 20)
        voices[spk] = _Voice(root, utts, gain, loops)
    target = seconds or rng.uniform(120, 180)
    placed = []  # (speaker, start sample, audio, speech spans)
    t, prev, prev_end = 0, None, 0
    while t < target * SR:
        live = [s for s in chosen if voices[s].left() and s != prev]
        if not live:
            break
        spk = str(rng.choice(live))
        x, speech = voices[spk].take(rng.uniform(1.0, 8.0))
        if len(x) < int(0.5 * SR):
            continue
        if prev is not None and rng.random() < p_overlap:
            ov = rng.uniform(0.5, 2.5) * SR
            ov = int(min(ov, 0.5 * len(x), 0.5 * (prev_end - placed[-1][1])))
            start = prev_end - ov
        else:
            start = (
                prev_end + int(rng.uniform(0.1, 1.2) * SR) if prev is not None else int(0.5 * SR)
            )
        placed.append((spk, start, x, speech))
        prev, prev_end = spk, start + len(x)
        t = prev_end
    total = prev_end + int(0.5 * SR)
    mix = (10 ** (-70 / 20) * rng.standard_normal(total)).astype(np.float32)
    ref: dict[str, list[tuple[float, float]]] = {}
    for spk, start, x, speech in placed:
        mix[start : start + len(x)] += x
        ref.setdefault(spk, []).extend(((start + a) / SR, (start + b) / SR) for a, b in speech)
    ref = {spk: _bridge(v) for spk, v in ref.items()}
    info = {
        "speakers": chosen,
        "enrolled": [s for s in chosen if s in split.enrolled],
        "duration": total / SR,
        "turns": len(placed),
    }
    return np.clip(mix, -1, 1), ref, info


def overlap_share(ref: dict[str, list[tuple[float, float]]], step: float = 0.01) -> float:
    """Share of the speech time (any speaker) with two or more voices at once."""
    end = max(b for v in ref.values() for _, b in v)
    n = int(end / step) + 1
    count = np.zeros(n, np.int16)
    for v in ref.values():
        for a, b in v:
            count[int(a / step) : int(b / step)] += 1
    return float((count >= 2).sum() / max(1, (count >= 1).sum()))


def write_rttm(path: Path, uri: str, ref: dict[str, list[tuple[float, float]]]) -> None:
    rows = sorted((a, b, spk) for spk, v in ref.items() for a, b in v)
    with open(path, "w") as f:
        for a, b, spk in rows:
            f.write(f"SPEAKER {uri} 1 {a:.3f} {b - a:.3f} <NA> <NA> {spk} <NA> <NA>\n")


def build(
    root: Path, work: Path, split: Split, count: int, seed: int, long: dict | None = None
) -> list[dict]:
    """Write ``count`` conversations of a split under ``work`` (reused when already there);
    ``long``: one meeting instead, ``conversation`` keywords (speakers, seconds, loops)."""
    key = json.dumps([VERSION, seed, count, split.name, long], sort_keys=True)
    key = hashlib.sha256(key.encode()).hexdigest()[:8]
    folder = work / f"{split.name}-{'long-' if long else ''}{key}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        mix, ref, info = conversation(root, split, i, seed, **(long or {}))
        uri = f"{split.name}{'-long' if long else ''}{i:02d}"
        sf.write(folder / f"{uri}.flac", mix, SR, subtype="PCM_16")
        write_rttm(folder / f"{uri}.rttm", uri, ref)
        info.update(uri=uri, audio=str(folder / f"{uri}.flac"), rttm=str(folder / f"{uri}.rttm"))
        info["overlap"] = overlap_share(ref)
        items.append(info)
    manifest.write_text(json.dumps(items, indent=1))
    return items
