"""What one read request costs the server at N enrolled speakers, before and after bounding it.

Three things a ``read`` key can ask for, each timed in-process on the library call the route
makes, with the old behaviour emulated side by side in the same process and registry:

- ``404``: an unknown name's "did you mean" (``SpeakerID.show`` of a typo). Baseline: the old
  rule, difflib over up to 50k names (``SUGGEST_SCAN_MAX = 50_000``); now: 2,000 names at
  most, else the 50 names on each side of the name and its case variants (index range scans).
- ``asnorm``: ``identify_embeddings(asnorm=True)`` of one probe. Baseline: the cohort read from
  the database for every request (the cache cleared before each call); now: once per
  registry generation.
- ``list``: ``GET /v1/speakers``. Baseline: every speaker (``SpeakerID.list()``); now: one
  page of the default 1,000 (first page, and a page deep in the list).

    python bench/read_bounds.py                    # 50k speakers, SQLite
    python bench/read_bounds.py --speakers 200000
    python bench/read_bounds.py --db postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speakerid.errors import SpeakerNotFoundError  # noqa: E402
from speakerid.registry import store  # noqa: E402
from speakerid.service.facade import SpeakerID  # noqa: E402


def timed(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--db", help="registry URL (default: a SQLite file in a temporary folder)")
    args = ap.parse_args()
    n = args.speakers
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((n, 192)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        names = [f"speaker-{i:07d}" for i in range(n)]
        with SpeakerID(db=db, model="demo") as sid:
            t0 = time.perf_counter()
            sid.import_embeddings(names, vecs)
            took = time.perf_counter() - t0
            print(f"{n} speakers imported in {took:.1f} s ({sid.info().backend})")
            sid.registry.ensure_index()

            hints = []

            def missing() -> None:
                try:
                    sid.show("speaker-001234")  # a digit left out
                except SpeakerNotFoundError as exc:
                    hints.append(str(exc).split("(", 1)[-1])
                    return
                raise AssertionError("found")

            rows = []
            new_404 = timed(missing, args.runs)
            store.SUGGEST_SCAN_MAX, kept = 50_000, store.SUGGEST_SCAN_MAX
            old_404 = timed(missing, args.runs)
            store.SUGGEST_SCAN_MAX = kept
            print(f"hint now: ({hints[0]}\nhint before: ({hints[-1]}")
            rows.append(("404 did-you-mean", old_404, new_404))

            probe = vecs[123:124]

            def asnorm() -> None:
                sid.identify_embeddings(probe, threshold=0.0, asnorm=True)

            asnorm()  # warm: the index and the cohort
            new_as = timed(asnorm, args.runs)

            def asnorm_uncached() -> None:
                sid.registry._cohort.clear()
                asnorm()

            old_as = timed(asnorm_uncached, args.runs)
            rows.append(("identify asnorm=true", old_as, new_as))

            old_list = timed(lambda: sid.list(), max(3, args.runs // 3))
            first = timed(lambda: sid.list(limit=1001), args.runs)
            deep = timed(lambda: sid.list(limit=1001, after=names[n * 4 // 5]), args.runs)
            rows.append(("GET /v1/speakers (first page)", old_list, first))
            rows.append(("GET /v1/speakers (page at 80%)", old_list, deep))
    print(f"\nmedian ms per request, {n} speakers ({args.runs} runs)")
    print(f"{'request':32s} {'before':>10s} {'after':>10s}")
    for what, old, new in rows:
        print(f"{what:32s} {old:10.1f} {new:10.1f}")


if __name__ == "__main__":
    main()
