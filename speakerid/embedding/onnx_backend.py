"""ONNX export of ERes2NetV2 and an ONNX Runtime session for CPU inference (the CPU default).

Why: on CPU, ONNX Runtime runs the (BatchNorm-folded) network faster than PyTorch's eager path
with the same embeddings (docs/performance.md), and a cached export runs without importing
torch at all (one-shot commands skip its ~2 s import). The export is a cache: it is derived
from the checkpoint (keyed by its sha256 and the exporter version), rebuilt when missing or
unreadable, and kept under ``$SPEAKERID_CACHE/onnx`` (default ``$SPEAKERID_HOME/onnx``) with a
small JSON file beside it (sha256, configuration, dimension); the registry's model identity is
unchanged -- ``onnx`` is a *backend*, not a model.

Loading a cached export needs only ``onnxruntime`` (no torch); exporting needs torch and
``onnx``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import cache_dir
from ..errors import ModelError, OnnxUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from .models.eres2netv2 import ERes2NetV2

log = logging.getLogger("speakerid")

#: Bump when the exported graph changes, so cached files are re-exported.
EXPORT_VERSION = 1
OPSET = 17

#: ``on_prepare(message)`` returns a context manager held while the export runs (a CLI shows
#: a spinner with the message; the library itself never prints).
Prepare = Callable[[str], AbstractContextManager[Any]]


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxUnavailableError(
            f"the onnx backend needs the {module!r} package: pip install onnx onnxruntime"
        ) from None


def runtime_available() -> bool:
    """Whether ``onnxruntime`` can be imported (it is a dependency, but may be missing)."""
    try:
        _require("onnxruntime")
    except OnnxUnavailableError:
        return False
    return True


def cache_path(sha256: str, precision: str = "fp32") -> Path:
    """Where the export of the checkpoint with this sha256 is kept (``int8``: its quantized
    copy)."""
    tail = "" if precision == "fp32" else f"-{precision}"
    return cache_dir() / "onnx" / f"{sha256[:32]}-v{EXPORT_VERSION}{tail}.onnx"


def metadata_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def frames_paths(sha256: str) -> tuple[Path, Path]:
    """Where the trunk export (frame-level output, for window embeddings: ``tracking``) and the
    embedding layer's weights (numpy) of this checkpoint are kept."""
    stem = cache_dir() / "onnx" / f"{sha256[:32]}-v{EXPORT_VERSION}"
    return stem.with_name(stem.name + "-frames.onnx"), stem.with_name(stem.name + "-head.npz")


def _default_threads() -> int:
    from ..config import default_threads

    return default_threads()


