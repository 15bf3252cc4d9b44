"""Speaker tracking on synthetic conversations: DER, naming accuracy and real-time factor.

Conversations come from ``bench/conversations.py`` (speechocean762-dev, seeded; dev and test
conversations have disjoint speakers). For each split a registry is built with the real-voice
test asset (``../shared/models/eres2netv2-m32-so762.pt``, card threshold 0.2222) from the
enrolled speakers' 3 enrollment utterances (a file the speech gate refuses is left out). Every
conversation is tracked twice from the same window embeddings: with the registry (``track``)
and without it (plain diarization, every voice anonymous).

Reported, over all conversations of the split (time-weighted):
- DER (pyannote.metrics, collar 0.25 s), overlap not scored and scored;
- named: share of the speech time of enrolled speakers labelled with their own name;
- misnamed unknown: share of the speech time of unknown voices labelled with an enrolled name;
  both on 10 ms frames where exactly one reference speaker talks, outside the 0.25 s collar
  around reference boundaries (the same frames as DER without overlap);
- real-time factor of the whole ``track`` pipeline (decode, VAD, embeddings, clustering,
  naming) with the full-size official architecture (``m_channels=64``; random weights built
  here, its own registry), ``--threads N`` compute threads (default 1; the machine is shared),
  on the first conversations and on a 10-minute meeting of 6 speakers (replayed utterances). Random
  weights find no real voices, so the naming step embeds the voices the asset found.

    python bench/track.py                      # test split (what docs/tracking.md reports)
    python bench/track.py --split dev          # the split parameters were tuned on
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path


def _threads_from_argv() -> str:
    """``--threads N`` is needed before numpy/torch load: the compute threads of every backend."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


THREADS = _threads_from_argv()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = THREADS
os.environ["SPEAKERID_THREADS"] = THREADS

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import conversations as conv  # noqa: E402

from speakerid.audio.gates import gated_files  # noqa: E402
from speakerid.errors import AudioQualityError  # noqa: E402

SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"
COLLAR = 0.25
STEP = 0.01
#: The long meeting timed for the real-time factor: 6 speakers, 10 minutes (replayed speech).
LONG = {"speakers": 6, "seconds": 600.0, "loops": 3}


def build_registry(db: Path, model: Path, split: conv.Split) -> None:
    from speakerid.service.facade import SpeakerID

    if db.is_file():
        return
    tmp = db.with_suffix(".tmp.db")
    for p in tmp.parent.glob(tmp.name + "*"):
        p.unlink()
    with SpeakerID(db=tmp, model=model) as sid:
        for spk, utts in split.enrolled.items():
            files = []
            for u in utts:
                try:
                    next(gated_files([DATA / u], False, False, 1.0))
                    files.append(DATA / u)
                except AudioQualityError:
                    pass
            sid.enroll(spk, files)
    for p in tmp.parent.glob(tmp.name + "*"):
        p.rename(db.parent / p.name.replace(tmp.name, db.name))


