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
    python bench/search.py --sizes 100000 --db postgresql+psycopg://postgres@127.0.0.1/postgres

With ``--db URL`` (a PostgreSQL server; its database is only used to create and drop a fresh
``speakerid_bench_*`` database per size) every size runs on SQLite and on PostgreSQL, and a
second table reports what matters for replicas on each backend:
  - sync lag: replica A enrolls, replica B (its own index) identifies the new speaker at once;
    the time of B's call (it applies A's change first) is the commit-to-searchable lag;
  - write throughput with 1 and 3 writer processes (one speaker per transaction);
  - cold start of a replica: first identify with the local index cache file, and without one
    (a new machine: the index is rebuilt from the database).
``--vacuum`` runs ``VACUUM (ANALYZE)`` on the PostgreSQL database after the bulk import, before
measuring (as after any bulk load; otherwise autovacuum works beside the measurements).
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

from speakerid.service.facade import SpeakerID  # noqa: E402

DIM = 192


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_model(tmp: Path) -> Path:
    """A small random ERes2NetV2 checkpoint to bind the registry to (weights are irrelevant)."""
    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    torch.manual_seed(0)
    path = tmp / "bench-model.pt"
    torch.save(ERes2NetV2(ERes2NetV2Config(m_channels=8)).state_dict(), path)
    return path


def run_size(
    n: int,
    probes: int,
    tmp: Path,
    model: Path,
    kind: str = "auto",
    db: str | None = None,
    baselines: dict | None = None,
    vacuum: bool = False,
) -> dict:
    rng = np.random.default_rng(n)
    vecs = unit(rng.standard_normal((n, DIM)).astype(np.float32))
    np.save(tmp / "m.npy", vecs)
    (tmp / "names.txt").write_text("".join(f"spk{i:07d}\n" for i in range(n)))
    db = db or str(tmp / f"reg-{n}.db")
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
    vacuum_s = None
    if vacuum and db.startswith("postgresql"):  # what an operator runs after a bulk load
        t0 = time.perf_counter()
        _pg_admin(db, "VACUUM (ANALYZE)")
        vacuum_s = time.perf_counter() - t0
    targets = rng.integers(0, n, probes)
    q = unit(vecs[targets] + 1.3 * unit(rng.standard_normal((probes, DIM))))
    with SpeakerID(db=db, index_kind=kind) as sid:
        t0 = time.perf_counter()
        kind = sid.registry.ensure_index().kind  # load (not rebuild: import saved it)
        backend = sid.registry.backend
        load_s = time.perf_counter() - t0
        sid.identify_embeddings(q[:5])  # warm-up
        lat, answers = [], []
        for i in range(probes):
            t = time.perf_counter()
            r = sid.identify_embeddings(q[i])[0]
            lat.append(time.perf_counter() - t)
            answers.append(int(r.candidates[0].speaker[3:]))
    # the data and probes depend on n only: the brute-force baseline is measured once per size
    # and shared by the backends (at 1M it costs ~0.1 s a probe)
    baselines = {} if baselines is None else baselines
    if (n, probes) not in baselines:
        base_lat, exact = [], []
        for i in range(probes):
            t = time.perf_counter()
            exact.append(int(np.argmax(vecs @ q[i])))
            base_lat.append(time.perf_counter() - t)
        baselines[(n, probes)] = (base_lat, exact)
    base_lat, exact = baselines[(n, probes)]
    recall = float(np.mean(np.array(answers) == np.array(exact)))
    true_hit = float(np.mean(np.array(exact) == targets))
    return {
        "n": n,
        "db": db,
        "backend": backend,
        "kind": kind,
        "import_s": import_s,
        "vacuum_s": vacuum_s,
        "load_s": load_s,
        "p50_ms": 1e3 * np.percentile(lat, 50),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "base_p50_ms": 1e3 * np.percentile(base_lat, 50),
        "base_p99_ms": 1e3 * np.percentile(base_lat, 99),
        "recall": recall,
        "exact_is_target": true_hit,
    }


WRITER = """
import sys, time, numpy as np
from speakerid.service.facade import SpeakerID
db, tag, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rng = np.random.default_rng(abs(hash(tag)) % 2**32)
n = 0
with SpeakerID(db=db) as sid:
    sid.registry.ensure_index()
    print("ready", flush=True)
    sys.stdin.readline()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sid.import_embeddings([f"w{tag}-{n}"], rng.standard_normal((1, 192)).astype(np.float32))
        n += 1
print(n, flush=True)
"""


def write_throughput(db: str, writers: int, seconds: float) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db, f"{writers}-{k}", str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(writers)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # start together
        p.stdin.write("go\n")
        p.stdin.flush()
    total = sum(int(p.communicate()[0].split()[-1]) for p in procs)
    return total / seconds


