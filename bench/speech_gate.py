"""Non-speech probes (noise, music, near-silence) against real voiceprints: false accepts with no
speech gate, with the old energy-VAD gate and with the Silero gate; and what each gate costs on
real speech (utterances it would refuse). Numbers for docs/accuracy.md.

Voiceprints: the first ``--speakers`` speakers of speechocean762-dev, each the mean of its first
3 utterances (the registry's rule), embedded with the real-voice test asset. Probes: 3 s of
white, pink and brown noise, synthetic chords and a noise floor, at 3 levels x 4 seeds each.
A probe is falsely accepted by ``identify`` when its best score reaches the threshold and by
``verify`` for every claimed speaker whose score reaches it (and the gate lets it through).

    OMP_NUM_THREADS=1 python bench/speech_gate.py --json bench/out/speech_gate.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speakerid.audio.decode import AudioClip, load_audio  # noqa: E402
from speakerid.audio.quality import HOP, MIN_SPEECH_SECONDS, energy_mask  # noqa: E402
from speakerid.audio.vad import speech_seconds  # noqa: E402
from speakerid.embedding.embedder import Embedder  # noqa: E402

SHARED = ROOT.parent / "shared"
DEV = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"
SR = 16000
N = 3 * SR


def _noise(seed: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(N))
    spec /= np.maximum(np.arange(len(spec)), 1) ** (exponent / 2)
    x = np.fft.irfft(spec, N)
    return x / x.std()


def _chords(seed: int) -> np.ndarray:
    """Plucked major/minor triads with 3 harmonics, a new chord every 0.5 s, unit peak."""
    rng = np.random.default_rng(seed)
    out, step = np.zeros(N), SR // 2
    for i in range(0, N, step):
        root = 130.8 * 2 ** (rng.integers(0, 12) / 12)
        notes = (root, root * 2 ** (rng.choice([3, 4]) / 12), root * 2 ** (7 / 12))
        t = np.arange(step) / SR
        env = np.exp(-3 * t) * (1 - np.exp(-200 * t))
        out[i : i + step] = env * sum(
            np.sin(2 * np.pi * f * h * t) / h for f in notes for h in (1, 2, 3)
        )
    return out / np.abs(out).max()


KINDS = {  # kind: (generator, levels as linear RMS or peak)
    "white noise": (lambda s: _noise(s, 0), (0.01, 0.03, 0.1)),
    "pink noise": (lambda s: _noise(s, 1), (0.01, 0.03, 0.1)),
    "brown noise": (lambda s: _noise(s, 2), (0.01, 0.03, 0.1)),
    "music (synthetic chords)": (_chords, (0.1, 0.3, 0.9)),
    "noise floor (-70/-60/-50 dBFS)": (lambda s: _noise(s + 100, 0), (3e-4, 1e-3, 3e-3)),
}


def energy_speech_seconds(x: np.ndarray) -> float:
    """The previous enrollment gate: frames of the energy rule (quality.energy_mask)."""
    return min(float(energy_mask(x).sum()) * HOP / SR, len(x) / SR)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    by_spk: dict[str, list[Path]] = defaultdict(list)
    with open(DEV / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append(DEV / row["path"])
    emb = Embedder(ASSET)

    # what each gate refuses among real utterances (the whole dev set)
    real = {"files": 0, "energy_below_min": 0, "silero_below_min": 0}
    for files in by_spk.values():
        for p in files:
            x = load_audio(p).samples
            real["files"] += 1
            real["energy_below_min"] += energy_speech_seconds(x) < MIN_SPEECH_SECONDS
            real["silero_below_min"] += speech_seconds(x) < MIN_SPEECH_SECONDS

    names = list(by_spk)[: args.speakers]
    prints = []
    for n in names:
        vecs = np.stack([e.vector for e in emb.embed_many([load_audio(p) for p in by_spk[n][:3]])])
        mean = vecs.mean(axis=0)
        prints.append(mean / np.linalg.norm(mean))
    prints = np.stack(prints)

    rows = []
    for kind, (make, levels) in KINDS.items():
        for level in levels:
            for seed in range(args.seeds):
                x = np.clip(make(seed) * level, -1, 1).astype(np.float32)
                clip = AudioClip(x, kind, SR, 1, "")
                scores = prints @ emb.embed_many([clip])[0].vector
                rows.append(
                    {
                        "kind": kind,
                        "level": level,
                        "seed": seed,
                        "scores": scores.tolist(),
                        "energy_speech": energy_speech_seconds(x),
                        "silero_speech": speech_seconds(x),
                    }
                )

    def far(sel, t: float, gate: str) -> tuple[float, float]:
        ident, claims, n_claims = 0, 0, 0
        for r in sel:
            passes = gate == "none" or r[f"{gate}_speech"] >= MIN_SPEECH_SECONDS
            s = np.asarray(r["scores"])
            ident += passes and s.max() >= t
            claims += passes * int((s >= t).sum())
            n_claims += len(s)
        return ident / len(sel), claims / n_claims

    table = []
    for kind in [*KINDS, "all"]:
        sel = [r for r in rows if kind in ("all", r["kind"])]
        line = {"kind": kind, "probes": len(sel)}
        line["max_score"] = max(max(r["scores"]) for r in sel)
        line["energy_passes"] = sum(r["energy_speech"] >= MIN_SPEECH_SECONDS for r in sel)
        line["silero_passes"] = sum(r["silero_speech"] >= MIN_SPEECH_SECONDS for r in sel)
        for t in (0.2222, 0.365):
            for gate in ("none", "energy", "silero"):
                line[f"identify_far_{gate}@{t}"], line[f"verify_far_{gate}@{t}"] = far(sel, t, gate)
        table.append(line)

    out = {
        "speakers": len(names),
        "seconds": round(time.perf_counter() - t0, 1),
        "real_utterances": real,
        "table": table,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    print(
        f"{len(names)} enrolled speakers; real dev utterances below {MIN_SPEECH_SECONDS} s of "
        f"speech: energy {real['energy_below_min']}/{real['files']}, Silero "
        f"{real['silero_below_min']}/{real['files']}"
    )
    print(
        "| probes | n | max score | identify FA at 0.222: none / energy / Silero "
        "| verify FA at 0.222: none / energy / Silero | identify FA at 0.365: none / Silero |"
    )
    for ln in table:
        a = "@0.2222"
        print(
            f"| {ln['kind']} | {ln['probes']} | {ln['max_score']:.3f} | "
            + " / ".join(pct(ln[f"identify_far_{g}{a}"]) for g in ("none", "energy", "silero"))
            + " | "
            + " / ".join(pct(ln[f"verify_far_{g}{a}"]) for g in ("none", "energy", "silero"))
            + f" | {pct(ln['identify_far_none@0.365'])} / {pct(ln['identify_far_silero@0.365'])} |"
        )
    print(f"({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