def load_rttm(path: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for line in open(path):
        f = line.split()
        out.setdefault(f[7], []).append((float(f[3]), float(f[3]) + float(f[4])))
    return out


def annotation(spans: dict[str, list[tuple[float, float]]]):
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for spk, v in spans.items():
        for a, b in v:
            ann[Segment(a, b)] = spk
    return ann


def hyp_spans(result) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for s in result.segments:
        out.setdefault(s.speaker, []).append((s.start, s.end))
    return out


def frame_grid(spans, n: int) -> np.ndarray:
    """[speakers, n] boolean activity on 10 ms frames, speakers in dict order."""
    m = np.zeros((len(spans), n), bool)
    for k, v in enumerate(spans.values()):
        for a, b in v:
            m[k, int(round(a / STEP)) : int(round(b / STEP))] = True
    return m


def naming_counts(ref, hyp, enrolled: set[str], duration: float) -> dict[str, float]:
    """Seconds of single-speaker reference speech (outside the collar): enrolled total and
    correctly named, unknown total and given an enrolled name."""
    n = int(duration / STEP) + 2
    r = frame_grid(ref, n)
    single = r.sum(0) == 1
    edge = np.zeros(n, bool)
    c = int(COLLAR / STEP)
    for v in ref.values():
        for a, b in v:
            for t in (a, b):
                i = int(round(t / STEP))
                edge[max(0, i - c) : i + c] = True
    ok = single & ~edge
    names = list(ref)
    who = np.where(ok, r.argmax(0), -1)
    h = frame_grid(hyp, n)
    hnames = list(hyp)
    out = {"enrolled_s": 0.0, "named_s": 0.0, "unknown_s": 0.0, "misnamed_s": 0.0}
    for k, spk in enumerate(names):
        mine = who == k
        if spk in enrolled:
            out["enrolled_s"] += mine.sum() * STEP
            if spk in hnames:
                out["named_s"] += (mine & h[hnames.index(spk)]).sum() * STEP
        else:
            out["unknown_s"] += mine.sum() * STEP
            wrong = np.zeros(n, bool)
            for j, hn in enumerate(hnames):
                if hn in enrolled_all:  # an unknown voice is in no registry
                    wrong |= h[j]
            out["misnamed_s"] += (mine & wrong).sum() * STEP
    return out


enrolled_all: set[str] = set()  # every enrolled name of the split's registry


def analyses(items, model: Path, cache: Path):
    """Window embeddings of each conversation (cached per model file and pipeline version)."""
    import pickle

    from speakerid.embedding import windows as w
    from speakerid.embedding.embedder import Embedder

    emb = Embedder(model)
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    tag = f"{emb.sha256[:12]}-v{conv.VERSION}-w{w.WINDOW_SECONDS}-{w.HOP_SECONDS}-s{w.FRAME_STEP}"
    for it in items:
        path = cache / f"{Path(it['audio']).parent.name}-{it['uri']}-{tag}.pkl"
        if path.is_file():
            out[it["uri"]] = pickle.loads(path.read_bytes())
            continue
        an = w.analyse(it["audio"], w.FrameEmbedder(emb, w.FRAME_STEP))
        path.write_bytes(pickle.dumps(an))
        out[it["uri"]] = an
    return emb, out


def evaluate(items, emb, ans, db: Path, threshold: float | None = None) -> dict:
    from pyannote.metrics.diarization import DiarizationErrorRate

    from speakerid.service.facade import SpeakerID
    from speakerid.tracking.pipeline import decide

    rows = {}
    with SpeakerID(db=db) as sid:
        t, _ = sid.threshold(threshold)
        enrolled_all.update(s.name for s in sid.list())

        def ident(v):
            return sid.identify_embeddings(v, top_k=2, threshold=t)

        for variant, identify in (("track", ident), ("plain", None)):
            der = {
                skip: DiarizationErrorRate(collar=COLLAR, skip_overlap=skip)
                for skip in (True, False)
            }
            counts = {"enrolled_s": 0.0, "named_s": 0.0, "unknown_s": 0.0, "misnamed_s": 0.0}
            per = []
            for it in items:
                an = ans[it["uri"]]
                res = decide(an, emb, it["audio"], identify, t if identify else None)
                ref = load_rttm(it["rttm"])
                hyp = hyp_spans(res)
                r_ann, h_ann = annotation(ref), annotation(hyp)
                d = {skip: m(r_ann, h_ann) for skip, m in der.items()}
                c = naming_counts(ref, hyp, set(it["enrolled"]), an.duration)
                for k in counts:
                    counts[k] += c[k]
                per.append(
                    {
                        "uri": it["uri"],
                        "speakers": len(it["speakers"]),
                        "enrolled": len(it["enrolled"]),
                        "found": len(res.speakers),
                        "der": round(float(d[True]), 4),
                        "der_overlap": round(float(d[False]), 4),
                    }
                )
            rows[variant] = {
                "der": round(abs(der[True]), 4),
                "der_overlap_scored": round(abs(der[False]), 4),
                "named": round(counts["named_s"] / max(counts["enrolled_s"], 1e-9), 4),
                "misnamed_unknown": round(counts["misnamed_s"] / max(counts["unknown_s"], 1e-9), 4),
                "enrolled_seconds": round(counts["enrolled_s"], 1),
                "unknown_seconds": round(counts["unknown_s"], 1),
                "conversations": per,
            }
    return rows


def figures(item: dict, emb, an, db: Path, folder: Path) -> list[Path]:
    """Reference and ``track`` timelines of one conversation (docs/img)."""
    from speakerid.results import TrackResult, TrackSegment, TrackSpeaker
    from speakerid.service.facade import SpeakerID
    from speakerid.tracking.pipeline import decide
    from speakerid.tracking.plot import write_timeline

    ref = load_rttm(item["rttm"])
    segs = [
        TrackSegment(a, b, spk, spk in item["enrolled"], None)
        for a, b, spk in sorted((a, b, spk) for spk, v in ref.items() for a, b in v)
    ]
    order = list(dict.fromkeys(s.speaker for s in segs))
    speakers = [
        TrackSpeaker(
            spk, spk in item["enrolled"], sum(s.end - s.start for s in segs if s.speaker == spk)
        )
        for spk in order
    ]
    reference = TrackResult(f"{item['uri']} (reference)", an.duration, segs, speakers)
    with SpeakerID(db=db) as sid:
        t, _ = sid.threshold()
        res = decide(an, emb, item["audio"], lambda v: sid.identify_embeddings(v, 2, t), t)
    res = TrackResult(f"{item['uri']} (speakerid track)", res.duration, res.segments, res.speakers)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_timeline(reference, folder / "track-reference.png"),
        write_timeline(res, folder / "track-timeline.png"),
    ]


def random_full_model(work: Path) -> Path:
    """A full-size official-architecture ERes2NetV2 (m_channels=64, 17.9 M parameters) with
    random weights (seed 0): speed only, its embeddings mean nothing."""
    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    path = work / "eres2netv2-m64-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        net = ERes2NetV2(ERes2NetV2Config(m_channels=64, base_width=26, scale=2, expansion=2))
        torch.save(net.state_dict(), path)
    return path


