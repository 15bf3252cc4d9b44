"""Where and how the network runs: device, compute threads, backend and numerics.

The embedder asks this module; so does training (device, threads). Only ``torch`` or
``onnxruntime`` questions that a choice needs are imported, and only when needed, so the
ONNX Runtime path stays torch-free.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .config import default_device, default_threads, parse_threads
from .errors import DeviceError

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
    if precision != "fp32" or compile:
        if requested == "onnx":
            what = "--compile" if compile else f"precision {precision}"
            raise DeviceError(f"{what} runs on the torch backend only, not onnx")
        return "torch"
    return requested


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
