"""Audio → L2-normalized speaker embedding with ERes2NetV2.

Long-audio policy: audio up to ``MAX_SEGMENT_SECONDS`` (60 s) is embedded whole, exactly as the
official pipeline does. Longer audio is cut into equal segments of at most 60 s (so peak memory
stays that of a 60 s input), each segment is embedded and L2-normalized, and the result is the
re-normalized mean of the segment embeddings.

Batching never changes results: utterances are sorted by length and batched with little padding;
the network masks padded frames before every temporal convolution and in statistics pooling, so
each embedding equals the one computed alone (tested to ~1e-6).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioClip, AudioSource, load_audio
from ..config import (
    check_backend,
    check_precision,
    default_backend,
    default_compile,
    default_model,
    default_precision,
)
from ..errors import AudioError, OnnxUnavailableError
from . import weights
from .features import fbank_numpy
from .runtime import (
    apply_threads,
    choose_backend,
    device_name,
    resolve_threads,
    route_backend,
    tf32,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .onnx_backend import Prepare

log = logging.getLogger("speakerid")

MAX_SEGMENT_SECONDS = 60.0
#: Longest padding (as a fraction of the shortest item) accepted inside one batch.
MAX_PADDING = 0.15
#: Most fbank frames in one CUDA batch (64,000 = 128 items of 5 s): long recordings form
#: smaller batches instead of one that does not fit the device's memory.
MAX_BATCH_FRAMES = 64_000
#: Items per CUDA batch and files per decoding chunk (bench/gpu.py, docs/performance.md).
CUDA_BATCH = 128
CUDA_CHUNK = 512
#: channels_last per precision on CUDA: tensor-core convolutions want it (bench/gpu.py).
CUDA_CHANNELS_LAST = {"fp32": False, "tf32": True, "bf16": True}
#: A feature matrix: numpy for the ONNX Runtime backend, a tensor for PyTorch.
Features = Any


@dataclass(frozen=True)
class Embedding:
    """One normalized embedding and where it came from."""

    vector: np.ndarray = field(repr=False)  # float32 [dim], unit L2 norm
    model: str
    source: str
    duration: float
    sha256: str

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalize rows (or a vector) in float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def segments(samples: np.ndarray, max_seconds: float = MAX_SEGMENT_SECONDS) -> list[np.ndarray]:
    """Split into equal segments of at most ``max_seconds`` (one segment when short enough)."""
    max_len = int(max_seconds * SAMPLE_RATE)
    if len(samples) <= max_len:
        return [samples]
    n = math.ceil(len(samples) / max_len)
    return list(np.array_split(samples, n))


class Embedder:
    """Loads one ERes2NetV2 and turns audio into normalized embeddings."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str | None = None,
        progress: weights.Progress | None = None,
        batch_size: int | None = None,
        fast_cpu: bool = True,
        backend: str | None = None,
        threads: int | None = None,
        on_prepare: Prepare | None = None,
        precision: str | None = None,
        compile: bool | None = None,
    ) -> None:
        self.threads = resolve_threads(threads)
        resolved = weights.resolve(model or default_model(), progress=progress)
        self.name = resolved.name
        self.path = resolved.path
        self.sha256 = resolved.sha256
        #: What a registry stores to load this model again (a name or an absolute path).
        self.ref = resolved.ref
        self._device = device_name(device)
        # Measured on 2 CPU cores (bench/embed.py, docs/performance.md): padded batches are ~2x
        # slower per utterance than batch 1 (activations fall out of cache), channels_last is
        # ~1.25x faster, and 1x1 convolutions through oneDNN plus folded BatchNorm another
        # ~1.4x; on CUDA, batching is what pays.
        on_cpu = self._device == "cpu"
        self.batch_size = batch_size or (1 if on_cpu else CUDA_BATCH)
        self.chunk = 64 if on_cpu else CUDA_CHUNK
        # fbank of a whole chunk as one job on the device: per-utterance CPU fbank would starve
        # a batched GPU network. On CPU the batched version is ~2.5x slower (its intermediates
        # fall out of cache) and fbank is ~1 % of the network's time, so it stays per utterance.
        self.batched_fbank = not on_cpu
        requested = check_backend(backend) if backend else default_backend()
        #: ``fp32`` (exact), or opt-in ``int8`` (ONNX Runtime, CPU), ``tf32``/``bf16`` (PyTorch)
        self.precision = check_precision(precision) if precision else default_precision()
        #: PyTorch network through ``torch.compile`` (CUDA, opt-in)
        self.compile = default_compile() if compile is None else bool(compile)
        requested = route_backend(requested, self.precision, self.compile, on_cpu)
        self.backend = choose_backend(requested, on_cpu)
        self._model = None
        self._onnx = None
        self._on_prepare = on_prepare
        self._frames: Any = None
        if self.backend == "onnx":
            # same weights, same embeddings: the registry's model identity does not change.
            # A cached export loads without torch; otherwise it is exported now (once).
            self._onnx = self._load_onnx(requested == "auto", on_prepare)
        if self.backend == "torch":
            import torch

            from .models.eres2netv2 import fold_batchnorm, use_onednn_pointwise

            apply_threads(self.threads)  # before any torch work, loading included

            net = weights.load_model(resolved.path).to(self.device)
            if on_cpu and fast_cpu:
                net = fold_batchnorm(net).to(memory_format=torch.channels_last)
                use_onednn_pointwise(net)
            elif not on_cpu:  # fewer kernels; same results up to rounding (as on CPU)
                net = fold_batchnorm(net)
                if CUDA_CHANNELS_LAST[self.precision]:
                    net = net.to(memory_format=torch.channels_last)
            self._model = net
            self._run = torch.compile(net, dynamic=True) if self.compile else net
            self.dim = net.config.embedding_size
        else:
            self.dim = self._onnx.dim

    def _load_onnx(self, auto: bool, on_prepare: Prepare | None):
        """The ONNX Runtime network; with ``auto``, PyTorch (one log line) if it cannot be
        exported here (the ``onnx`` package missing, a cache folder that cannot be written)."""
        from .onnx_backend import load_or_export

        try:
            return load_or_export(
                lambda: weights.load_model(self.path),
                self.sha256,
                on_prepare,
                self.name,
                threads=self.threads,
                precision=self.precision,
            )
        except (OnnxUnavailableError, OSError) as exc:
            if not auto:
                raise
            log.warning("cannot export to ONNX (%s): using the slower PyTorch backend", exc)
            self.backend = "torch"
            return None

    def frame_network(self):
        """The trunk + embedding layer on ONNX Runtime (``onnx_backend.FrameNetwork``) for
        window embeddings, loaded once; None on the PyTorch backend or, with one log line,
        when it cannot be exported here (the windows then run on PyTorch)."""
        if self.backend != "onnx":
            return None
        if self._frames is None:
            from .onnx_backend import load_frames

            try:
                self._frames = load_frames(
                    lambda: weights.load_model(self.path),
                    self.sha256,
                    self._on_prepare,
                    self.name,
                    threads=self.threads,
                )
            except (OnnxUnavailableError, OSError) as exc:
                log.warning("cannot export the trunk to ONNX (%s): windows run on PyTorch", exc)
                self._frames = False
        return self._frames or None

    @property
    def device(self) -> torch.device:
        """Where the network runs (a ``torch.device``; importing torch on first use)."""
        import torch

        return torch.device(self._device)

    @property
    def model(self):
        """The PyTorch module: the one that runs (PyTorch backend), or the checkpoint loaded
        on demand (ONNX Runtime backend, which never needs it once exported)."""
        if self._model is None:
            self._model = weights.load_model(self.path)
        return self._model

    @property
    def config(self):
        return self.model.config

    def _forward(self, feats: list[Features]) -> Any:
        """Raw embeddings of one batch: numpy (ONNX Runtime) or a float32 tensor left on the
        device (PyTorch), so a GPU is not made to wait for the host after every batch."""
        lengths = [f.shape[0] for f in feats]
        if self._onnx is not None:  # the exported graph has no length mask: equal lengths only
            if len(set(lengths)) == 1:
                return self._onnx(np.stack(feats))
            return np.concatenate([self._onnx(f[None]) for f in feats])
        import torch

        with torch.inference_mode(), self._numerics():
            if len(set(lengths)) == 1 and not self.compile:  # compiled: one graph, with lengths
                return self._run(torch.stack(feats).to(self.device)).float()
            batch = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
            lens = torch.tensor(lengths, device=self.device)
            return self._run(batch.to(self.device), lens).float()

    def _numerics(self) -> contextlib.AbstractContextManager:
        """The precision around a PyTorch forward: bf16 autocast, or float32 with TF32 off
        (``fp32``, exact) or on (``tf32``) in CUDA convolutions and matrix products."""
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self._device.startswith("cuda"):
            return tf32(self.precision == "tf32")
        return contextlib.nullcontext()

    def numerics(self) -> contextlib.AbstractContextManager:
        """The precision around any other pass over this embedder's PyTorch modules (the
        window embeddings, ``tracking.windows``): the same as around its own forward."""
        return self._numerics()

    def embed_features(
        self,
        feats: Sequence[Features],
        batch_size: int | None = None,
        on_batch: Callable[[list[int]], None] | None = None,
    ) -> np.ndarray:
        """Raw (unnormalized) embeddings of fbank matrices.

        Sorted by length and batched with at most ``MAX_PADDING`` extra frames; padded frames
        are masked inside the network, so results equal one-at-a-time inference.
        ``on_batch(indices)`` is told which rows are done after each network call.
        """
        batch_size = batch_size or self.batch_size
        out = np.zeros((len(feats), self.dim), dtype=np.float32)
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        group: list[int] = []
        on_device: list[tuple[list[int], Any]] = []  # PyTorch results, copied back once

        def flush() -> None:
            if group:
                res = self._forward([feats[i] for i in group])
                if isinstance(res, np.ndarray):
                    out[group] = res
                else:
                    on_device.append((list(group), res))
                if on_batch:
                    on_batch(list(group))
                group.clear()

        for i in order:
            n = feats[i].shape[0]
            if group and (
                len(group) >= batch_size
                or n > (1 + MAX_PADDING) * feats[group[0]].shape[0]
                or (len(group) + 1) * n > MAX_BATCH_FRAMES
            ):
                flush()
            group.append(i)
        flush()
        if on_device:
            import torch

            rows = [i for part, _ in on_device for i in part]
            out[rows] = torch.cat([res for _, res in on_device]).cpu().numpy()
        return out

    def _features(self, clips: Sequence[AudioClip]) -> tuple[list[Features], np.ndarray]:
        """fbank of every segment of every clip, and which clip each segment belongs to."""
        waves: list[np.ndarray] = []
        owner: list[int] = []
        for i, clip in enumerate(clips):
            for seg in segments(clip.samples):
                waves.append(seg)
                owner.append(i)
        if self._onnx is not None:  # numpy: no torch on this path
            pieces = [fbank_numpy(w) for w in waves]
        elif self.batched_fbank:
            from .features import fbank_batch

            pieces = fbank_batch(waves, self.device)
        else:
            from .features import fbank

            pieces = [fbank(w) for w in waves]
        return pieces, np.asarray(owner)

    def _finish(
        self,
        clips: Sequence[AudioClip],
        pieces: list[Features],
        owner: np.ndarray,
        batch_size: int | None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Embedding]:
        on_batch = None
        if on_progress:
            left = np.bincount(owner, minlength=len(clips))  # segments still to embed, per clip

            def on_batch(rows: list[int]) -> None:
                for clip in owner[rows]:
                    left[clip] -= 1
                    if left[clip] == 0:
                        on_progress(1)

        raw = normalize(self.embed_features(pieces, batch_size, on_batch))
        results = []
        for i, clip in enumerate(clips):
            vec = raw[owner == i]
            vec = vec[0] if len(vec) == 1 else normalize(vec.mean(axis=0))
            results.append(Embedding(vec, self.name, clip.source, clip.duration, clip.sha256))
        return results

    def embed_clips(
        self, clips: Sequence[AudioClip], batch_size: int | None = None
    ) -> list[Embedding]:
        """Embeddings of decoded clips, in input order."""
        pieces, owner = self._features(clips)
        return self._finish(clips, pieces, owner, batch_size)

    def embed(self, audio: AudioSource | AudioClip) -> Embedding:
        """Embedding of one file, bytes object or decoded clip."""
        clip = audio if isinstance(audio, AudioClip) else load_audio(audio)
        return self.embed_clips([clip])[0]

    def embed_many(
        self,
        sources: Iterable[AudioSource | AudioClip],
        batch_size: int | None = None,
        chunk: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        collect_errors: bool = False,
        prepare: Callable[[AudioClip], AudioClip] | None = None,
    ) -> list[Embedding | AudioError]:
        """Embeddings of many inputs in order.

        Works in chunks of ``chunk`` files (bounded memory); a background thread decodes the
        next chunk while the network runs on the current one. ``on_progress(1)`` is called once
        per input, as soon as it is done. With ``collect_errors``, an input that cannot be
        decoded yields its ``AudioError`` in its place and the others are still embedded;
        otherwise the first such error is raised. ``prepare(clip)`` (e.g. VAD trimming) runs
        on the decoding thread, after decoding.
        """
        items = list(sources)
        chunk = chunk or self.chunk  # files per chunk: 64 on CPU, more on CUDA (longer batches)
        chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]

        def decode(part: list) -> list[AudioClip | AudioError]:
            # Decoding only: torch ops (fbank) stay on this thread, because a second thread
            # running torch ops brings a second OpenMP team that spins against the compute
            # threads (measured 1.5x slower on 2 cores).
            out: list[AudioClip | AudioError] = []
            for s in part:
                try:
                    clip = s if isinstance(s, AudioClip) else load_audio(s)
                    out.append(prepare(clip) if prepare else clip)
                except AudioError as exc:
                    if not collect_errors:
                        raise
                    out.append(exc.with_traceback(None))
            return out

        results: list[Embedding | AudioError] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(decode, chunks[0]) if chunks else None
            for k in range(len(chunks)):
                decoded = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(decode, chunks[k + 1])
                clips = [c for c in decoded if isinstance(c, AudioClip)]
                if on_progress:
                    for _ in range(len(decoded) - len(clips)):
                        on_progress(1)  # a failed input is done too
                embs = []
                if clips:
                    pieces, owner = self._features(clips)
                    embs = self._finish(clips, pieces, owner, batch_size, on_progress)
                done = iter(embs)
                results.extend(c if isinstance(c, AudioError) else next(done) for c in decoded)
        return results
