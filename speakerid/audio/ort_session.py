"""ONNX Runtime sessions that start fast: the optimized graph is cached.

Why: creating a session optimizes the graph every time (fusions, this CPU's blocked NCHWc
layout, constant folding): ~75 ms of a one-shot ``verify`` for the m32 model and ~23 ms for the
Silero VAD, on an idle 2-core machine. ONNX Runtime can save the graph it optimized; loading
that copy with the optimizer off takes ~43 / ~11 ms and computes the same (bit-identical
outputs, tested). The optimized graph holds layouts chosen for this CPU and this onnxruntime,
so its file name carries two keys: the source file (name, size, mtime) and the runtime (the
onnxruntime version and a fingerprint of the CPU). A copy made from an older export is never used
and is removed when a new one is written; copies for other CPUs or versions of the same export
are kept, so machines sharing one cache folder (a fleet on NFS) do not delete each other's copy
on every start. A copy that cannot be read is ignored (and rewritten); a cache folder that cannot
be written only costs the optimization time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger("speakerid")


@functools.lru_cache(maxsize=1)
def cpu_fingerprint() -> str:
    """The CPU model and its feature flags (what ONNX Runtime's kernels and layouts follow)."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{text}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def optimized_path(source: Path, folder: Path) -> Path:
    """Where the optimized copy of ``source`` for this onnxruntime and CPU is kept:
    ``<stem>.ort-<source key>-<runtime key>.onnx``. The source key leaves the folder out, so
    one shared cache mounted at different paths still agrees."""
    import onnxruntime as ort

    st = source.stat()
    made_from = _digest(source.name, st.st_size, st.st_mtime_ns)
    runtime = _digest(ort.__version__, cpu_fingerprint())
    return folder / f"{source.stem}.ort-{made_from}-{runtime}.onnx"


def open_session(path: str | os.PathLike, threads: int, cache: Path | None = None) -> Any:
    """A CPU ``InferenceSession`` of ``path`` with ``threads`` intra-op threads, fully
    optimized; with ``cache`` (a folder), the optimized graph is loaded from / saved there.

    Raises onnxruntime's own exceptions for a file it cannot load (callers wrap them)."""
    import onnxruntime as ort

    def options(level: Any) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = level
        opts.log_severity_level = 3
        return opts

    source = Path(path)
    cpu = ["CPUExecutionProvider"]
    fast = None
    if cache is not None:
        try:
            fast = optimized_path(source, cache)
        except OSError:
            fast = None
    if fast is not None and fast.is_file():
        try:
            return ort.InferenceSession(
                str(fast), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=cpu
            )
        except Exception as exc:  # a damaged copy: optimize the source again
            log.debug("cannot load %s (%s); optimizing %s again", fast, exc, source)
    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if fast is None:
        return ort.InferenceSession(str(source), options(full), providers=cpu)
    tmp = fast.with_name(f".{fast.stem}.{os.getpid()}.tmp.onnx")
    opts = options(full)
    opts.optimized_model_filepath = str(tmp)
    try:
        fast.parent.mkdir(parents=True, exist_ok=True)
        session = ort.InferenceSession(str(source), opts, providers=cpu)
    except Exception:  # a cache folder that cannot be written (or a bad source: raises below)
        _discard(tmp)
        return ort.InferenceSession(str(source), options(full), providers=cpu)
    try:
        if tmp.is_file():
            os.replace(tmp, fast)
            current = fast.name.split(".ort-")[1].split("-")[0]
            for old in fast.parent.glob(f"{source.stem}.ort-*.onnx"):
                if old.name.split(".ort-")[1].split("-")[0] != current:  # an older export's
                    old.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot keep the optimized graph of %s (%s)", source, exc)
    finally:
        _discard(tmp)
    return session


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. its folder is not a folder
        pass
