"""Identify latency and recall@1 at 10k / 100k / 1M enrolled speakers vs brute-force numpy.

Synthetic unit vectors (192-d) are enrolled through ``speakerid import-embeddings`` (matrix +
names file). Probes are noisy copies of random enrolled voiceprints (cosine ~0.6 to their
speaker, like real same-speaker trials). For each probe we time
  - speakerid: ``SpeakerID.identify_embeddings`` (index search + exact re-scoring in SQLite),
  - baseline: brute-force numpy (``voiceprints @ q``, argmax) over all voiceprints in memory,
and report p50/p99 latency and recall@1 of speakerid's answer against the exact top-1.

    python bench/search.py                 # 10k, 100k, 1M
    python bench/search.py --sizes 10000   # one size
    python bench/search.py --index hnsw    # force an index kind (auto: flat < 100k <= pq)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speakerid.service import SpeakerID  # noqa: E402

DIM = 192


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_model(tmp: Path) -> Path:
    """A small random ERes2NetV2 checkpoint to bind the registry to (weights are irrelevant)."""
    import torch

    from speakerid.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    torch.manual_seed(0)
    path = tmp / "bench-model.pt"
    torch.save(ERes2NetV2(ERes2NetV2Config(m_channels=8)).state_dict(), path)
    return path


def run_size(n: int, probes: int, tmp: Path, model: Path, kind: str = "auto") -> dict:
    rng = np.random.default_rng(n)
    vecs = unit(rng.standard_normal((n, DIM)).astype(np.float32))
    np.save(tmp / "m.npy", vecs)
    (tmp / "names.txt").write_text("".join(f"spk{i:07d}\n" for i in range(n)))
    db = tmp / f"reg-{n}.db"
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "speakerid",
            "import-embeddings",
            str(tmp / "m.npy"),
            "--names",
            str(tmp / "names.txt"),
            "--db",
            str(db),
            "--model",
            str(model),
            "--json",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "SPEAKERID_INDEX": kind},
    )
    import_s = time.perf_counter() - t0
    targets = rng.integers(0, n, probes)
    q = unit(vecs[targets] + 1.3 * unit(rng.standard_normal((probes, DIM))))
    with SpeakerID(db=db, index_kind=kind) as sid:
        t0 = time.perf_counter()
        kind = sid.registry.ensure_index().kind  # load (not rebuild: import saved it)
        load_s = time.perf_counter() - t0
        sid.identify_embeddings(q[:5])  # warm-up
        lat, answers = [], []
        for i in range(probes):
            t = time.perf_counter()
            r = sid.identify_embeddings(q[i])[0]
            lat.append(time.perf_counter() - t)
            answers.append(int(r.candidates[0].speaker[3:]))
    base_lat, exact = [], []
    for i in range(probes):
        t = time.perf_counter()
        exact.append(int(np.argmax(vecs @ q[i])))
        base_lat.append(time.perf_counter() - t)
    recall = float(np.mean(np.array(answers) == np.array(exact)))
    true_hit = float(np.mean(np.array(exact) == targets))
    return {
        "n": n,
        "kind": kind,
        "import_s": import_s,
        "load_s": load_s,
        "p50_ms": 1e3 * np.percentile(lat, 50),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "base_p50_ms": 1e3 * np.percentile(base_lat, 50),
        "base_p99_ms": 1e3 * np.percentile(base_lat, 99),
        "recall": recall,
        "exact_is_target": true_hit,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "pq", "hnsw"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="speakerid-bench-"))
    try:
        model = make_model(tmp)
        print(
            f"{'speakers':>9} {'index':>5} {'import s':>9} {'load s':>7} | "
            f"{'speakerid p50/p99 ms':>21} | {'numpy brute p50/p99 ms':>23} | "
            f"{'recall@1':>8} {'exact=target':>12}",
            flush=True,
        )
        for n in args.sizes:
            r = run_size(n, args.probes, tmp, model, args.index)
            print(
                f"{r['n']:>9} {r['kind']:>5} {r['import_s']:>9.1f} {r['load_s']:>7.2f} | "
                f"{r['p50_ms']:>10.3f} / {r['p99_ms']:>8.3f} | "
                f"{r['base_p50_ms']:>11.3f} / {r['base_p99_ms']:>9.3f} | "
                f"{r['recall']:>8.4f} {r['exact_is_target']:>12.4f}",
                flush=True,
            )
            for f in tmp.glob(f"reg-{n}.db*"):
                f.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
