"""Regenerate ``data/clips`` (the demo's sample recordings) from ../shared/datasets.

Six enrolled speakers (3 enrollment clips + 1 probe each) and one speaker who is never
enrolled, all from speechocean762-dev (speakers the bundled demo model never saw), re-encoded
as 16 kHz Ogg/Opus to keep the repository small. Enrollment clips are the speaker's first
utterances that pass the enrollment gate (Silero VAD speech >= MIN_SPEECH_SECONDS).
Run: ``python data/make_clips.py``.
"""

from __future__ import annotations

import csv
import sys
from collections import OrderedDict
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from speakerid.audio.quality import MIN_SPEECH_SECONDS  # noqa: E402
from speakerid.audio.vad import speech_seconds  # noqa: E402

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "datasets" / "speechocean762-dev"
OUT = HERE / "clips"
SPEAKERS = ["so0003", "so0044", "so0092", "so0094", "so0111", "so0113", "so0120"]
ENROLL = 3
PROBE = 5  # index of the probe utterance in manifest order


def main() -> int:
    if not SOURCE.is_dir():
        print(f"source data not found: {SOURCE}", file=sys.stderr)
        return 1
    by_spk: OrderedDict[str, list[dict]] = OrderedDict()
    with open(SOURCE / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_spk.setdefault(row["speaker"], []).append(row)
    rows = []
    for n, spk in enumerate(SPEAKERS):
        utts = by_spk[spk]
        if n == len(SPEAKERS) - 1:
            picks = [("probe", utts[0])]
        else:
            usable = [u for u in utts[:PROBE] if _speech(u) >= MIN_SPEECH_SECONDS]
            picks = [("enroll", u) for u in usable[:ENROLL]] + [("probe", utts[PROBE])]
        for role, src in picks:
            audio, rate = sf.read(SOURCE / src["path"], dtype="float32")
            name = f"{spk}/{Path(src['path']).stem}.opus"
            (OUT / spk).mkdir(parents=True, exist_ok=True)
            sf.write(OUT / name, audio, rate, format="OGG", subtype="OPUS")
            rows.append((name, spk, role, src["duration_s"], src["path"]))
    with open(OUT / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "role", "duration_s", "source"])
        w.writerows(rows)
    print(f"wrote {len(rows)} clips to {OUT}")
    return 0


def _speech(row: dict) -> float:
    audio, rate = sf.read(SOURCE / row["path"], dtype="float32")
    assert rate == 16000 and audio.ndim == 1, row["path"]
    return speech_seconds(audio)


if __name__ == "__main__":
    sys.exit(main())
