"""Compute threads under CPU contention: time to embed real speech, idle and with busy neighbours.

Why: OpenMP threads wait for each other at every operator, so a 2-thread process whose second
core is taken by another program runs at the pace of its preempted thread. This bench measures
how each thread setting degrades when the machine is shared, to choose ``SPEAKERID_THREADS``'s
default (docs/performance.md, "Threads").

Settings: "N" is N threads as speakerid runs them (GOMP_SPINCOUNT=1000 unless set); "N spin S"
sets GOMP_SPINCOUNT=S (300000 is libgomp's default, what plain torch does); "N passive" sets
OMP_WAIT_POLICY=PASSIVE (threads sleep at once).

Every (setting, load) pair runs in a fresh subprocess (thread pools and OpenMP environment are
fixed at process start): it loads the model, warms up on 2 files, then times
``Embedder.embed_many`` over N real-speech files. "Load" means K busy-loop Python processes
started by the bench before the run and killed after it.

Columns: seconds (the fastest of ``--repeats`` passes in ``--rounds`` runs), files/s, slowdown
vs the same setting idle, and slowdown vs the *fair share*: with K competitors on C cores a
process's fair share is C/(K+1) cores, and the reference is the idle time with that many
threads (at least 1); <= 1.00x means the run got its fair share's worth.
"foreign load" is the CPU (in cores, averaged over the run) used by processes that are not the
bench's: on a shared machine, rows with a high value are disturbed and worth re-running.

    python bench/threads.py                      # 12 files, threads 1 and 2, idle and 1 busy loop
    python bench/threads.py --spin 300000 --passive --rounds 2   # docs/performance.md
    python bench/threads.py --files 24 --load 1 2 --threads 1 2 4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV = ROOT.parent / "shared" / "datasets" / "speechocean762-dev"
ASSET = ROOT.parent / "shared" / "models" / "eres2netv2-m32-so762.pt"
BUSY = "while True:\n    pass\n"


def worker(args: argparse.Namespace) -> None:
    # speakerid before torch, as in real use: importing it bounds OpenMP spinning
    from speakerid.embedding.embedder import Embedder

    with open(DEV / "manifest.csv") as f:
        rows = list(csv.DictReader(f))[: args.files]
    files = [(DEV / r["path"]).read_bytes() for r in rows]
    audio = sum(float(r["duration_s"]) for r in rows)
    emb = Embedder(args.model, backend=args.backend)  # threads from $SPEAKERID_THREADS
    emb.embed_many(files[:2])  # warm-up: oneDNN kernels, allocator
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        emb.embed_many(files)
        times.append(time.perf_counter() - t0)
    import torch  # loaded by speakerid.embedding.embedder

    out = {
        "seconds": min(times),  # the least disturbed repeat: others share this machine too
        "times": times,
        "n": len(files),
        "audio": audio,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_one(args, threads: int, load: int, env_extra: dict[str, str]) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        env.pop(name, None)  # the setting under test decides (speakerid sets its own in-process)
    env.update(env_extra, SPEAKERID_THREADS=str(threads))
    env.setdefault("SPEAKERID_HOME", args.home)
    before = busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0.0)  # let the competitors get scheduled
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                "--files",
                str(args.files),
                "--model",
                str(args.model),
                "--backend",
                args.backend,
                "--repeats",
                str(args.repeats),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # CPU used by processes that are not ours (other users of a shared machine), in cores
    (busy0, _), ru0, t0 = before
    busy1, _ = busy_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    hz = os.sysconf("SC_CLK_TCK")
    out["foreign"] = max(0.0, ((busy1 - busy0) / hz - ours) / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--load", type=int, nargs="*", default=[1], help="busy competitors to add")
    ap.add_argument("--passive", action="store_true", help="also OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--spin", type=int, nargs="*", default=[], help="also GOMP_SPINCOUNT=N")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--model", type=Path, default=ASSET)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per run (min is kept)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per setting (min is kept)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.model.is_file() or not DEV.is_dir():
        raise SystemExit(f"needs {args.model} and {DEV}")
    args.home = tempfile.mkdtemp(prefix="speakerid-threads-")
    from speakerid.config import available_cores

    cores = available_cores()
    settings: list[tuple[str, int, dict[str, str]]] = [(f"{t}", t, {}) for t in args.threads]
    for spin in args.spin:  # libgomp: busy-wait this many iterations at a barrier, then sleep
        settings += [
            (f"{t} spin {spin}", t, {"GOMP_SPINCOUNT": str(spin)}) for t in args.threads if t > 1
        ]
    if args.passive:
        settings += [
            (f"{t} passive", t, {"OMP_WAIT_POLICY": "PASSIVE"}) for t in args.threads if t > 1
        ]
    loads = [0, *args.load]
    print(
        f"{args.files} files, backend {args.backend}, {cores} cores, "
        f"loadavg before {os.getloadavg()[0]:.2f}"
    )
    results: dict[tuple[str, int], dict] = {}
    for _ in range(args.rounds):  # interleaved, so a burst of foreign load hits one round only
        for load in loads:
            for label, t, extra in settings:
                r = run_one(args, t, load, extra)
                best = results.get((label, load))
                if best is None or r["seconds"] < best["seconds"]:
                    results[label, load] = r
    print(
        f"{'threads':<14} {'competitors':>11} {'seconds':>8} {'files/s':>8} "
        f"{'vs idle':>8} {'vs fair share':>13} {'foreign load':>12}"
    )
    for load in loads:
        fair = max(1, int(cores / (load + 1)))
        ref_label = str(max((t for t in args.threads if t <= fair), default=min(args.threads)))
        ref = results[ref_label, 0]["seconds"]
        for label, _t, _extra in settings:
            r = results[label, load]
            idle = results[label, 0]["seconds"]
            print(
                f"{label:<14} {load:>11} {r['seconds']:8.2f} {r['n'] / r['seconds']:8.2f} "
                f"{r['seconds'] / idle:7.2f}x {r['seconds'] / ref:12.2f}x {r['foreign']:12.2f}"
            )


if __name__ == "__main__":
    main()
