"""Calibration of the multi-speaker guard (``speakerid.service.guard``) for enroll/identify.

Single-speaker recordings (must never trigger): every clip in data/clips, 120 utterances of
speechocean762-dev, and 60 longer single-speaker recordings (3 to 6 utterances of one dev
speaker joined with 0.3 s pauses, like a longer enrollment recording). Two-speaker recordings
(should trigger): 90 mixtures of two dev speakers, the second holding 20 %, 30 % or 50 % of the
speech, as one turn each or interleaved (A B A). Seeded; the real-voice test asset embeds.

For each recording the guard's statistics are kept (second voice's share of the speech, score
of the two sides against each other), so the thresholds can be read off: the report gives, for
the chosen rule (``guard.MIN_SHARE``, ``guard.SAME_FACTOR`` x the card threshold), false
triggers on single speakers and detections of mixtures per share, and how many recordings of
each set were too short to check.

    python bench/track_guard.py --json bench/out/track_guard.json       # seed 8: held out
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speakerid.audio.decode import AudioClip, load_audio  # noqa: E402
from speakerid.embedding.embedder import Embedder  # noqa: E402
from speakerid.service import guard  # noqa: E402

SHARED = ROOT.parent / "shared"
DEV = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"
THRESHOLD = 0.2222  # the asset card's EER threshold
SR = 16000


def _clip(x: np.ndarray, name: str) -> AudioClip:
    return AudioClip(x.astype(np.float32), name, SR, 1, "")


def _join(parts: list[np.ndarray], pause: float = 0.3) -> np.ndarray:
    gap = np.zeros(int(pause * SR), np.float32)
    out = []
    for p in parts:
        out += [p, gap]
    return np.concatenate(out[:-1])


def recordings(seed: int):
    rng = np.random.default_rng(seed)
    by_spk: dict[str, list[Path]] = {}
    for r in csv.DictReader(open(DEV / "manifest.csv")):
        by_spk.setdefault(r["speaker"], []).append(DEV / r["path"])
    spk = sorted(by_spk)
    cache: dict[Path, np.ndarray] = {}

    def audio(p: Path) -> np.ndarray:
        if p not in cache:
            cache[p] = load_audio(p).samples
        return cache[p]

    single = [
        ("clips", _clip(load_audio(p).samples, str(p.relative_to(ROOT))))
        for p in sorted((ROOT / "data" / "clips").rglob("*.opus"))
    ]
    all_utts = [p for s in spk for p in by_spk[s]]
    for i in rng.choice(len(all_utts), 120, replace=False):
        single.append(("utterance", _clip(audio(all_utts[i]), all_utts[i].name)))
    for k in range(60):
        s = spk[rng.integers(len(spk))]
        files = rng.choice(by_spk[s], int(rng.integers(3, 7)), replace=False)
        single.append(("long single", _clip(_join([audio(f) for f in files]), f"{s}-long{k}")))
    mixed = []
    for k in range(90):
        a, b = rng.choice(spk, 2, replace=False)
        share = (0.2, 0.3, 0.5)[k % 3]
        total = rng.uniform(6, 20)
        xa = _join([audio(f) for f in rng.choice(by_spk[a], 6, replace=False)])
        xb = _join([audio(f) for f in rng.choice(by_spk[b], 6, replace=False)])
        na, nb = int(total * (1 - share) * SR), int(total * share * SR)
        if k % 2:  # interleaved: A, B, A
            parts = [xa[: na // 2], xb[:nb], xa[na // 2 : na]]
        else:
            parts = [xa[:na], xb[:nb]]
        mixed.append((f"mix {int(share * 100)}%", _clip(_join(parts), f"{a}+{b}-{k}")))
    return single, mixed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    emb = Embedder(ASSET)
    single, mixed = recordings(args.seed)
    rows = []
    for kind, clip in single + mixed:
        _, (check,) = guard.embed_checked(emb, [clip], THRESHOLD)
        rows.append(
            {
                "set": kind,
                "file": clip.source,
                "speech": round(check.speech, 2),
                "checked": check.checked,
                "several": check.several,
                "share": round(check.share, 3),
                "similarity": None if check.similarity is None else round(check.similarity, 3),
            }
        )
    summary = {}
    for kind in dict.fromkeys(r["set"] for r in rows):
        sel = [r for r in rows if r["set"] == kind]
        checked = [r for r in sel if r["checked"]]
        summary[kind] = {
            "recordings": len(sel),
            "checked": len(checked),
            "flagged": sum(r["several"] for r in sel),
        }
    report = {
        "rule": {
            "min_speech": guard.MIN_SPEECH,
            "min_share": guard.MIN_SHARE,
            "min_part_seconds": guard.MIN_PART_SECONDS,
            "same_factor": guard.SAME_FACTOR,
            "threshold": THRESHOLD,
        },
        "summary": summary,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for kind, s in summary.items():
        print(
            f"{kind:12s} {s['recordings']:4d} recordings, {s['checked']:4d} checked, "
            f"{s['flagged']:3d} flagged as several speakers"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