def export_onnx(model: ERes2NetV2, path: str | os.PathLike, sha256: str | None = None) -> Path:
    """Write ``model`` (BatchNorm folded, eval mode) as ONNX with dynamic batch and time axes.

    Input ``feats`` ``[B, T, 80]`` (fbank), output ``emb`` ``[B, 192]`` (unnormalized), like the
    PyTorch module. Written to a temporary file and renamed, so a crash leaves no half file.
    With ``sha256`` (a cache entry), a JSON file beside it records what it was made from.
    """
    _require("onnx")
    import torch

    from .models.eres2netv2 import fold_batchnorm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = fold_batchnorm(copy.deepcopy(model).float().eval())
    example = torch.zeros(1, 300, net.config.feat_dim)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=["feats"],
                output_names=["emb"],
                dynamic_axes={"feats": {0: "batch", 1: "frames"}, "emb": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sha256:
        meta = {
            "sha256": sha256,
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            "dim": net.config.embedding_size,
            "config": net.config.to_dict(),
            "torch": torch.__version__,
        }
        side = metadata_path(path)
        tmp_meta = side.with_name(f".{side.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp_meta, side)
    log.info("exported %s", path)
    return path


def export_frames(model: ERes2NetV2, sha256: str) -> tuple[Path, Path]:
    """Cache the network up to the statistics pooling (input ``feats`` ``[B, T, 80]``, output
    ``frames`` ``[B, channels * bands, T / 8]``) and its embedding layer(s) as numpy arrays,
    so window embeddings (``tracking.windows``) run on ONNX Runtime without torch too."""
    _require("onnx")
    import torch

    from .models.eres2netv2 import fold_batchnorm

    net = fold_batchnorm(copy.deepcopy(model).float().eval())
    onnx_path, head_path = frames_paths(sha256)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.tmp")
    tmp_head = head_path.with_name(f".{head_path.stem}.{os.getpid()}.tmp.npz")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _trunk(net),
                (torch.zeros(1, 300, net.config.feat_dim),),
                str(tmp),
                input_names=["feats"],
                output_names=["frames"],
                dynamic_axes={"feats": {0: "batch", 1: "frames"}, "frames": {0: "batch", 2: "t"}},
                opset_version=OPSET,
                dynamo=False,
            )
        head = {"w1": net.seg_1.weight, "b1": net.seg_1.bias}
        if net.config.two_emb_layer:
            bn = net.seg_bn_1
            head |= {"mean": bn.running_mean, "var": bn.running_var, "eps": torch.tensor(bn.eps)}
            head |= {"w2": net.seg_2.weight, "b2": net.seg_2.bias}
        np.savez(tmp_head, **{k: v.detach().float().numpy() for k, v in head.items()})
        os.replace(tmp, onnx_path)
        os.replace(tmp_head, head_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_head.unlink(missing_ok=True)
    log.info("exported %s", onnx_path)
    return onnx_path, head_path


def _trunk(net: ERes2NetV2):
    """``net`` up to the pooling as a module (defined here: torch is imported only to export)."""
    import torch
    import torch.nn.functional as F

    class Trunk(torch.nn.Module):
        """ERes2NetV2 up to the pooling: its frame-level output, channels and bands flattened."""

        def __init__(self, net: ERes2NetV2) -> None:
            super().__init__()
            self.net = net

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            m = self.net
            x = F.relu(m.bn1(m.conv1(feats.transpose(1, 2).unsqueeze(1))))
            out3 = m.layer3(m.layer2(m.layer1(x)))
            return m.fuse34(m.layer4(out3), m.layer3_ds(out3)).flatten(1, 2)

    return Trunk(net)


class FrameNetwork:
    """The cached trunk (ONNX Runtime) and embedding layer (numpy) of one checkpoint: what
    ``tracking.windows.FrameEmbedder`` needs, without torch."""

    def __init__(self, onnx_path: Path, head_path: Path, threads: int | None = None) -> None:
        self.trunk = OnnxNetwork(onnx_path, threads, output="frames", keep_optimized=True)
        try:
            with np.load(head_path) as data:
                self.head = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{head_path}: cannot read the embedding layer ({exc})") from exc
        if "w1" not in self.head:
            raise ModelError(f"{head_path}: not a speakerid embedding layer")
        self.dim = int(self.head["w1"].shape[0])

    def frames(self, feats: np.ndarray) -> np.ndarray:
        """Trunk output ``[channels * bands, T / 8]`` (float32) of one ``[T, 80]`` fbank."""
        return self.trunk(feats[None])[0]

    def project(self, stats: np.ndarray) -> np.ndarray:
        """The embedding layer(s) on pooled statistics ``[n, 2 * channels * bands]`` (raw)."""
        h = self.head
        emb = stats.astype(np.float32) @ h["w1"].T + h["b1"]
        if "w2" in h:
            emb = (np.maximum(emb, 0) - h["mean"]) / np.sqrt(h["var"] + h["eps"])
            emb = emb.astype(np.float32) @ h["w2"].T + h["b2"]
        return emb


def load_frames(
    load_model: Callable[[], ERes2NetV2],
    sha256: str,
    on_prepare: Prepare | None = None,
    label: str = "the model",
    threads: int | None = None,
) -> FrameNetwork:
    """The cached trunk of this checkpoint; exported now (torch imported only then) when
    missing or unreadable (a cache made before the trunk was exported with the model)."""
    _require("onnxruntime")
    onnx_path, head_path = frames_paths(sha256)
    if onnx_path.is_file() and head_path.is_file():
        try:
            return FrameNetwork(onnx_path, head_path, threads)
        except ModelError as exc:
            log.warning("%s; exporting again", exc)
    _require("onnx")
    message = f"preparing {label} for ONNX Runtime (first use only; cached afterwards)"
    log.info(message)
    with (on_prepare or (lambda _m: nullcontext()))(message):
        export_frames(load_model(), sha256)
    return FrameNetwork(onnx_path, head_path, threads)


class OnnxNetwork:
    """An ONNX Runtime session that takes and returns what the PyTorch module does."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        output: str = "emb",
        keep_optimized: bool = False,
    ) -> None:
        """``keep_optimized``: keep ONNX Runtime's optimized graph beside ``path`` and start
        from it next time (``ort_session``: ~40 % less session start-up; cache entries)."""
        from ..audio.ort_session import open_session

        _require("onnxruntime")
        path = Path(path)
        try:
            self.session = open_session(
                path, threads or _default_threads(), path.parent if keep_optimized else None
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"{path}: cannot load ONNX model ({exc})") from exc
        self.path = path
        self.output = output
        out = self.session.get_outputs()[0]
        shape = out.shape
        if out.name != output or len(shape) != (2 if output == "emb" else 3):
            raise ModelError(f"{path}: not a speakerid export (output {out.name} {shape})")
        if output == "emb" and not isinstance(shape[1], int):
            raise ModelError(f"{path}: not a speakerid export (output shape {shape})")
        #: Embedding dimension, read from the graph (no torch, no checkpoint); the trunk's
        #: channel count is not static in its graph (0).
        self.dim = int(shape[1]) if output == "emb" else 0

    def __call__(self, feats: Any) -> np.ndarray:
        if hasattr(feats, "detach"):  # a torch tensor (agreement checks, tests)
            feats = feats.detach().cpu().numpy()
        x = np.ascontiguousarray(feats, dtype=np.float32)
        return self.session.run([self.output], {"feats": x})[0]


def quantize_int8(source: Path, dest: Path) -> Path:
    """Dynamic int8 quantization of every convolution (uint8 weights per tensor, activations
    quantized on the fly); the final linear layer stays fp32 (quantizing it costs far more
    accuracy: cosine ~0.87 to fp32). Written atomically."""
    _require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        quantize_dynamic(
            str(source), str(tmp), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8
        )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load_cached(
    sha256: str, threads: int | None = None, precision: str = "fp32"
) -> OnnxNetwork | None:
    """The cached export of this checkpoint, or None when there is none (or it is unreadable).

    Never imports torch."""
    _require("onnxruntime")
    path = cache_path(sha256, precision)
    if not path.is_file():
        return None
    side = metadata_path(cache_path(sha256))
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("sha256") not in (None, sha256):
            log.warning("%s was made from another checkpoint; exporting again", path)
            return None
    try:
        return OnnxNetwork(path, threads, keep_optimized=True)
    except ModelError as exc:
        log.warning("%s; exporting again", exc)
        return None


def load_or_export(
    load_model: Callable[[], ERes2NetV2],
    sha256: str,
    on_prepare: Prepare | None = None,
    label: str = "the model",
    threads: int | None = None,
    precision: str = "fp32",
) -> OnnxNetwork:
    """The cached export of this checkpoint; exported now (``load_model()`` gives the PyTorch
    module, torch is imported only then) when missing or unreadable. ``int8``: its quantized
    copy, made from the fp32 export."""
    net = load_cached(sha256, threads, precision)
    if net is not None:
        return net
    _require("onnx")
    what = "" if precision == "fp32" else f" ({precision})"
    message = f"preparing {label} for ONNX Runtime{what} (first use only; cached afterwards)"
    log.info(message)
    with (on_prepare or (lambda _m: nullcontext()))(message):
        path = cache_path(sha256)
        if precision == "fp32" or load_cached(sha256, threads) is None:
            model = load_model()
            export_onnx(model, path, sha256)
            export_frames(model, sha256)  # window embeddings (multi-speaker guard, track)
        if precision == "int8":
            path = quantize_int8(path, cache_path(sha256, precision))
    return OnnxNetwork(path, threads, keep_optimized=True)


def agreement(model: ERes2NetV2, network: OnnxNetwork, seed: int = 0) -> float:
    """Lowest cosine between PyTorch and ONNX embeddings of seeded inputs of 1, 3 and 10 s."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).float().eval()
    worst = 1.0
    with torch.inference_mode():
        for frames in (98, 298, 998):
            x = torch.randn(2, frames, net.config.feat_dim, generator=gen)
            a = torch.nn.functional.normalize(net(x), dim=1).numpy()
            b = network(x)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            worst = min(worst, float(np.min(np.sum(a * b, axis=1))))
    return worst
