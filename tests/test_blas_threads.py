"""``import speakerid`` keeps numpy's OpenBLAS to one thread (its idle threads busy-wait after
every small product: 2-3x the CPU of an embedding; docs/performance.md), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "import os, speakerid, numpy; print(os.environ.get('OPENBLAS_NUM_THREADS'))"


def run(**env: str) -> str:
    base = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", CODE], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_openblas_gets_one_thread_by_default():
    assert run() == "1"


def test_the_users_choice_wins():
    assert run(OPENBLAS_NUM_THREADS="3") == "3"
    assert run(OMP_NUM_THREADS="2") == "None"  # OpenBLAS reads OMP_NUM_THREADS itself


def test_numpy_really_runs_openblas_on_one_thread():
    """The setting reaches the library: threadpoolctl asks OpenBLAS itself."""
    code = (
        "import speakerid, numpy, json\n"
        "from threadpoolctl import threadpool_info\n"
        "print(json.dumps([p['num_threads'] for p in threadpool_info()"
        " if p['internal_api'] == 'openblas']))\n"
    )
    base = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1]"
