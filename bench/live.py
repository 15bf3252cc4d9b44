"""Live identification on synthetic conversations: latency to the right name, naming shares
side by side with offline ``track``, and how many real-time streams 2 cores keep up with.

Conversations, registry and model are ``bench/track.py``'s (speechocean762-dev, seeded dev/test
halves with disjoint speakers, enrolled and unknown voices mixed; the real-voice test asset at
its card threshold 0.2222). Each conversation is streamed:

- **in-process** (``SpeakerID.stream``, 0.1 s chunks as fast as the CPU goes: the algorithm's
  own latency, in stream time);
- **over the WebSocket at real time** (``speakerid serve`` in a subprocess, ``Client.stream``,
  0.1 s messages paced by the wall clock, ``--ws-concurrency`` conversations at once), where an
  event's time is when it arrived, measured from the moment the turn's first sample was sent.

Reported, per path:
- latency from the start of an enrolled speaker's reference turn to the first event (partial or
  segment) naming that speaker and overlapping the turn: median and p90 over turns of >= 2 s that
  offline ``track`` names rightly (its label on most of the turn), so that the number measures the
  live path and not the model (a turn never named rightly counts as its length + 10 s);
- named / misnamed: the final segments scored as ``bench/track.py`` scores ``track`` (share of
  enrolled speech time labelled with the right name; of unknown voices' time labelled with an
  enrolled name), with offline ``track`` on the same files, model and threshold beside them;
- the oracle: each reference turn (true segmentation) named by the same ``identify`` rule, the
  ceiling of naming turns with these embeddings; and the oracle latency: the same partials
  (1 s into the turn, then every 0.5 s, the last 2 s) from the true turn starts, no compute
  time, the ceiling of the latency with these embeddings;
- real-time factor per stream (in-process CPU seconds / audio seconds, one thread);
- concurrency: N streams at real time against one server (``--levels``), the lag of each event
  behind the audio (arrival time minus the time its last sample was sent; p50, p95, max) and
  whether the stream kept up (every partial's lag <= 1 s).

    python bench/live.py                 # test split (what docs/live.md reports)
    python bench/live.py --split dev     # the split CHANGE_COS was chosen on
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SPEAKERID_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import conversations as conv  # noqa: E402
import track as tb  # noqa: E402
from serve import start_server  # noqa: E402

CHUNK = 0.1  # seconds per message / feed
MIN_TURN = 2.0
MISSED = 10.0  # latency given to a turn never named rightly: its length + this


def load(path: str) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == conv.SR
    return x


def turns(ref: dict[str, list[tuple[float, float]]]) -> list[tuple[str, float, float]]:
    return sorted(((spk, a, b) for spk, v in ref.items() for a, b in v), key=lambda t: t[1])


def stream_in_process(sid, x: np.ndarray, threshold: float | None) -> tuple[list[dict], float]:
    """Events of one conversation fed in CHUNK pieces -> (events with "at", the stream time at
    which each was returned, CPU seconds)."""
    st = sid.stream(threshold)
    events = []
    step = int(CHUNK * conv.SR)
    t0 = time.process_time()
    for i in range(0, len(x), step):
        at = min(len(x), i + step) / conv.SR
        events += [dict(e.to_dict(), at=at) for e in st.feed(x[i : i + step])]
    events += [dict(e.to_dict(), at=len(x) / conv.SR) for e in st.close()]
    return events, time.process_time() - t0


def segment_spans(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        if e["type"] == "segment":
            out.setdefault(e["speaker"] or "(too short)", []).append((e["start"], e["end"]))
    return out


def label_share(hyp: dict, name: str, a: float, b: float) -> float:
    """Share of [a, b) that ``hyp`` labels ``name``."""
    got = sum(max(0.0, min(b, e) - max(a, s)) for s, e in hyp.get(name, []))
    return got / max(b - a, 1e-9)


def latencies(events: list[dict], ref: dict, track_hyp: dict, enrolled: set[str]) -> list[float]:
    """Per eligible turn: seconds from its start to the first event naming its speaker."""
    out = []
    for spk, a, b in turns(ref):
        if spk not in enrolled or b - a < MIN_TURN or label_share(track_hyp, spk, a, b) < 0.5:
            continue
        hit = [
            e["at"] - a
            for e in events
            if e["type"] in ("partial", "segment")
            and e["speaker"] == spk
            and e["at"] >= a
            and e["end"] > a
            and e["start"] < b
        ]
        out.append(min(hit) if hit else (b - a) + MISSED)
    return out


def oracle_counts(sid, x: np.ndarray, ref: dict, enrolled: set[str], duration: float, t: float):
    """Each reference turn named by the identify rule on its own audio (true segmentation)."""
    from speakerid.audio.decode import AudioClip
    from speakerid.audio.gates import probe_rejection
    from speakerid.tracking.live import UnknownVoices

    voices = UnknownVoices(t)
    hyp: dict[str, list[tuple[float, float]]] = {}
    for _, a, b in turns(ref):
        clip = AudioClip(x[int(a * conv.SR) : int(b * conv.SR)], "turn", conv.SR, 1, "")
        if probe_rejection(clip, 1.0)[0]:
            continue
        v = sid.embedder.embed_clips([clip])[0].vector
        (r,) = sid.identify_embeddings(v[None, :], top_k=2, threshold=t)
        name = r.speaker if r.accepted else voices.add(v)
        hyp.setdefault(name, []).append((a, b))
    return tb.naming_counts(ref, hyp, enrolled, duration)


def oracle_latencies(sid, x, ref, track_hyp, enrolled: set[str], t: float) -> list[float]:
    """The same turns as ``latencies``, their true starts known: the first moment (1 s into the
    turn, then every 0.5 s) at which the last 2 s of the turn are named rightly by the same
    rule, with no processing time: the ceiling of the partials with these embeddings."""
    from speakerid.audio.decode import AudioClip

    out = []
    for spk, a, b in turns(ref):
        if spk not in enrolled or b - a < MIN_TURN or label_share(track_hyp, spk, a, b) < 0.5:
            continue
        found = None
        k = 1.0
        while a + k <= b + 1e-9 and found is None:
            lo, hi = int(max(a, a + k - 2.0) * conv.SR), int((a + k) * conv.SR)
            v = sid.embedder.embed_clips([AudioClip(x[lo:hi], "turn", conv.SR, 1, "")])[0].vector
            (r,) = sid.identify_embeddings(v[None, :], top_k=2, threshold=t)
            if r.accepted and r.speaker == spk:
                found = k
            k += 0.5
        out.append(found if found is not None else (b - a) + MISSED)
    return out


def summary(lat: list[float]) -> dict:
    arr = np.asarray(lat) if lat else np.zeros(1)
    return {
        "turns": len(lat),
        "median": round(float(np.median(arr)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "missed": int(sum(1 for v in lat if v >= MISSED)),
    }


def shares(counts: dict) -> dict:
    return {
        "named": round(counts["named_s"] / max(counts["enrolled_s"], 1e-9), 4),
        "misnamed_unknown": round(counts["misnamed_s"] / max(counts["unknown_s"], 1e-9), 4),
    }


def add(total: dict, c: dict) -> None:
    for k, v in c.items():
        total[k] = total.get(k, 0.0) + v


def offline_track(items, emb, ans, db: Path, t: float) -> dict[str, dict]:
    """``track``'s hypothesis per conversation (the same decide as bench/track.py)."""
    from speakerid.service.facade import SpeakerID
    from speakerid.tracking.pipeline import decide

    out = {}
    with SpeakerID(db=db) as sid:
        for it in items:
            res = decide(
                ans[it["uri"]],
                emb,
                it["audio"],
                lambda v: sid.identify_embeddings(v, top_k=2, threshold=t),
                t,
            )
            out[it["uri"]] = tb.hyp_spans(res)
    return out


