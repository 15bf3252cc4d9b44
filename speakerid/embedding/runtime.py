"""Where and how the network runs: device, compute threads, backend and numerics.

The embedder asks this module; so does training (device, threads). Only ``torch`` or
``onnxruntime`` questions that a choice needs are imported, and only when needed, so the
ONNX Runtime path stays torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..config import (
    default_backend,
    default_compile,
    default_device,
    default_precision,
    default_threads,
    parse_threads,
)
from ..errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("speakerid")


def resolve_device(device: str | None) -> torch.device:
    import torch

    name = (device or default_device()).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested (--device cuda) but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None


def apply_threads(threads: int | None = None) -> int:
    """Set this process's torch compute threads (the one place that does) and return the count.

    ``None`` means ``$SPEAKERID_THREADS`` or the automatic choice (every core, at most 4).
    Applied before the model loads so no work runs with another count; OpenMP threads wait for
    each other at every operator, which is why their count and spinning matter when the CPU is
    shared (docs/performance.md, "Threads").
    """
    import torch

    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only settable once, before any inter-op work: keep the first
            log.debug("torch inter-op threads stay at %d", torch.get_num_interop_threads())
    log.debug("torch threads: %d intra-op, %d inter-op", n, torch.get_num_interop_threads())
    return n


def resolve_threads(threads: int | None = None) -> int:
    """The compute thread count (``None``: ``$SPEAKERID_THREADS`` or the automatic choice);
    no torch import, so the ONNX Runtime path stays torch-free."""
    return default_threads() if threads is None else parse_threads(threads)


def device_name(device: str | None) -> str:
    """The device as a string (``cpu``, ``cuda:0``...); torch is imported only for others."""
    name = (device or default_device()).lower()
    return name if name == "cpu" else str(resolve_device(name))


def choose_backend(requested: str, on_cpu: bool) -> str:
    """``torch`` or ``onnx`` for a requested backend (``auto``: ONNX Runtime on CPU when
    onnxruntime is installed, else PyTorch). An explicit ``onnx`` off the CPU is an error."""
    if requested == "onnx" and not on_cpu:
        raise DeviceError("the onnx backend runs on CPU only (use --device cpu)")
    if requested != "auto":
        return requested
    if not on_cpu:
        return "torch"  # CUDA: PyTorch (batched, on the device)
    from .onnx_backend import runtime_available

    if runtime_available():
        return "onnx"
    log.warning("onnxruntime is not installed: using the slower PyTorch backend")
    return "torch"


def route_backend(requested: str, precision: str, compile: bool, on_cpu: bool) -> str:
    """The backend a precision or ``torch.compile`` implies (``auto`` resolved to it), or a
    one-line error where they cannot run: int8 is ONNX Runtime on CPU; tf32 and compile are
    PyTorch on CUDA; bf16 is PyTorch (autocast) on either."""
    if precision == "int8":
        requested = "onnx" if requested == "auto" and on_cpu else requested
        if requested != "onnx":
            raise DeviceError("precision int8 runs on the onnx backend only (CPU)")
        if compile:
            raise DeviceError("--compile applies to the torch backend, not to precision int8")
        return requested
    needs_cuda = "precision tf32" if precision == "tf32" else "--compile" if compile else None
    if needs_cuda and on_cpu:
        raise DeviceError(f"{needs_cuda} needs a CUDA device (--device cuda)")
    if precision == "bf16" and requested != "onnx":
        check_cpu_bf16() if on_cpu else check_cuda_bf16()
    if precision != "fp32" or compile:
        if requested == "onnx":
            what = "--compile" if compile else f"precision {precision}"
            raise DeviceError(f"{what} runs on the torch backend only, not onnx")
        return "torch"
    return requested


#: oneDNN's bfloat16 convolutions (PyTorch's CPU autocast path) need either of these x86 sets:
#: AVX-512 with byte/word, vector-length and dword/qword instructions, or AVX-NE-CONVERT.
BF16_CPU_SETS = (("avx512bw", "avx512vl", "avx512dq"), ("avx_ne_convert",))
#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN below both of those sets.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The x86 feature flags of this machine's CPU as the kernel reports them (``avx2``,
    ``avx512bw``...), or None where they cannot be read (not Linux, not x86): callers then
    ask the library that would run the code."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _torch_bf16_supported() -> bool:
    """PyTorch's answer (oneDNN's bf16 kernels; on ARM, the BF16 extension)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_cpu_bf16() -> None:
    """A one-line :class:`DeviceError` where this CPU cannot run bfloat16 convolutions.

    Why before loading anything: PyTorch only finds out inside the first convolution, as a
    RuntimeError several frames deep (machines differ: AMD EPYC with AVX2 has none of the sets).
    """
    instead = "use the default --precision fp32 (exact), or --precision int8 (ONNX Runtime)"
    flags = cpu_flags()
    if flags is not None and not any(set(s) <= flags for s in BF16_CPU_SETS):
        lacks = [f for s in BF16_CPU_SETS for f in s if f not in flags]
        raise DeviceError(
            f"precision bf16 on CPU needs AVX-512 (avx512bw, avx512vl, avx512dq) or "
            f"AVX-NE-CONVERT, and this CPU lacks {', '.join(lacks)}: {instead}"
        )
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").strip().upper()
        if isa in _ONEDNN_ISAS_WITHOUT_BF16:
            raise DeviceError(
                f"precision bf16 on CPU needs oneDNN's AVX-512 or AVX-NE-CONVERT kernels, and "
                f"${var}={isa} keeps them off: unset it, or {instead}"
            )
    if flags is None and not _torch_bf16_supported():  # elsewhere: PyTorch's own check
        raise DeviceError(
            f"precision bf16 is not supported by this CPU ({platform.machine()}): {instead}"
        )


def check_cuda_bf16() -> None:
    """A one-line :class:`DeviceError` where the GPU has no native bfloat16 (before Ampere,
    compute capability 8.0): PyTorch would emulate it, slower than float32."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name()
        raise DeviceError(
            f"precision bf16 needs a GPU with native bfloat16 (compute capability 8.0+), "
            f"and {name} has none: use --precision fp32 (or tf32 on 8.0+)"
        )


def check_configured(device: str | None = None) -> str:
    """The backend that the configured precision and compile settings (environment) need on
    ``device``, or the one-line error an embedder would raise: lets a server refuse at start,
    before it binds a port or forks workers."""
    on_cpu = device_name(device) == "cpu"
    return route_backend(default_backend(), default_precision(), default_compile(), on_cpu)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 in CUDA convolutions and matrix products on or off for one forward (PyTorch's own
    default has it on for convolutions, which is not float32 arithmetic)."""
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