def real_time_factor(items, asset_ans, split, work: Path) -> dict:
    """The whole pipeline with the full-size architecture (random weights, its own registry)
    on ``items``. Random weights find no real voices, so naming embeds the speech of the
    voices the asset found in the same file: as much as a trained model would name."""

    from speakerid.embedding import windows
    from speakerid.service.facade import SpeakerID
    from speakerid.tracking import naming, pipeline, voices

    model = random_full_model(work)
    db = work / f"{split.name}-m64-random.db"
    build_registry(db, model, split)
    stages = {"speech_and_embedding": 0.0, "voices": 0.0, "naming": 0.0}
    audio = 0.0
    with SpeakerID(db=db) as sid:
        emb = sid.embedder  # loading the model is not part of the per-file cost
        t, _ = sid.threshold()

        def ident(v):
            return sid.identify_embeddings(v, top_k=2, threshold=t)

        for it in items:
            t0 = time.perf_counter()
            an = windows.analyse(it["audio"], windows.FrameEmbedder(emb, windows.FRAME_STEP))
            t1 = time.perf_counter()
            labels = voices.find_voices(an)
            t2 = time.perf_counter()
            ref_an = asset_ans[it["uri"]]
            ref_labels = voices.find_voices(ref_an)
            t3 = time.perf_counter()
            spans = naming.typical_spans(ref_an, ref_labels)
            clips = naming.voice_clips(it["audio"], it["uri"], spans)
            names = naming.name_voices(emb, clips, ident)
            pipeline.result_from_labels(an, labels, {}, t)
            t4 = time.perf_counter()
            stages["speech_and_embedding"] += t1 - t0
            stages["voices"] += t2 - t1
            stages["naming"] += t4 - t3
            audio += an.duration
            del names
    total = sum(stages.values())
    return {
        "model": "ERes2NetV2 m_channels=64 base_width=26 scale=2 expansion=2, random weights",
        "backend": emb.backend,
        "threads": int(THREADS),
        "audio_seconds": round(audio, 1),
        "rtf": round(total / audio, 4),
        **{f"rtf_{k}": round(v / audio, 4) for k, v in stages.items()},
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--rtf-conversations", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--work", type=Path, default=Path("/tmp/speakerid-bench-track"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figures", type=Path, help="write reference/track timelines of conv. 1")
    ap.add_argument(
        "--meeting-minutes", type=float, default=10.0, help="length of the timed meeting"
    )
    ap.add_argument(
        "--speed-only", action="store_true", help="skip DER and naming shares (timing only)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="compute threads of every backend (default 1)"
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="pyannote")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()
    split = conv.splits(DATA, args.seed)[args.split]
    items = conv.build(DATA, args.work, split, args.conversations, args.seed)
    db = args.work / f"{args.split}-asset.db"
    build_registry(db, ASSET, split)
    emb, ans = analyses(items, ASSET, args.work / "cache")
    rows = None if args.speed_only else evaluate(items, emb, ans, db)
    if args.figures:
        figures(items[1], emb, ans[items[1]["uri"]], db, args.figures)
    speed = {}
    if args.rtf_conversations:
        part = items[: args.rtf_conversations]
        speed["conversations"] = real_time_factor(part, ans, split, args.work)
        minutes = args.meeting_minutes
        meeting = {**LONG, "seconds": 60.0 * minutes, "loops": max(3, -(-3 * int(minutes) // 10))}
        long = conv.build(DATA, args.work, split, 1, args.seed, meeting)
        _, long_ans = analyses(long, ASSET, args.work / "cache")
        speed["meeting"] = real_time_factor(long, long_ans, split, args.work)
        speed["meeting"]["speakers"] = len(long[0]["speakers"])
    report = {
        "split": args.split,
        "conversations": len(items),
        "audio_seconds": round(sum(it["duration"] for it in items), 1),
        "speakers_per_conversation": [len(it["speakers"]) for it in items],
        "overlap_share": round(float(np.mean([it["overlap"] for it in items])), 4),
        "registry": {"enrolled": len(split.enrolled), "model": ASSET.name},
        "with_registry": rows and rows["track"],
        "plain_diarization": rows and rows["plain"],
        "speed": speed,
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"{args.split}: {len(items)} conversations, {report['audio_seconds']:.0f} s, "
        f"overlap {100 * report['overlap_share']:.1f}% of speech"
    )
    for name, r in (("track", rows["track"]), ("plain", rows["plain"])) if rows else ():
        print(
            f"  {name:6s} DER {100 * r['der']:.2f}% "
            f"(overlap scored {100 * r['der_overlap_scored']:.2f}%)"
            f"  named {100 * r['named']:.1f}%  misnamed unknown {100 * r['misnamed_unknown']:.2f}%"
        )
    for name, r in speed.items():
        print(
            f"  RTF {r['rtf']:.3f} on {r['audio_seconds']:.0f} s of {name} "
            f"({r['backend']}, {r['threads']} thread(s), "
            f"full-size random model; speech+embedding {r['rtf_speech_and_embedding']:.3f}, "
            f"voices {r['rtf_voices']:.4f}, naming {r['rtf_naming']:.3f}; "
            f"load {r['load_average_1min']:.1f})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