# --- the WebSocket at real time ----------------------------------------------------------------
def stream_real_time(url: str, x: np.ndarray, seconds: float | None, out: dict) -> None:
    """Send ``x`` (the first ``seconds``) at real time over the WebSocket; record each event
    with ``at``: its arrival, in seconds since the first sample was sent."""
    from speakerid.client import Client

    if seconds is not None:
        x = x[: int(seconds * conv.SR)]
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    step = int(CHUNK * conv.SR)
    t0: list[float] = []

    def chunks():
        t0.append(time.perf_counter())
        for k, i in enumerate(range(0, len(pcm), step)):
            wait = t0[0] + k * CHUNK - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            yield pcm[i : i + step]
        wait = t0[0] + len(pcm) / conv.SR - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    events = []
    with Client(url) as client:
        for e in client.stream(chunks(), sample_rate=conv.SR):
            d = e.to_dict()
            d["at"] = time.perf_counter() - t0[0]
            events.append(d)
    out["events"] = events
    out["audio"] = len(pcm) / conv.SR


def lag_stats(results: list[dict]) -> dict:
    """Lag of every partial behind the audio: arrival minus the time its last sample was sent."""
    lags = [e["at"] - e["end"] for r in results for e in r["events"] if e["type"] == "partial"]
    finals = [r["events"][-1]["at"] - r["audio"] for r in results if r["events"]]
    kept = sum(
        1
        for r in results
        if all(e["at"] - e["end"] <= 1.0 for e in r["events"] if e["type"] == "partial")
    )
    arr = np.asarray(lags) if lags else np.zeros(1)
    partials = [sum(e["type"] == "partial" for e in r["events"]) for r in results]
    return {
        "streams": len(results),
        "partials_per_minute": round(60 * sum(partials) / sum(r["audio"] for r in results), 1),
        "kept_up": kept,
        "lag_p50": round(float(np.median(arr)), 3),
        "lag_p95": round(float(np.percentile(arr, 95)), 3),
        "lag_max": round(float(arr.max()), 3),
        "last_event_after_audio_max": round(max(finals) if finals else 0.0, 3),
    }


