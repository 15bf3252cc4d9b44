"""What ``identify`` answers when two enrolled people speak at the same time (overlapped speech).

The multi-speaker guard (``tracking.guard``) catches voices that take turns in recordings with
>= 4 s of speech; two voices talking over each other are in every window, so it cannot see
them. This measures the exposure: every speechocean762-dev speaker is enrolled from their
first 3 utterances (the model card's protocol); probes are 5 further utterances per speaker
(genuine) and seeded sums of two enrolled speakers' utterances at 0, 6 and 12 dB (the first
speaker dominant), cut to the shorter one. Reported per set: accepted (a name is given), the
name is one of the two voices / the dominant one / a third, absent person, and median top-1 and
top-2 scores; then what an ambiguity rule (no name when the runner-up also passes the threshold
and trails by less than a margin) would cost genuine probes and save on mixtures.

    python bench/overlap_probes.py --mixtures 200 --json bench/out/overlap.json
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

SHARED = ROOT.parent / "shared"
DEV = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"
THRESHOLD = 0.2222  # the asset's card threshold (EER point on dev)
LEVELS = (0, 6, 12)


def mixture(a: np.ndarray, b: np.ndarray, sir_db: float) -> np.ndarray:
    """``a`` plus ``b`` scaled to ``sir_db`` below it, cut to the shorter, peak 0.5."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    gain = np.sqrt(np.mean(a**2) / max(np.mean(b**2), 1e-12) / 10 ** (sir_db / 10))
    y = a + gain * b
    return (0.5 * y / max(np.abs(y).max(), 1e-9)).astype(np.float32)


def top2(vectors: np.ndarray, voiceprints: np.ndarray) -> tuple[np.ndarray, ...]:
    s = vectors @ voiceprints.T
    order = np.argsort(-s, axis=1)
    rows = np.arange(len(s))
    return s[rows, order[:, 0]], s[rows, order[:, 1]], order[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixtures", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=str(ASSET))
    ap.add_argument("--threshold", type=float, default=THRESHOLD)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with open(DEV / "manifest.csv") as f:
        by_speaker: dict[str, list[str]] = {}
        for r in csv.DictReader(f):
            by_speaker.setdefault(r["speaker"], []).append(r["path"])
    speakers = sorted(by_speaker)
    embedder = Embedder(args.model)
    t0 = time.perf_counter()

    def embed(xs: list[np.ndarray]) -> np.ndarray:
        clips = [AudioClip(x, "probe", 16000, 1, "") for x in xs]
        return np.stack([e.vector for e in embedder.embed_clips(clips)])

    def load(rel: str) -> np.ndarray:
        return load_audio(DEV / rel).samples

    prints = []
    for s in speakers:
        v = embed([load(p) for p in by_speaker[s][:3]]).mean(axis=0)
        prints.append(v / np.linalg.norm(v))
    voiceprints = np.stack(prints)
    genuine, labels = [], []
    for i, s in enumerate(speakers):
        for p in by_speaker[s][3:8]:
            genuine.append(load(p))
            labels.append(i)
    sets = {"genuine": (embed(genuine), np.array(labels), None)}
    rng = np.random.default_rng(args.seed)
    pairs = [rng.choice(len(speakers), 2, replace=False) for _ in range(args.mixtures)]
    sources = [
        (
            load(rng.choice(by_speaker[speakers[i]][3:])),
            load(rng.choice(by_speaker[speakers[j]][3:])),
        )
        for i, j in pairs
    ]
    for level in LEVELS:
        vectors = embed([mixture(a, b, level) for a, b in sources])
        sets[f"overlap {level} dB"] = (vectors, np.array([p[0] for p in pairs]), np.array(pairs))
    seconds = time.perf_counter() - t0

    t = args.threshold
    report: dict = {"threshold": t, "speakers": len(speakers), "seconds": seconds, "sets": {}}
    print(f"{len(speakers)} enrolled speakers, threshold {t}, {seconds:.0f} s of embedding\n")
    print(
        f"{'probes':16s} {'n':>4s} {'named':>6s} {'right':>6s} {'either':>7s} {'absent':>7s} "
        f"{'top-1':>6s} {'top-2':>6s}"
    )
    for name, (vectors, first, both) in sets.items():
        s1, s2, who = top2(vectors, voiceprints)
        named = s1 >= t
        right = named & (who == first)
        row = {
            "n": len(vectors),
            "named": float(named.mean()),
            "right": float(right.mean()),
            "top1_median": float(np.median(s1)),
            "top2_median": float(np.median(s2)),
        }
        either = absent = float("nan")
        if both is not None:
            inside = (who == both[:, 0]) | (who == both[:, 1])
            either, absent = float((named & inside).mean()), float((named & ~inside).mean())
            row.update(either=either, absent=absent)
        report["sets"][name] = row
        print(
            f"{name:16s} {len(vectors):4d} {row['named']:6.1%} {row['right']:6.1%} {either:7.1%} "
            f"{absent:7.1%} {row['top1_median']:6.3f} {row['top2_median']:6.3f}"
        )
    print("\nambiguity rule: no name when the runner-up passes too and trails by < margin")
    mixed = [k for k in sets if k != "genuine"]
    print(f"{'margin':>7s} {'genuine right':>14s} " + " ".join(f"{k:>16s}" for k in mixed))
    report["ambiguity"] = {}
    for margin in (0.0, 0.03, 0.05, 0.1, 0.15):
        out = {}
        for name, (vectors, first, _both) in sets.items():
            s1, s2, who = top2(vectors, voiceprints)
            named = (s1 >= t) & ~((s2 >= t) & (s1 - s2 < margin))
            out[name] = float(
                (named & (who == first)).mean() if name == "genuine" else named.mean()
            )
        report["ambiguity"][margin] = out
        cells = " ".join(f"{'named ' + format(out[k], '.1%'):>16s}" for k in mixed)
        print(f"{margin:7.2f} {out['genuine']:14.1%} {cells}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
