"""CPU cost of one embedding with numpy's OpenBLAS at its default thread count (one per core,
busy-waiting after each product) vs one thread (what ``import speakerid`` now sets), side by
side: wall and CPU milliseconds per 2 s clip, back to back and with 0.2 s gaps (as a live stream
embeds: a partial every 0.5 s), in fresh processes, one compute thread.

    python bench/blas_spin.py [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT.parent / "shared" / "models" / "eres2netv2-m32-so762.pt"

CHILD = r"""
import json, sys, time
import speakerid
import numpy as np
from speakerid.audio.decode import AudioClip
from speakerid.embedding.embedder import Embedder

e = Embedder(sys.argv[1])
rng = np.random.default_rng(0)
clip = AudioClip((0.1 * rng.standard_normal(32000)).astype(np.float32), "x", 16000, 1, "")
for _ in range(3):
    e.embed_clips([clip])
out = {}
for label, gap in (("back to back", 0.0), ("0.2 s gaps", 0.2)):
    wall = cpu = 0.0
    for _ in range(20):
        t, p = time.perf_counter(), time.process_time()
        e.embed_clips([clip])
        if gap:
            time.sleep(gap)
        wall += time.perf_counter() - t - gap
        cpu += time.process_time() - p
    out[label] = {"wall_ms": round(wall / 20 * 1000, 1), "cpu_ms": round(cpu / 20 * 1000, 1)}
print(json.dumps(out))
"""


def run(model: Path, blas: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    env["SPEAKERID_THREADS"] = "1"
    env.pop("OPENBLAS_NUM_THREADS", None)
    if blas is not None:
        env["OPENBLAS_NUM_THREADS"] = blas
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ASSET)
    args = ap.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    rows = {
        f"OpenBLAS default ({cores} threads, before)": run(args.model, cores),
        "OPENBLAS_NUM_THREADS=1 (import speakerid, after)": run(args.model, None),
    }
    print(f"{'':50s} {'back to back':>22s} {'with 0.2 s gaps':>22s}")
    for name, r in rows.items():
        cells = [f"{r[k]['wall_ms']:6.1f} wall {r[k]['cpu_ms']:6.1f} cpu" for k in r]
        print(f"{name:50s} {cells[0]:>22s} {cells[1]:>22s}")
    print(
        f"(ms per 2 s clip, {args.model.name}, SPEAKERID_THREADS=1, load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