def run_parallel(url: str, audios: list[np.ndarray], seconds: float | None) -> list[dict]:
    results = [{} for _ in audios]
    threads = [
        threading.Thread(target=stream_real_time, args=(url, x, seconds, r))
        for x, r in zip(audios, results)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def print_report(report: dict, concurrency: int) -> None:
    nm = report["naming"]
    print(
        f"{report['split']}: {report['conversations']} conversations, "
        f"{report['audio_seconds']:.0f} s, threshold {report['threshold']:.4f}"
    )
    rows = [("offline track", nm["track"]), ("live, in-process", nm["live"])]
    if "websocket" in report:
        rows.append(("live, WebSocket", report["websocket"]["naming"]))
    rows.append(("oracle turns", nm["oracle"]))
    print(f"  {'':22s} {'named':>8s} {'misnamed unknown':>18s}")
    for name, r in rows:
        print(f"  {name:22s} {100 * r['named']:7.1f}% {100 * r['misnamed_unknown']:17.1f}%")

    def latency(label: str, lat: dict) -> str:
        return (
            f"  latency to the right name, {label}: median {lat['median']:.2f} s, "
            f"p90 {lat['p90']:.2f} s ({lat['turns']} turns, {lat['missed']} never named)"
        )

    ip = report["in_process"]
    print(latency("in-process", ip["latency"]) + f"; RTF per stream {ip['rtf']:.3f}")
    print(latency("oracle turn starts", report["oracle_latency"]))
    if "websocket" in report:
        ws = report["websocket"]
        print(
            latency(f"WebSocket at real time, {concurrency} at once", ws["latency"])
            + f"; lag p95 {ws['lag']['lag_p95']:.2f} s"
        )
        for lv in report["levels"]:
            print(
                f"  {lv['streams']:3d} real-time streams: kept up {lv['kept_up']}/{lv['streams']}"
                f", lag p50 {lv['lag_p50']:.2f} s, p95 {lv['lag_p95']:.2f} s, max "
                f"{lv['lag_max']:.2f} s, last event {lv['last_event_after_audio_max']:.2f} s "
                f"after the audio, {lv['partials_per_minute']:.0f} partials a minute"
            )
    print(f"  load average {report['load_average_1min']:.1f}, {report['bench_seconds']:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--work", type=Path, default=Path("/tmp/speakerid-bench-track"))
    ap.add_argument("--ws-concurrency", type=int, default=6, help="streams at once (accuracy)")
    ap.add_argument("--levels", default="4,8,12,16", help="concurrent streams to try ('' none)")
    ap.add_argument("--level-seconds", type=float, default=60.0, help="audio per stream, levels")
    ap.add_argument("--no-ws", action="store_true", help="only the in-process stream")
    ap.add_argument(
        "--workers", type=int, default=1, help="server processes (default 1, as speakerid serve)"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a tracking.live constant in-process (tuning on --split dev only)",
    )
    args = ap.parse_args()
    from speakerid.tracking import live

    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(live, name):
            raise SystemExit(f"tracking.live has no {name}")
        setattr(live, name, type(getattr(live, name))(value))
    warnings.filterwarnings("ignore", module="pyannote")
    from speakerid.service.facade import SpeakerID

    t_start = time.perf_counter()
    split = conv.splits(tb.DATA, args.seed)[args.split]
    items = conv.build(tb.DATA, args.work, split, args.conversations, args.seed)
    db = args.work / f"{args.split}-asset.db"
    tb.build_registry(db, tb.ASSET, split)
    emb, ans = tb.analyses(items, tb.ASSET, args.work / "cache")
    report: dict = {
        "split": args.split,
        "conversations": len(items),
        "overrides": args.set,
        "server_workers": args.workers,
    }
    with SpeakerID(db=db) as sid:
        t, _ = sid.threshold()
        enrolled_all = {s.name for s in sid.list()}
        tb.enrolled_all.update(enrolled_all)
        track_hyp = offline_track(items, emb, ans, db, t)
        rows = {k: {} for k in ("track", "live", "oracle")}
        lat: list[float] = []
        oracle_lat: list[float] = []
        cpu = audio = 0.0
        for it in items:
            x = load(it["audio"])
            ref = tb.load_rttm(it["rttm"])
            enrolled = set(it["enrolled"])
            events, used = stream_in_process(sid, x, t)
            cpu, audio = cpu + used, audio + len(x) / conv.SR
            add(
                rows["live"], tb.naming_counts(ref, segment_spans(events), enrolled, it["duration"])
            )
            add(
                rows["track"], tb.naming_counts(ref, track_hyp[it["uri"]], enrolled, it["duration"])
            )
            add(rows["oracle"], oracle_counts(sid, x, ref, enrolled, it["duration"], t))
            lat += latencies(events, ref, track_hyp[it["uri"]], enrolled)
            oracle_lat += oracle_latencies(sid, x, ref, track_hyp[it["uri"]], enrolled, t)
    report["threshold"] = t
    report["audio_seconds"] = round(audio, 1)
    report["naming"] = {k: shares(v) for k, v in rows.items()}
    report["enrolled_seconds"] = round(rows["track"]["enrolled_s"], 1)
    report["unknown_seconds"] = round(rows["track"]["unknown_s"], 1)
    report["in_process"] = {"latency": summary(lat), "rtf": round(cpu / audio, 4)}
    report["oracle_latency"] = summary(oracle_lat)

    if not args.no_ws:
        env = {
            k: v for k, v in os.environ.items() if k not in ("SPEAKERID_THREADS", "OMP_NUM_THREADS")
        }
        # workers processes share the cores (each gets cores / workers threads, as serve does)
        server, url = start_server(db, env, "--max-streams", "64", "--workers", str(args.workers))
        try:
            audios = {it["uri"]: load(it["audio"]) for it in items}
            ws_lat: list[float] = []
            ws_counts: dict = {}
            lags = []
            for k in range(0, len(items), args.ws_concurrency):
                part = items[k : k + args.ws_concurrency]
                results = run_parallel(url, [audios[it["uri"]] for it in part], None)
                lags += results
                for it, r in zip(part, results):
                    ref = tb.load_rttm(it["rttm"])
                    enrolled = set(it["enrolled"])
                    hyp = segment_spans(r["events"])
                    add(ws_counts, tb.naming_counts(ref, hyp, enrolled, it["duration"]))
                    ws_lat += latencies(r["events"], ref, track_hyp[it["uri"]], enrolled)
            report["websocket"] = {
                "concurrency": args.ws_concurrency,
                "latency": summary(ws_lat),
                "naming": shares(ws_counts),
                "lag": lag_stats(lags),
            }
            levels = [int(v) for v in args.levels.split(",") if v]
            report["levels"] = []
            pool = list(audios.values())
            for n in levels:
                chosen = [pool[i % len(pool)] for i in range(n)]
                res = run_parallel(url, chosen, args.level_seconds)
                report["levels"].append(lag_stats(res))
        finally:
            server.terminate()
            server.wait(30)
    report["load_average_1min"] = os.getloadavg()[0]
    report["bench_seconds"] = round(time.perf_counter() - t_start, 1)

    print_report(report, args.ws_concurrency)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
