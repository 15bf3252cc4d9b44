"""CUDA end to end (decoded audio in memory → embeddings) vs the official per-file loop.

One script for a lent GPU machine, sized to a few minutes: every variant runs in this process,
in order of importance, and stops starting new ones after ``--budget`` seconds. Results go to
stdout (a table last) and, one JSON object per line, to ``--out``.

Reference (3D-Speaker's inference loop, as its code runs on a GPU): per file, int16/32768 →
torchaudio Kaldi fbank on the CPU minus its mean → the model with batch 1 on the GPU, fp32
with PyTorch's defaults (which let cuDNN use TF32 in convolutions) → numpy. Both sides start
from decoded audio in memory. speakerid: ``Embedder.embed_many`` on ``AudioClip`` objects
(fbank of a whole chunk on the device, length-sorted padded batches with exact masking).

    python bench/gpu.py --data DIR --asset eres2netv2-m32-so762.pt --out gpu.jsonl

DIR holds a manifest.csv (path,speaker,duration_s) and the audio, like ../shared/datasets/*.
Accuracy: min cosine of each variant against the reference loop and against the official
loop in float32 on the CPU (exact), and, with ``--asset`` (a trained model), the EER over all
pairs of DIR for each precision.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def decode(folder: Path, limit: int | None):
    import soundfile as sf

    from speakerid.audio.decode import AudioClip

    with open(folder / "manifest.csv") as f:
        rows = list(csv.DictReader(f))[:limit]

    def one(row):
        pcm, sr = sf.read(folder / row["path"], dtype="int16")
        assert sr == 16000 and pcm.ndim == 1, (row["path"], sr, pcm.shape)
        return pcm

    with ThreadPoolExecutor(8) as pool:
        pcms = list(pool.map(one, rows))
    clips = [
        AudioClip(p.astype(np.float32) / 32768.0, r["path"], 16000, 1, r["path"])
        for p, r in zip(pcms, rows)
    ]
    return pcms, clips, np.asarray([r["speaker"] for r in rows])


def official_loop(model, pcms, device) -> np.ndarray:
    import torch
    import torchaudio.compliance.kaldi as kaldi

    out = []
    with torch.no_grad():
        for pcm in pcms:
            x = torch.from_numpy(pcm.astype(np.float32) / 32768.0).unsqueeze(0)
            feat = kaldi.fbank(x, num_mel_bins=80, sample_frequency=16000, dither=0.0)
            feat = feat - feat.mean(dim=0, keepdim=True)
            out.append(model(feat.unsqueeze(0).to(device)).cpu().numpy()[0])
    return unit(np.stack(out))


def reference_features(pcms) -> list:
    """The reference loop's CPU front end alone (to split its time)."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    out = []
    for pcm in pcms:
        x = torch.from_numpy(pcm.astype(np.float32) / 32768.0).unsqueeze(0)
        feat = kaldi.fbank(x, num_mel_bins=80, sample_frequency=16000, dither=0.0)
        out.append(feat - feat.mean(dim=0, keepdim=True))
    return out


def reference_model(model, feats, device) -> None:
    """The reference loop's network calls alone, batch 1."""
    import torch

    with torch.no_grad():
        for feat in feats:
            model(feat.unsqueeze(0).to(device)).cpu()


def profile(run, rep: Report, out: Path | None, name: str) -> None:
    """One warm round under torch.profiler: kernel time by kernel, and device busy time
    against wall time (the gap is launch overhead and host work)."""
    import torch
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        run()
        sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    busy = sum(getattr(e, "self_" + attr, 0) for e in events) / 1e6
    key = "self_" + attr
    table = events.table(sort_by=key, row_limit=25)
    if out:
        out.with_name(f"profile-{name}.txt").write_text(table)
    print(table)
    rep.add(what="profile", variant=name, wall_s=round(wall, 3), device_busy_s=round(busy, 3))


def variant_name(precision: str, comp: bool, batch: int, tweak: str | None) -> str:
    return f"{precision}{'-c' if comp else ''}-b{batch}{'-' + tweak if tweak else ''}"


#: Frames the padded length of an experimental bucketed batch is rounded up to.
BUCKET = 64


