"""How close the default CPU path runs to the cores' fp32 peak, and what Winograd would change.

Issue 14 asks for an exact default path at >= 2.0x the official per-file loop. This script
measures the ceiling: the full-width network's multiply-adds per 3x3 / 1x1 convolution kind,
ONNX Runtime's time per node (its profiler, one thread, one utterance), the rate each kind
reaches, and the core's fp32 peak as its fastest large convolution shows it. ``--winograd``
also times each 3x3 stride-1 shape of the model through NNPACK's Winograd convolution (the one
multiply-saving exact algorithm reachable from Python here, via PyTorch) against PyTorch's
direct convolution and ONNX Runtime's, with its error against float64. ``--bf16-stages`` runs
each stage of the trained test asset alone under bfloat16 (the rest in float32) and reports
the minimum cosine to float32 on real speech: could a partly-bf16 default stay exact (cosine
>= 0.99999)?

    python bench/roofline.py --frames 360 --winograd --bf16-stages
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def conv_macs(net, frames: int) -> dict[str, dict]:
    """Multiply-adds and shapes of every Conv2d, keyed by its ONNX node name prefix."""
    import torch

    out: dict[str, dict] = {}

    def hook(name):
        def fn(mod, inp, res):
            kh, kw = mod.kernel_size
            out[name] = {
                "kind": f"{kh}x{kw}/s{mod.stride[0]}",
                "macs": res.numel() * mod.in_channels // mod.groups * kh * kw,
                "shape": (mod.in_channels, mod.out_channels, *inp[0].shape[2:]),
            }

        return fn

    hooks = [
        m.register_forward_hook(hook(n))
        for n, m in net.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        net(torch.randn(1, frames, net.config.feat_dim))
    for h in hooks:
        h.remove()
    return out


def ort_node_times(
    onnx_path: Path, frames: int, rounds: int
) -> list[tuple[str, str, tuple, float]]:
    """(op, convolution kind or "", (input channels, height), median microseconds) per node.

    One thread, after a warm-up.

    The kind comes from the node's own shapes (kernel size, input/output height), since fused
    and re-laid-out nodes no longer carry their module's name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(onnx_path.with_suffix(""))  # beside the temporary export
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, frames, 80)).astype(np.float32)
    for _ in range(rounds + 1):
        sess.run(None, {"feats": x})
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    times = collections.defaultdict(list)
    kinds: dict[str, tuple[str, str, tuple]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        args = e["args"]
        kind, size = "", ()
        if args.get("op_name") in ("Conv", "FusedConv"):
            (inp,), (wt,) = (
                args["input_type_shape"][0].values(),
                args["input_type_shape"][1].values(),
            )
            (out,) = args["output_type_shape"][0].values()
            kind, size = f"{wt[2]}x{wt[3]}/s{inp[2] // out[2]}", (wt[1], inp[2])
        kinds[e["name"]] = (args.get("op_name", "?"), kind, size)
        times[e["name"]].append(e["dur"])
    return [(*kinds[k], float(np.median(v[1:]))) for k, v in times.items()]


def winograd(shapes: list[tuple], reps: int) -> list[dict]:
    """Direct vs NNPACK (Winograd) 3x3 stride-1 convolution per shape, one thread."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    rows = []
    for cin, cout, h, w in shapes:
        x = torch.randn(1, cin, h, w)
        wt = torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)
        bias = torch.zeros(cout)
        exact = F.conv2d(x.double(), wt.double(), padding=1)
        scale = exact.abs().max().item()

        def timed(fn, exact=exact, scale=scale):
            fn()
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                y = fn()
                best = min(best, time.perf_counter() - t0)
            return best * 1e3, (y.double() - exact).abs().max().item() / scale

        d_ms, d_err = timed(lambda x=x, wt=wt: F.conv2d(x, wt, padding=1))
        w_ms, w_err = timed(
            lambda x=x, wt=wt, b=bias: torch._nnpack_spatial_convolution(x, wt, b, [1, 1])
        )
        rows.append(
            {
                "shape": [cin, cout, h, w],
                "direct_ms": d_ms,
                "direct_err": d_err,
                "winograd_ms": w_ms,
                "winograd_err": w_err,
            }
        )
    return rows


def whole_network(net, onnx_path: Path, files: int, rounds: int) -> dict:
    """ms per real dev utterance: ONNX Runtime vs PyTorch with every 3x3 stride-1 convolution
    through NNPACK (BatchNorm folded), at 1 and 2 threads (min of rounds)."""
    import csv

    import onnxruntime as ort
    import soundfile as sf
    import torch

    from speakerid.embedding.features import fbank_numpy
    from speakerid.embedding.models.eres2netv2 import fold_batchnorm

    dev = ROOT.parent / "shared" / "datasets" / "speechocean762-dev"
    with open(dev / "manifest.csv") as f:
        rows = list(csv.DictReader(f))[:files]
    feats = [fbank_numpy(sf.read(dev / r["path"], dtype="float32")[0]) for r in rows]
    winograd_net = fold_batchnorm(copy.deepcopy(net))
    for mod in winograd_net.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3) and mod.in_channels > 1:
            if mod.stride == (1, 1):
                bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels)
                mod.forward = lambda x, w=mod.weight, b=bias: torch._nnpack_spatial_convolution(
                    x.contiguous(), w, b, [1, 1]
                )
    out: dict = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

        def run_ort(f, sess=sess):
            return sess.run(None, {"feats": f[None]})[0][0]

        def run_torch(f):
            with torch.inference_mode():
                return winograd_net(torch.from_numpy(f)[None])[0].numpy()

        paths = {"onnxruntime": run_ort, "torch+winograd": run_torch}
        embs = {k: [fn(f) for f in feats] for k, fn in paths.items()}
        best = dict.fromkeys(paths, float("inf"))
        for k, fn in paths.items():  # one path's rounds together: ONNX Runtime's threads
            for _ in range(rounds):  # spin after a run, which would slow the other's start
                t0 = time.perf_counter()
                for f in feats:
                    fn(f)
                best[k] = min(best[k], (time.perf_counter() - t0) / len(feats) * 1e3)
        cos = min(
            float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            for a, b in zip(embs["onnxruntime"], embs["torch+winograd"], strict=True)
        )
        out[threads] = {**best, "min_cosine": cos}
        print(
            f"whole network, {threads} thread(s), {len(feats)} dev utterances: ONNX Runtime "
            f"{best['onnxruntime']:.1f} ms, PyTorch + Winograd {best['torch+winograd']:.1f} ms "
            f"per utterance (min cosine {cos:.7f})"
        )
    return out


def bf16_stages(files: int) -> dict[str, float]:
    """Min cosine to float32 over ``files`` dev utterances with one stage of the trained asset
    (BatchNorm folded) under CPU bf16 autocast, the others in float32."""
    import csv

    import soundfile as sf
    import torch

    from speakerid.embedding.features import fbank_numpy
    from speakerid.embedding.models.eres2netv2 import fold_batchnorm
    from speakerid.embedding.weights import load_model

    asset = ROOT.parent / "shared" / "models" / "eres2netv2-m32-so762.pt"
    dev = ROOT.parent / "shared" / "datasets" / "speechocean762-dev"
    net = fold_batchnorm(load_model(asset).eval())
    with open(dev / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:: max(1, len(rows) // files)][:files]
    feats = [
        torch.from_numpy(fbank_numpy(sf.read(dev / r["path"], dtype="float32")[0]))[None]
        for r in rows
    ]

    def embeddings() -> torch.Tensor:
        with torch.inference_mode():
            out = torch.cat([net(f).float() for f in feats]).double()
        return torch.nn.functional.normalize(out, dim=1)

    ref = embeddings()
    stages = ["conv1", "layer1", "layer2", "layer3", "layer3_ds", "layer4", "fuse34", "seg_1"]
    out = {}
    for name in stages:
        mod = getattr(net, name)
        plain = mod.forward

        def bf16(*a, _plain=plain):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _plain(*a).float()

        mod.forward = bf16
        out[name] = float((embeddings() * ref).sum(dim=1).min())
        mod.forward = plain
        print(f"bf16 in {name:10s} only: min cosine to fp32 {out[name]:.7f} ({len(feats)} files)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=360, help="utterance length (10 ms frames)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--winograd", action="store_true", help="also time NNPACK's Winograd")
    ap.add_argument("--files", type=int, default=12, help="dev utterances (--winograd)")
    ap.add_argument("--bf16-stages", action="store_true", help="bf16 one stage at a time")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()

    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, fold_batchnorm
    from speakerid.embedding.onnx_backend import export_onnx

    torch.manual_seed(0)
    net = ERes2NetV2().eval()
    convs = conv_macs(fold_batchnorm(copy.deepcopy(net)), args.frames)
    total_macs = sum(c["macs"] for c in convs.values())
    tmp = tempfile.TemporaryDirectory()
    path = export_onnx(net, Path(tmp.name) / "common.onnx")
    times = ort_node_times(path, args.frames, args.rounds)
    macs_of = collections.Counter()
    for c in convs.values():
        macs_of[c["kind"]] += c["macs"]
    per_kind = collections.defaultdict(lambda: [0, 0.0])
    for kind, m in macs_of.items():
        per_kind[kind][0] = m
    for _op, kind, _size, us in times:
        per_kind[kind or "other ops"][1] += us
    peak = max(  # the fastest kind with > 10 % of the work: ~ the core's fp32 peak
        2 * m / per_kind[k][1] / 1e3 for k, m in macs_of.items() if m > 0.1 * total_macs
    )
    total_us = sum(t[-1] for t in times)
    print(
        f"full-width ERes2NetV2, {args.frames} frames: {total_macs / 1e9:.2f} GMAC "
        f"({2 * total_macs / 1e9:.1f} GFLOP); ONNX Runtime, 1 thread: {total_us / 1e3:.1f} ms "
        f"= {2 * total_macs / total_us / 1e3:.1f} GFLOP/s"
    )
    print(f"one core's fp32 peak, as the fastest large kind reaches it: {peak:.1f} GFLOP/s")
    print(f"{'kind':12s} {'GMAC':>7s} {'share':>6s} {'ms':>7s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for kind, (macs, us) in sorted(per_kind.items(), key=lambda kv: -kv[1][1]):
        rate = 2 * macs / us / 1e3 if macs else 0.0
        print(
            f"{kind:12s} {macs / 1e9:7.3f} {macs / total_macs:6.1%} {us / 1e3:7.1f} "
            f"{rate:8.1f} {rate / peak if macs else 0:8.1%}"
        )
    ceiling = (total_us / 1e3) / (2 * total_macs / peak / 1e6)
    print(
        f"the whole network at this peak: {2 * total_macs / peak / 1e6:.1f} ms, "
        f"i.e. at most {ceiling:.2f}x this path for exact direct convolution"
    )
    report = {
        "frames": args.frames,
        "gmac": total_macs / 1e9,
        "ort_ms": total_us / 1e3,
        "peak_gflops": peak,
        "ceiling_vs_ort": ceiling,
        "kinds": {k: {"gmac": v[0] / 1e9, "ms": v[1] / 1e3} for k, v in per_kind.items()},
    }
    if args.winograd:
        shapes = sorted(
            {c["shape"] for c in convs.values() if c["kind"] == "3x3/s1" and c["shape"][0] > 1}
        )
        rows = winograd(shapes, args.rounds)
        ort_ms = collections.defaultdict(list)
        for _op, kind, (cin, height), us in (t for t in times if t[1]):
            if kind == "3x3/s1" and cin > 1:  # ORT pads channels to its block: match on height
                ort_ms[height].append(us / 1e3)
        print("\n3x3 stride-1 shapes (cin, cout, H, T), one thread, ms per convolution:")
        print(
            f"{'shape':22s} {'ORT':>6s} {'torch':>6s} {'Winograd':>9s} {'vs ORT':>7s} "
            f"{'err direct':>11s} {'err Winograd':>13s}"
        )
        for r in rows:
            o = float(np.median(ort_ms[r["shape"][2]]))
            r["ort_ms"] = o
            print(
                f"{str(tuple(r['shape'])):22s} {o:6.2f} {r['direct_ms']:6.2f} "
                f"{r['winograd_ms']:9.2f} {o / r['winograd_ms']:6.2f}x "
                f"{r['direct_err']:11.1e} {r['winograd_err']:13.1e}"
            )
        report["winograd"] = rows
        print()
        report["whole_network"] = whole_network(net, path, args.files, args.rounds)
    tmp.cleanup()
    if args.bf16_stages:
        print()
        report["bf16_stages"] = bf16_stages(30)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
