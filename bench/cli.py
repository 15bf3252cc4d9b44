"""CLI latency: import cost and end-to-end wall time of typical commands, side by side.

Each command runs as a fresh process (what a user or a shell script pays), ``--repeat`` times;
the median is reported. Baselines: a bare ``python -c pass`` and ``import torch, torchaudio``
(the floor any PyTorch tool pays before it can embed anything). Registry commands (``list``,
``show``, ``info``, ``remove``) must not import torch, so they should sit near the Python floor;
``verify`` pays for the model load and one 3 s utterance: by default (ONNX Runtime, cached
export) without torch, and with ``SPEAKERID_BACKEND=torch`` with it, for comparison; and for a
longer claim (4 utterances joined), which the multi-speaker guard checks.

    python bench/cli.py              # test-asset model (../shared), 5 repeats

Commands run with compiled bytecode, as an installed speakerid does (pip compiles it; a
checkout writes ``__pycache__`` on the first run): ``PYTHONDONTWRITEBYTECODE`` is dropped from
their environment, since with it set a checkout recompiles its ~45 modules from source on every
run (~60-90 ms that no installed copy pays). ``--no-bytecode`` keeps it, for comparison.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEV = SHARED / "datasets" / "speechocean762-dev"
ASSET = SHARED / "models" / "eres2netv2-m32-so762.pt"


def timed_interleaved(cases: list, repeat: int) -> dict[str, tuple[float, float]]:
    """Median and min wall seconds of every case, run in ``repeat`` interleaved rounds (after
    a warm-up round): a slow moment of a shared machine then hits every command alike."""
    runs: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for i in range(repeat + 1):
        for label, cmd, env, ok in cases:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True)
            if i:
                runs[label].append(time.perf_counter() - t0)
            if proc.returncode not in ok:
                raise SystemExit(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return {k: (statistics.median(v), min(v)) for k, v in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE (a checkout then compiles speakerid on every run)",
    )
    ap.add_argument(
        "--baseline-src",
        help="another checkout (e.g. `git worktree add /tmp/before REV`): its `verify` is timed "
        "in the same rounds, side by side",
    )
    args = ap.parse_args()
    with open(DEV / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    spk = rows[0]["speaker"]
    mine = [DEV / r["path"] for r in rows if r["speaker"] == spk]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SPEAKERID_HOME=tmp, SPEAKERID_OFFLINE="1")
        if not args.no_bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        sid = [sys.executable, "-m", "speakerid"]
        subprocess.run(
            [*sid, "enroll", "alice", *map(str, mine[:3]), "--model", str(ASSET)],
            env=env,
            check=True,
            capture_output=True,
        )
        claim = str(mine[3])
        # a longer one-voice claim (>= 4 s of speech): the multi-speaker guard checks it
        import numpy as np
        import soundfile as sf

        joined = [sf.read(f, dtype="float32")[0] for f in mine[4:8]]
        long_claim = str(Path(tmp) / "long.wav")
        sf.write(long_claim, np.concatenate(joined), 16000)
        long_label = f"speakerid verify alice {sum(map(len, joined)) / 16000:.0f}s.wav"
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], (0,)),
            (
                "python -c 'import torch, torchaudio'",
                [sys.executable, "-c", "import torch, torchaudio"],
                (0,),
            ),
            ("speakerid --help", [*sid, "--help"], (0,)),
            ("speakerid list", [*sid, "list"], (0,)),
            ("speakerid show alice", [*sid, "show", "alice"], (0,)),
            ("speakerid info", [*sid, "info"], (0,)),
            # the error path: an unknown speaker, exit 2, registry untouched
            ("speakerid remove nobody --yes", [*sid, "remove", "nobody", "--yes"], (2,)),
            # exit 0 accepted / 1 rejected, both are answers
            ("speakerid verify alice 3s.wav", [*sid, "verify", "alice", claim], (0, 1)),
            (long_label, [*sid, "verify", "alice", long_claim], (0, 1)),
            (
                "SPEAKERID_BACKEND=torch speakerid verify ...",
                [*sid, "verify", "alice", claim],
                (0, 1),
            ),
        ]
        if args.baseline_src:
            cases.append(
                (
                    "baseline tree: speakerid verify alice 3s.wav",
                    [*sid, "verify", "alice", claim],
                    (0, 1),
                )
            )
        bytecode = "off" if args.no_bytecode else "on"
        print(f"load average {os.getloadavg()[0]:.2f}, bytecode {bytecode}, interleaved rounds")
        print(f"{'command':48s} {'median s':>9s} {'min s':>7s}")
        runs = []
        for label, cmd, ok in cases:
            run_env = dict(env, SPEAKERID_BACKEND="torch") if label.startswith("SPEAKERID") else env
            if label.startswith("baseline tree"):
                run_env = dict(env, PYTHONPATH=str(Path(args.baseline_src).resolve()))
            runs.append((label, cmd, run_env, ok))
        times = timed_interleaved(runs, args.repeat)
        medians = {label: med for label, (med, _) in times.items()}
        for label, (med, best) in times.items():
            print(f"{label:48s} {med:9.3f} {best:7.3f}")
        torch_s = medians[cases[1][0]]
        ratio = medians["speakerid verify alice 3s.wav"] / torch_s
        print(f"verify / import torch, torchaudio: {ratio:.2f} (goal: below 0.5)")
        if args.baseline_src:
            before = medians["baseline tree: speakerid verify alice 3s.wav"] / torch_s
            print(f"baseline tree's verify / import torch, torchaudio: {before:.2f}")
        probe = (
            f"import sys, runpy; sys.argv = ['speakerid', 'verify', 'alice', {claim!r}]\n"
            "try:\n    runpy.run_module('speakerid', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True
        ).stdout
        print("torch imported by `speakerid verify`:", "yes" if "TORCH True" in out else "no")
        imports = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import speakerid.cli"],
            env=env,
            capture_output=True,
            text=True,
        ).stderr.splitlines()
        heavy = [ln for ln in imports if ln.rstrip().endswith(("| torch", "| torchaudio"))]
        print("torch imported by `import speakerid.cli`:", "yes" if heavy else "no")
    return 0


if __name__ == "__main__":
    sys.exit(main())