def bucketed(emb, graphs: bool):
    """Experiment (not the product's path yet): pad every batch to a multiple of ``BUCKET``
    frames (exact: padded frames are masked), so few shapes recur; with ``graphs``, each
    (batch, length) shape is captured once as a CUDA graph and replayed (no launch gaps).
    Replaces ``emb._forward``."""
    import torch

    graphs_by_shape: dict[tuple[int, int], tuple] = {}
    pool = torch.cuda.graph_pool_handle() if graphs else None

    def forward(feats):
        lengths = [f.shape[0] for f in feats]
        frames = -(-max(lengths) // BUCKET) * BUCKET
        with torch.inference_mode(), emb._numerics():
            x = torch.zeros(len(feats), frames, feats[0].shape[1], device=emb.device)
            for i, f in enumerate(feats):
                x[i, : f.shape[0]] = f
            lens = torch.tensor(lengths, device=emb.device)
            if not graphs:
                return emb._run(x, lens).float()
            key = (len(feats), frames)
            if key not in graphs_by_shape:
                sx, sl = x.clone(), lens.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up outside the capture (cuDNN plans, allocator)
                        emb._run(sx, sl)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = emb._run(sx, sl).float()
                graphs_by_shape[key] = (graph, sx, sl, out)
            graph, sx, sl, out = graphs_by_shape[key]
            sx.copy_(x)
            sl.copy_(lens)
            graph.replay()
            return out.clone()

    emb._forward = forward


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def eer(vecs: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate over all pairs (i < j) of unit vectors."""
    scores = vecs @ vecs.T
    iu = np.triu_indices(len(vecs), 1)
    s, same = scores[iu], (labels[:, None] == labels[None, :])[iu]
    order = np.argsort(-s)
    same = same[order]
    tp = np.cumsum(same) / same.sum()
    fp = np.cumsum(~same) / (~same).sum()
    frr = 1 - tp
    k = int(np.argmin(np.abs(frr - fp)))
    return float((frr[k] + fp[k]) / 2)


def nhwc_weights(model) -> bool:
    """Whether the network's weights are channels_last (a 3x3 convolution with many inputs:
    a 1x1 or single-input kernel is contiguous in both layouts)."""
    import torch

    return model.layer1[0].convs[0].weight.is_contiguous(memory_format=torch.channels_last)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


class Report:
    def __init__(self, path: Path | None) -> None:
        self.path, self.rows = path, []
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, **row) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--asset", type=Path)
    ap.add_argument("--files", type=int, help="first N files of the manifest (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="workload = the files N times")
    ap.add_argument("--reference-files", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; then start no more")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--profile",
        metavar="VARIANT",
        help="profile one warm round of this variant (torch.profiler): the busiest kernels "
        "and how much of the wall time the device was busy, into --out's folder",
    )
    ap.add_argument(
        "--only",
        help="comma-separated variants to run, named like the table (fp32-b128, bf16-b128, "
        "bf16-c-b128 for compile, tf32-b128-flip for the other layout); default: all",
    )
    args = ap.parse_args()

    import torch

    from speakerid.embedding.embedder import Embedder
    from speakerid.embedding.models.eres2netv2 import ERes2NetV2

    start = time.perf_counter()
    rep = Report(args.out)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    pcms, clips, labels = decode(args.data, args.files)
    seconds = sum(len(p) for p in pcms) / 16000
    rep.add(
        what="setup",
        device=name,
        torch=torch.__version__,
        cudnn=torch.backends.cudnn.version(),
        files=len(clips),
        audio_s=round(seconds, 1),
        decode_s=round(time.perf_counter() - start, 2),
    )
    tmp = Path(tempfile.mkdtemp(prefix="speakerid-gpu-"))
    os.environ.setdefault("SPEAKERID_HOME", str(tmp / "home"))
    torch.manual_seed(0)
    common = tmp / "eres2netv2-common-random.pt"
    torch.save(ERes2NetV2().state_dict(), common)

    from speakerid.embedding.weights import load_model

    # -- the reference loop, on the GPU and (exact float32) on the CPU -------------------------
    nref = min(args.reference_files, len(pcms))
    plain = load_model(common).to(dev)
    official_loop(plain, pcms[:5], dev)  # warm-up (cuDNN handles, kernels)
    # cold: lengths this process has not seen (each new input shape costs cuDNN a plan);
    # warm: the same files again, as a long-running loop over repeating lengths would see
    ref_s, ref = timed(lambda: official_loop(plain, pcms[:nref], dev), 1)
    ref_ups = nref / ref_s
    ref_warm_s, _ = timed(lambda: official_loop(plain, pcms[:nref], dev), 1)
    ref_warm = nref / ref_warm_s
    fbank_s, feats = timed(lambda: reference_features(pcms[:nref]), 1)
    model_s, _ = timed(lambda: reference_model(plain, feats, dev), 1)
    ncpu = min(24, nref)
    cpu_truth = official_loop(load_model(common), pcms[:ncpu], torch.device("cpu"))
    rep.add(
        what="reference",
        model="common",
        utt_s=round(ref_ups, 1),
        ms_per_utt=round(1000 * ref_s / nref, 3),
        utt_s_warm=round(ref_warm, 1),
        fbank_ms=round(1000 * fbank_s / nref, 3),
        model_ms=round(1000 * model_s / nref, 3),
        cos_vs_cpu_fp32=float(np.min(np.sum(ref[:ncpu] * cpu_truth, 1))),
    )
    plain = None  # free the device memory

    # -- speakerid's CUDA path, variants in order of importance --------------------------------
    work = clips * args.repeat
    variants = [
        ("fp32", False, 128, None),
        ("bf16", False, 128, None),
        ("tf32", False, 128, None),
        ("fp32", False, 32, None),
        ("fp32", False, 64, None),
        ("fp32", False, 128, "flip"),
        ("bf16", False, 128, "flip"),
        ("bf16", False, 256, None),
        ("tf32", False, 128, "flip"),
        # experiments for the next device session (docs/performance.md, "GPU"): bucketed
        # lengths, cuDNN's benchmark mode on them, CUDA graphs per bucketed shape
        ("bf16", False, 128, "bucket"),
        ("bf16", False, 128, "cudnn-bench"),
        ("bf16", False, 128, "graphs"),
        ("fp32", False, 128, "graphs"),
        ("bf16", True, 128, None),  # torch.compile: ~1-3 min of compiling each, so last
        ("fp32", True, 128, None),
    ]
    asset_done = False
    if args.only:
        wanted = set(args.only.split(","))
        variants = [v for v in variants if variant_name(*v) in wanted]
    for precision, comp, batch, tweak in variants:
        if time.perf_counter() - start > args.budget:
            rep.add(what="skipped", variant=variant_name(precision, comp, batch, tweak))
            continue
        if comp and not asset_done and args.asset:
            accuracy(args, rep, clips, labels, pcms)  # before the long compiles
            asset_done = True
        try:
            t0 = time.perf_counter()
            emb = Embedder(
                common, device=args.device, backend="torch", precision=precision, compile=comp
            )
            if tweak in ("bucket", "graphs", "cudnn-bench"):
                bucketed(emb, graphs=tweak == "graphs")
            torch.backends.cudnn.benchmark = tweak == "cudnn-bench"
            if tweak == "flip":
                nhwc = nhwc_weights(emb._model)
                emb._model.to(
                    memory_format=torch.contiguous_format if nhwc else torch.channels_last
                )
            cl = nhwc_weights(emb._model)

            def run(emb=emb, batch=batch, items=work):
                return np.stack([e.vector for e in emb.embed_many(items, batch_size=batch)])

            load_s = time.perf_counter() - t0
            cold_s, first = timed(lambda: run(items=clips), 1)  # new lengths (and the compile)
            run()  # the workload once, so its batch shapes are known: then timed warm
            dt, vecs = timed(run, args.rounds)
            n = len(work)
            if args.profile == variant_name(precision, comp, batch, tweak):
                profile(run, rep, args.out, args.profile)
            rep.add(
                what="speakerid",
                variant=variant_name(precision, comp, batch, tweak),
                tweak=tweak,
                precision=precision,
                compile=comp,
                batch=batch,
                channels_last=cl,
                utt_s=round(n / dt, 1),
                ms_per_utt=round(1000 * dt / n, 4),
                rtf=dt / (seconds * args.repeat),
                speedup=round((n / dt) / ref_warm, 2),
                utt_s_cold=round(len(clips) / cold_s, 1),
                speedup_cold=round((len(clips) / cold_s) / ref_ups, 2),
                load_s=round(load_s, 2),
                cos_vs_reference=float(np.min(np.sum(unit(first[:nref]) * ref, 1))),
                cos_vs_cpu_fp32=float(np.min(np.sum(unit(first[:ncpu]) * cpu_truth, 1))),
                repeat_identical=float(np.max(np.abs(vecs[: len(clips)] - first))),
                peak_gb=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if gpu else None,
            )
            del emb
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
        except Exception as exc:  # one variant failing must not lose the others
            rep.add(
                what="failed",
                precision=precision,
                compile=comp,
                batch=batch,
                error=f"{type(exc).__name__}: {exc}"[:400],
            )
    if (
        args.asset
        and not asset_done
        and not args.only
        and time.perf_counter() - start < args.budget + 60
    ):
        accuracy(args, rep, clips, labels, pcms)
    table(rep.rows, time.perf_counter() - start)


def accuracy(args, rep: Report, clips, labels, pcms) -> None:
    """EER over all pairs of the data set with the trained asset, per precision."""
    import torch

    from speakerid.embedding.embedder import Embedder
    from speakerid.embedding.weights import load_model

    cpu = (
        official_loop(load_model(args.asset), pcms, torch.device("cpu"))
        if len(pcms) <= 600
        else None
    )
    base = None
    for precision in ("fp32", "tf32", "bf16"):
        try:
            emb = Embedder(args.asset, device=args.device, backend="torch", precision=precision)
            vecs = unit(np.stack([e.vector for e in emb.embed_many(clips)]))
            base = vecs if base is None else base
            rep.add(
                what="accuracy",
                model="asset m32",
                precision=precision,
                eer_pct=round(100 * eer(vecs, labels), 3),
                cos_vs_fp32=float(np.min(np.sum(vecs * base, 1))),
                cos_vs_cpu_fp32=float(np.min(np.sum(vecs * cpu, 1))) if cpu is not None else None,
                pairs=len(vecs) * (len(vecs) - 1) // 2,
            )
        except Exception as exc:
            rep.add(
                what="failed",
                precision=precision,
                stage="accuracy",
                error=f"{type(exc).__name__}: {exc}"[:400],
            )


def table(rows: list[dict], total: float) -> None:
    print(f"\n== bench/gpu.py ({total:.0f} s) ==")
    for r in rows:
        if r["what"] == "setup":
            print(
                f"{r['device']}, torch {r['torch']}, cuDNN {r['cudnn']}, {r['files']} files "
                f"({r['audio_s']} s of audio)"
            )
        if r["what"] == "reference":
            print(
                f"{'path':<34} {'utt/s':>8} {'ms/utt':>8} {'speedup':>8} {'cos ref':>9} "
                f"{'cos cpu':>9}"
            )
            print(
                f"{'official per-file loop (GPU)':<34} {r['utt_s_warm']:8.1f} "
                f"{1000 / r['utt_s_warm']:8.3f} {'1.00x':>8} {'-':>9} {r['cos_vs_cpu_fp32']:9.6f}"
                f"   cold {r['utt_s']:.1f} utt/s"
            )
        if r["what"] == "speakerid":
            tweak = r.get("tweak")
            label = (
                f"{r['precision']}{' compile' if r['compile'] else ''} b{r['batch']}"
                f"{' NHWC' if r['channels_last'] else ' NCHW'}"
                f"{' ' + tweak if tweak and tweak != 'flip' else ''}"
            )
            print(
                f"{label:<34} {r['utt_s']:8.1f} {r['ms_per_utt']:8.4f} {r['speedup']:7.2f}x "
                f"{r['cos_vs_reference']:9.6f} {r['cos_vs_cpu_fp32']:9.6f}"
                f"   cold {r['utt_s_cold']:.1f} utt/s = {r['speedup_cold']:.2f}x"
            )
        if r["what"] == "accuracy":
            print(
                f"EER asset {r['precision']}: {r['eer_pct']} % (min cos vs fp32 "
                f"{r['cos_vs_fp32']:.6f}, vs CPU {r['cos_vs_cpu_fp32']})"
            )
        if r["what"] in ("failed", "skipped"):
            print(r)


if __name__ == "__main__":
    main()
