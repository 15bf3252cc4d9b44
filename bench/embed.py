"""Embedding throughput: the official per-file loop vs speakerid's batch path, side by side.

Reference (3D-Speaker's inference loop): for each file, decode → int16/32768 → Kaldi fbank
(dither 0) minus its mean → model with batch 1 in fp32 under ``torch.no_grad`` → numpy.
default: ``Embedder.embed_many`` on the same in-memory files with no backend chosen, i.e. what
every command runs (on CPU: ONNX Runtime on the exported network, numpy fbank, no torch).
torch: the same with ``backend="torch"`` (PyTorch; on CPU batch 1 with folded BatchNorm, oneDNN
1x1 convolutions and channels_last; on CUDA length-bucketed padded batches with exact masking).
int8: the default path with ``precision="int8"`` (opt-in: quantized convolutions, CPU only).
bf16: ``precision="bf16"`` (opt-in: PyTorch autocast to bfloat16; fast where the CPU has
AVX-512 BF16 or AMX, emulated and slow where it has not).

Each (model, data, path) runs in its own subprocess so peak memory (max RSS) is per path.
Reported: utterances/s, real-time factor (compute seconds per audio second), peak RSS, and the
minimum cosine between each path's embeddings and the reference's.

    python bench/embed.py                       # CPU, both models, real + synthetic data
    python bench/embed.py --device cuda --files 400
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DEV = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"
SYNTH_SECONDS = [1, 2, 3, 5, 10, 20, 30]


def dataset(kind: str, n: int) -> list[bytes]:
    if kind not in ("real", "synthetic"):
        raise SystemExit(f"unknown data set {kind!r} (use real or synthetic)")
    if kind == "real":
        with open(DEV / "manifest.csv") as f:
            rows = list(csv.DictReader(f))[:n]
        return [(DEV / r["path"]).read_bytes() for r in rows]
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sec = SYNTH_SECONDS[i % len(SYNTH_SECONDS)]
        t = np.arange(sec * 16000) / 16000
        x = 0.2 * np.sin(2 * np.pi * (120 + 10 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        x = x + 0.02 * rng.standard_normal(len(t))
        buf = io.BytesIO()
        sf.write(buf, x.astype(np.float32), 16000, subtype="PCM_16", format="WAV")
        out.append(buf.getvalue())
    return out


def reference_loop(model, files: list[bytes], device) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio.compliance.kaldi as kaldi

    out = []
    with torch.no_grad():
        for data in files:
            wav, sr = sf.read(io.BytesIO(data), dtype="int16")
            x = torch.from_numpy(wav.astype(np.float32) / 32768.0).unsqueeze(0)
            feat = kaldi.fbank(x, num_mel_bins=80, sample_frequency=sr, dither=0.0)
            feat = feat - feat.mean(dim=0, keepdim=True)
            out.append(model(feat.unsqueeze(0).to(device)).cpu().numpy()[0])
    return np.stack(out)


def worker(args) -> None:
    import torch

    from speakerid.embedding.embedder import Embedder

    (kind,) = args.data  # the parent passes one data set per worker
    files = dataset(kind, args.files)
    seconds = sum(len(f) - 44 for f in files) / 32000 if kind == "synthetic" else None
    backend = None if args.path in ("default", "int8", "bf16") else "torch"  # reference: a device
    precision = args.path if args.path in ("int8", "bf16") else None
    emb = Embedder(args.model_path, device=args.device, backend=backend, precision=precision)
    if args.path == "reference":
        from speakerid.embedding.weights import load_model

        plain = load_model(Path(args.model_path)).to(emb.device)  # official layout, contiguous
        run = lambda: reference_loop(plain, files, emb.device)  # noqa: E731
    else:
        run = lambda: np.stack([e.vector for e in emb.embed_many(files)])  # noqa: E731
    run_warm = files[:2]
    if args.path == "reference":
        reference_loop(plain, run_warm, emb.device)
    else:
        emb.embed_many(run_warm)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = run()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if seconds is None:
        import soundfile as sf

        seconds = sum(sf.info(io.BytesIO(f)).duration for f in files)
    np.save(args.out, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "audio": seconds, "n": len(files), "rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", nargs="+", default=["real", "synthetic"])
    ap.add_argument("--models", nargs="+", default=["common", "asset"], help="common, asset")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="speakerid-embed-"))
    try:
        run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a 70 MB checkpoint and its exports


def run_all(args, tmp: Path) -> None:
    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2

    models = {}
    if "common" in args.models:
        torch.manual_seed(0)
        common = tmp / "eres2netv2-common-random.pt"
        torch.save(ERes2NetV2().state_dict(), common)
        models["common (full width, random)"] = common
    if "asset" in args.models and ASSET.is_file():
        models["test asset m32"] = ASSET
    print(
        f"device {args.device}, {args.files} files per set, torch threads {torch.get_num_threads()}"
        f", load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'model':<28} {'data':<9} {'path':<10} {'utt/s':>7} {'RTF':>7} {'peak MB':>8} "
        f"{'speedup':>7} {'min cos':>9}"
    )
    paths = ["reference", "default", "torch", "bf16"] + (["int8"] if args.device == "cpu" else [])
    for label, path in models.items():
        for data in args.data:
            res = {}
            for which in paths:
                out = tmp / f"{which}.npy"
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "--path",
                        which,
                        "--model-path",
                        str(path),
                        "--data",
                        data,
                        "--files",
                        str(args.files),
                        "--device",
                        args.device,
                        "--out",
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, SPEAKERID_HOME=str(tmp / "home")),
                )
                res[which] = json.loads(proc.stdout.strip().splitlines()[-1])
                res[which]["vecs"] = np.load(out)
            base = res["reference"]["n"] / res["reference"]["seconds"]
            for which in paths:
                r = res[which]
                ups = r["n"] / r["seconds"]
                rtf = r["seconds"] / r["audio"]
                shown = float(np.min(np.sum(res["reference"]["vecs"] * r["vecs"], 1)))
                print(
                    f"{label:<28} {data:<9} {which:<10} {ups:7.2f} {rtf:7.4f} "
                    f"{r['rss_mb']:8.0f} {ups / base:6.2f}x {shown:9.6f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
