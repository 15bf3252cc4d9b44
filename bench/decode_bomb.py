"""A decode bomb, before and after the decode limit: time and peak RSS, side by side.

The file of issue 20: 3 hours of quiet noise as WebM/Opus at 6 kbit/s (about 8 MB), written
live, so that nothing in it tells its length. Each case runs in a fresh process; its wall time
and peak RSS (``ru_maxrss`` of that process) are reported, next to a process that only imports
the same modules (the floor).

- baseline: ``load_audio`` of the commit before the limit (``--baseline-rev``), loaded from git
  and called directly: the unbounded decode every route and command ran;
- now, server: ``load_audio`` under ``--max-audio-seconds 300`` (the server's default limit),
  and ``stream_audio`` under the same limit (``/v1/track``'s pre-check);
- now, CLI: ``load_audio`` under the default whole-file limit (3600 s); with ``--allowed``
  also a file just under it, decoded whole (what the default lets one file cost);
- now, end to end: the file posted twice to ``POST /v1/compare`` of a real ``speakerid serve``
  (demo model), its time and the growth of the server's peak RSS (VmHWM), as the issue measured
  (216 s and 8.1 GB before).

    flock /tmp/heavy.lock python bench/decode_bomb.py            # 3 h, as in the issue
    python bench/decode_bomb.py --hours 1 --no-server
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The last commit whose ``load_audio`` decoded a file whole, without a limit.
BASELINE_REV = "792a5ef"

FLOOR = "import speakerid.audio.decode, speakerid.audio.stream, av, soundfile"

BASELINE = """
import importlib.util, subprocess, sys, speakerid
src = subprocess.run(["git", "-C", ROOT, "show", REV + ":speakerid/audio.py"],
                     capture_output=True, text=True, check=True).stdout
spec = importlib.util.spec_from_loader("speakerid._audio_baseline", loader=None)
old = importlib.util.module_from_spec(spec)
old.__package__ = "speakerid"
sys.modules[spec.name] = old
import speakerid.audio.resample  # the old module's sibling before the layout move
sys.modules.setdefault("speakerid.resample", speakerid.audio.resample)
exec(compile(src, "baseline audio.py", "exec"), old.__dict__)
clip = old.load_audio(PATH)
print(f"decoded {clip.duration:.0f} s")
"""

NOW = """
from speakerid.audio import decode as audio
from speakerid.server.limits import audio_limit
if LIMIT:
    audio.set_decode_limit(audio_limit(LIMIT))
try:
    if STREAM:
        from speakerid.audio.stream import stream_audio
        for _ in stream_audio(PATH):
            pass
    else:
        audio.load_audio(PATH)
    print("decoded whole")
except Exception as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def measure(code: str, **values: object) -> tuple[float, float, str]:
    """Seconds (after the imports) and peak RSS (MiB) of ``code`` in a fresh process, and the
    line it printed last."""
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    prog = (
        f"import resource, time\n{FLOOR}\n{head}_t = time.perf_counter()\n{code}\n"
        "print(f'@@ {time.perf_counter() - _t:.2f} "
        "{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}')"
    )
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"case failed:\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    took, rss = lines[-1].split()[1:]
    return float(took), float(rss), lines[-2] if len(lines) > 1 else ""


def server_case(path: Path, work: Path) -> tuple[float, float, str]:
    """The file posted twice to /v1/compare of a real server (limit 300 s): total seconds,
    growth of the server's VmHWM over its RSS before the requests (MiB), the answer."""
    import httpx

    from tests.serverkit import Server

    def status(pid: int) -> dict[str, float]:
        rows = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {
            k: int(v.split()[0]) / 1024
            for k, _, v in (r.partition(":") for r in rows)
            if k in ("VmRSS", "VmHWM")
        }

    data = path.read_bytes()
    with Server(work, "--max-audio-seconds", "300") as srv:
        pid = srv.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = status(pid)["VmRSS"]
        start = time.perf_counter()
        with httpx.Client(base_url=srv.url, timeout=3600) as http:
            for _ in range(2):
                files = [("file1", (path.name, data)), ("file2", (path.name, data))]
                r = http.post("/v1/compare", files=files)
        took = time.perf_counter() - start
        grew = status(pid)["VmHWM"] - before
    return took, grew, f"{r.status_code} {r.json().get('detail', r.text)[:90]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=3.0, help="length of the bomb (default 3)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--no-baseline", action="store_true", help="skip the unbounded decode")
    ap.add_argument("--no-server", action="store_true", help="skip the end-to-end server case")
    ap.add_argument(
        "--allowed", action="store_true", help="also a 59:50 file the CLI's default accepts"
    )
    args = ap.parse_args()

    from tests.test_decode_limits import long_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.webm"
        t = time.perf_counter()
        path.write_bytes(long_audio("webm", args.hours * 3600))
        print(
            f"bomb: {args.hours:g} h of WebM/Opus 6 kbit/s, {path.stat().st_size / 1e6:.1f} MB, "
            f"no duration in it (written in {time.perf_counter() - t:.1f} s)\n"
        )
        p = str(path)
        cases = [("floor (imports only)", "pass", {})]
        if not args.no_baseline:
            cases.append(
                (
                    f"baseline load_audio ({args.baseline_rev}, no limit)",
                    BASELINE,
                    dict(ROOT=str(ROOT), REV=args.baseline_rev, PATH=p),
                )
            )
        cases += [
            ("now load_audio, server limit 300 s", NOW, dict(LIMIT=300.0, STREAM=False, PATH=p)),
            ("now stream_audio, server limit 300 s", NOW, dict(LIMIT=300.0, STREAM=True, PATH=p)),
            ("now load_audio, CLI default 3600 s", NOW, dict(LIMIT=0, STREAM=False, PATH=p)),
        ]
        if args.allowed:  # what the CLI's default limit lets one file cost
            ok = Path(tmp) / "hour.webm"
            ok.write_bytes(long_audio("webm", 3590))
            cases.append(
                (
                    "now load_audio, CLI default, 3590 s file",
                    NOW,
                    dict(LIMIT=0, STREAM=False, PATH=str(ok)),
                )
            )
        print(f"{'case':44} {'seconds':>8} {'peak RSS MiB':>13}  result")
        for label, code, values in cases:
            took, rss, said = measure(code, **values)
            print(f"{label:44} {took:8.2f} {rss:13.0f}  {said[:110]}", flush=True)
        if not args.no_server:
            took, grew, said = server_case(path, Path(tmp))
            print(
                f"\nserver, POST /v1/compare twice (both files the bomb), limit 300 s: "
                f"{took:.2f} s, peak RSS +{grew:.0f} MiB over its RSS before, answer {said}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