def run_replicas(db: str, n: int, seconds: float, lag_probes: int = 100) -> dict:
    """Sync lag, write throughput (1 and 3 writers) and cold start on one backend."""
    rng = np.random.default_rng(n + 1)
    lags = []
    with SpeakerID(db=db) as a, SpeakerID(db=db) as b:
        b.identify_embeddings(unit(rng.standard_normal((1, DIM))))  # B warm
        for i in range(lag_probes):
            v = unit(rng.standard_normal((1, DIM)).astype(np.float32))
            a.import_embeddings([f"lag{i}"], v)  # committed when it returns
            t = time.perf_counter()
            assert b.identify_embeddings(v)[0].speaker == f"lag{i}"
            lags.append(time.perf_counter() - t)
    w1 = write_throughput(db, 1, seconds)
    w3 = write_throughput(db, 3, seconds)
    q = unit(rng.standard_normal((1, DIM)).astype(np.float32))
    with SpeakerID(db=db) as sid:  # a replica starting with its cache file
        t = time.perf_counter()
        sid.identify_embeddings(q)
        warm_start = time.perf_counter() - t
        cache = sid.registry.index_path
    aside = cache.with_name(cache.name + ".aside")
    cache.rename(aside)
    try:
        with SpeakerID(db=db) as sid:  # a new machine: no cache, rebuilt from the database
            t = time.perf_counter()
            sid.identify_embeddings(q)
            cold_start = time.perf_counter() - t
    finally:
        aside.replace(cache)
    return {
        "lag_p50_ms": 1e3 * np.percentile(lags, 50),
        "lag_p99_ms": 1e3 * np.percentile(lags, 99),
        "writes1": w1,
        "writes3": w3,
        "start_cache_s": warm_start,
        "start_rebuild_s": cold_start,
    }


def _pg_admin(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(sql)


def _pg_database(server: str, n: int) -> str:
    from sqlalchemy.engine import make_url

    name = f"speakerid_bench_{n}_{os.getpid()}"
    _pg_admin(server, f'DROP DATABASE IF EXISTS "{name}"')
    _pg_admin(server, f'CREATE DATABASE "{name}"')
    url = make_url(server).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "pq", "hnsw"])
    ap.add_argument("--db", help="PostgreSQL server URL: also run every size on PostgreSQL")
    ap.add_argument("--replica-seconds", type=float, default=5.0, help="per write-rate run")
    ap.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM (ANALYZE) a PostgreSQL database after the bulk import, before measuring "
        "(else the measurements share the machine with autovacuum and the first reads' hint "
        "bits)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="speakerid-bench-"))
    os.environ["SPEAKERID_HOME"] = str(tmp / "home")  # index caches of server databases
    try:
        model = make_model(tmp)
        print(
            f"{'backend':>10} {'speakers':>9} {'index':>5} {'import s':>9} {'load s':>7} | "
            f"{'speakerid p50/p99 ms':>21} | {'numpy brute p50/p99 ms':>23} | "
            f"{'recall@1':>8} {'exact=target':>12}",
            flush=True,
        )
        replicas, baselines = [], {}
        for n in args.sizes:
            targets = [None] + ([_pg_database(args.db, n)] if args.db else [])
            for db in targets:
                r = run_size(n, args.probes, tmp, model, args.index, db, baselines, args.vacuum)
                print(
                    f"{r['backend']:>10} {r['n']:>9} {r['kind']:>5} {r['import_s']:>9.1f} "
                    f"{r['load_s']:>7.2f} | {r['p50_ms']:>10.3f} / {r['p99_ms']:>8.3f} | "
                    f"{r['base_p50_ms']:>11.3f} / {r['base_p99_ms']:>9.3f} | "
                    f"{r['recall']:>8.4f} {r['exact_is_target']:>12.4f}",
                    flush=True,
                )
                if r["vacuum_s"] is not None:
                    print(f"{'':>10} (VACUUM ANALYZE after the import: {r['vacuum_s']:.1f} s)")
                if args.db:
                    replicas.append((r, run_replicas(r["db"], n, args.replica_seconds)))
                if db:
                    _pg_admin(args.db, f'DROP DATABASE IF EXISTS "{db.rsplit("/", 1)[-1]}"')
                for f in tmp.glob(f"reg-{n}.db*"):
                    f.unlink()
        if replicas:
            print(
                f"\n{'backend':>10} {'speakers':>9} | {'sync lag p50/p99 ms':>20} | "
                f"{'writes/s 1 / 3 writers':>22} | {'start: cache / rebuild s':>24}"
            )
            for r, x in replicas:
                print(
                    f"{r['backend']:>10} {r['n']:>9} | {x['lag_p50_ms']:>9.2f} / "
                    f"{x['lag_p99_ms']:>8.2f} | {x['writes1']:>10.1f} / {x['writes3']:>9.1f} | "
                    f"{x['start_cache_s']:>11.2f} / {x['start_rebuild_s']:>10.2f}"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
