"""ONNX export of ERes2NetV2 and an ONNX Runtime session for CPU inference.

Why: on the 2-core CPU, ONNX Runtime runs the (BatchNorm-folded) network faster than PyTorch's
eager CPU path with the same embeddings (docs/performance.md). The export is a cache: it is
derived from the checkpoint (keyed by its sha256 and the exporter version) and rebuilt when
missing, so the registry's model identity is unchanged -- ``onnx`` is a *backend*, not a model.

Needs the optional packages ``onnx`` (export) and ``onnxruntime`` (inference):
``pip install 'speakerid[onnx]'``.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import home_dir
from .errors import ModelError, OnnxUnavailableError
from .models.eres2netv2 import ERes2NetV2, fold_batchnorm

log = logging.getLogger("speakerid")

#: Bump when the exported graph changes, so cached files are re-exported.
EXPORT_VERSION = 1
OPSET = 17


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxUnavailableError(
            f"the onnx backend needs the {module!r} package: pip install 'speakerid[onnx]'"
        ) from None


def cache_path(sha256: str) -> Path:
    """Where the export of the checkpoint with this sha256 is kept."""
    return home_dir() / "onnx" / f"{sha256[:32]}-v{EXPORT_VERSION}.onnx"


def export_onnx(model: ERes2NetV2, path: str | os.PathLike) -> Path:
    """Write ``model`` (BatchNorm folded, eval mode) as ONNX with dynamic batch and time axes.

    Input ``feats`` ``[B, T, 80]`` (fbank), output ``emb`` ``[B, 192]`` (unnormalized), like the
    PyTorch module. Written to a temporary file and renamed, so a crash leaves no half file.
    """
    _require("onnx")
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
    log.info("exported %s", path)
    return path


class OnnxNetwork:
    """An ONNX Runtime session that takes and returns what the PyTorch module does."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"{path}: cannot load ONNX model ({exc})") from exc
        self.path = Path(path)

    def __call__(self, feats: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(feats.detach().cpu().numpy(), dtype=np.float32)
        return self.session.run(["emb"], {"feats": x})[0]


def load_or_export(model: ERes2NetV2, sha256: str, threads: int | None = None) -> OnnxNetwork:
    """The cached export of this checkpoint (exported now if missing or unreadable)."""
    _require("onnxruntime")
    path = cache_path(sha256)
    if path.is_file():
        try:
            return OnnxNetwork(path, threads)
        except ModelError as exc:
            log.warning("%s; exporting again", exc)
    export_onnx(model, path)
    return OnnxNetwork(path, threads)


@torch.inference_mode()
def agreement(model: ERes2NetV2, network: OnnxNetwork, seed: int = 0) -> float:
    """Lowest cosine between PyTorch and ONNX embeddings of seeded inputs of 1, 3 and 10 s."""
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).float().eval()
    worst = 1.0
    for frames in (98, 298, 998):
        x = torch.randn(2, frames, net.config.feat_dim, generator=gen)
        a = torch.nn.functional.normalize(net(x), dim=1).numpy()
        b = network(x)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        worst = min(worst, float(np.min(np.sum(a * b, axis=1))))
    return worst
