"""Speech windows of a long recording and their embeddings, in bounded memory.

Pass 1 streams the file through the Silero VAD (``vad.VadStream``: ~4 ms per second of audio)
and gives the speech segments. Windows of ``WINDOW_SECONDS`` every ``HOP_SECONDS`` are laid
inside each segment (never across a pause), as 3D-Speaker's diarization does; a segment shorter
than a window is one window. Pass 2 streams the file again and embeds the speech block by block.

Windows share one network pass: the speech of up to ``BLOCK_SECONDS`` is concatenated, its fbank
goes through ERes2NetV2's convolutional trunk once, and each window's embedding is the trunk's
output frames inside the window, statistics-pooled and projected by the model's own embedding
layer (``seg_1``). ERes2NetV2 is convolutional up to the pooling, so this is the network's
embedding of the window with its neighbourhood as context instead of zero padding, at the cost
of one pass over the speech instead of ``WINDOW_SECONDS / HOP_SECONDS`` passes; for tracking
only every ``FRAME_STEP``-th fbank frame is fed. Pooled over a whole clip at step 1, the same
frames give exactly ``Embedder.embed`` (tested; the guard relies on it).

The fbank is normalized by the mean over *all the recording's speech* (measured in pass 1), not
per block or per window: every window then sees the same reference, so windows of one voice
stay comparable across the file (per-block means made windows cluster by block, sliding means
by turn, and per-window means separated voices worst of all: docs/tracking.md). Such window
embeddings are for comparing windows of one recording with each other; they are not comparable
with registry voiceprints, which are embeddings of whole recordings normalized by their own
mean, so voices are named from a standard embedding of their speech (``naming.py``).

Who computes: :func:`window_embedder` gives the embedder's own window embedder where it has one
(the server's ``BatchingEmbedder`` runs every window pass on its embedding worker, with the same
limits and numerics as any other embedding), else a :class:`FrameEmbedder` that computes in the
caller's thread (CLI, Python API). Both offer ``dim``, ``raw_fbank``, ``embed_block`` and
``embed_clip``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioSource

WINDOW_SECONDS = 1.5
HOP_SECONDS = 0.75
#: Every second fbank frame feeds the trunk (20 ms instead of 10 ms): half the cost of the
#: embedding pass for the same accuracy on the dev conversations (every third lost ~10 points
#: of DER; docs/tracking.md). Window embeddings are only compared with each other.
FRAME_STEP = 2
#: Most speech embedded by one network pass (bounds the activations held at once).
BLOCK_SECONDS = 20.0
#: Output frame of the trunk = 8 fbank frames (three stride-2 stages) = 1280 samples (80 ms).
TRUNK_STRIDE = 1280
_FRAME_CENTER = 760  # sample at the centre of trunk frame 0 (fbank frames 0-7, 400-sample windows)
_BIN = 4096  # pass 1 keeps fbank sums per 0.256 s

Span = tuple[int, int]  # [start, end) in samples at 16 kHz
Progress = Callable[[float], None]  # seconds of audio done in this pass


@dataclass
class Analysis:
    """What the expensive part found in one recording: speech, windows and their embeddings."""

    source: str
    duration: float  # seconds
    speech: list[Span]  # VAD segments
    windows: np.ndarray  # int64 [n, 2]: window spans in samples
    vectors: np.ndarray  # float32 [n, dim], unit norm

    @property
    def speech_seconds(self) -> float:
        return sum(b - a for a, b in self.speech) / SAMPLE_RATE


def layout(segments: Iterable[Span], window: float = WINDOW_SECONDS, hop: float = HOP_SECONDS):
    """Windows ``[(start, end), ...]`` inside each segment, from its start to its end, spread
    evenly at most ``hop`` seconds apart; a segment shorter than a window is one window."""
    w, h = int(window * SAMPLE_RATE), int(hop * SAMPLE_RATE)
    out: list[Span] = []
    for a, b in segments:
        if b - a <= w:
            out.append((a, b))
            continue
        n = 1 + -(-(b - a - w) // h)  # evenly spread, overlap at least w - h
        starts = np.linspace(a, b - w, n).round().astype(int).tolist()
        out.extend((s, s + w) for s in starts)
    return out


def blocks(segments: list[Span], block: float = BLOCK_SECONDS) -> list[list[Span]]:
    """Group segments (cut at ``block`` seconds when longer) into runs of at most ``block``
    seconds of speech; each run is embedded by one network pass."""
    limit = int(block * SAMPLE_RATE)
    pieces: list[Span] = []
    for a, b in segments:
        n = -(-(b - a) // limit)
        edges = np.linspace(a, b, n + 1).astype(int)
        pieces.extend(zip(edges[:-1].tolist(), edges[1:].tolist()))
    out: list[list[Span]] = []
    size = limit + 1
    for a, b in pieces:
        if size + (b - a) > limit:
            out.append([])
            size = 0
        out[-1].append((a, b))
        size += b - a
    return out


def window_embedder(embedder, step: int = 1):
    """What computes window embeddings for ``embedder``: its own window embedder where it has
    one (``BatchingEmbedder.window_embedder``: on the server's worker thread), else a
    :class:`FrameEmbedder` running in this thread."""
    own = getattr(embedder, "window_embedder", None)
    return own(step) if own is not None else FrameEmbedder(embedder, step)


class FrameEmbedder:
    """Window embeddings from one trunk pass per block, with an ``Embedder``'s model on the
    embedder's backend: ONNX Runtime (the trunk exported beside the model's export, the
    embedding layer in numpy, no torch) or PyTorch, under the embedder's numerics (precision,
    TF32 on CUDA) as its own forward."""

    def __init__(self, embedder, step: int = 1) -> None:
        self.embedder = embedder
        self.dim = embedder.dim
        #: Every ``step``-th fbank frame goes through the trunk (1: all, the network's own rate).
        self.step = step
        frame_network = getattr(embedder, "frame_network", None)
        self.network = frame_network() if frame_network else None
        if self.network is None:  # the PyTorch backend (or no trunk export possible)
            self.model = embedder.model
            self.device = next(self.model.parameters()).device
            self.numerics = embedder.numerics

    def raw_fbank(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``[T, 80]`` Kaldi fbank without the mean subtraction, by the front end of
        the backend (numpy for ONNX Runtime, torchaudio for PyTorch)."""
        if self.network is not None:
            from .features import fbank_numpy

            return fbank_numpy(samples, subtract_mean=False)
        return raw_fbank(samples).numpy()

    def frames(self, samples: np.ndarray, mean: np.ndarray | None = None):
        """The trunk's output ``[channels * bands, frames]`` (float64) for 16 kHz samples,
        fbank normalized by ``mean`` (default: their own mean, as ``features.fbank``)."""
        if self.network is not None:
            feats = self.raw_fbank(samples)
            ref = feats.mean(axis=0, keepdims=True) if mean is None else mean[None]
            x = feats[:: self.step] - np.asarray(ref, dtype=np.float32)
            return self.network.frames(x).astype(np.float64)
        import torch
        import torch.nn.functional as F

        m = self.model
        with torch.inference_mode(), self.numerics():
            feats = raw_fbank(samples)
            ref = feats.mean(dim=0, keepdim=True) if mean is None else torch.as_tensor(mean)
            feats = feats[:: self.step] - ref.to(feats.dtype)
            feats = feats.unsqueeze(0).to(self.device)  # [1, T, 80]
            x = feats.transpose(1, 2).unsqueeze(1)
            x = F.relu(m.bn1(m.conv1(x)))
            out3 = m.layer3(m.layer2(m.layer1(x)))
            fused = m.fuse34(m.layer4(out3), m.layer3_ds(out3))
        return fused[0].reshape(-1, fused.shape[-1]).double().cpu().numpy()

    def project(self, stats: np.ndarray) -> np.ndarray:
        """The model's embedding layer(s) on pooled statistics ``[n, 2 * channels * bands]``."""
        from .embedder import normalize

        if self.network is not None:
            return normalize(self.network.project(stats))
        import torch
        import torch.nn.functional as F

        m = self.model
        with torch.inference_mode(), self.numerics():
            emb = m.seg_1(torch.from_numpy(stats.astype(np.float32)).to(self.device))
            if m.config.two_emb_layer:
                emb = m.seg_2(m.seg_bn_1(F.relu(emb)))
        return normalize(emb.float().cpu().numpy())

    def pooled(self, frames: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
        """Mean and std (unbiased, + 1e-8 as TSTP) of trunk frames over each ``[j0, j1)``."""
        c1 = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames, axis=1)], axis=1)
        c2 = np.concatenate(
            [np.zeros((frames.shape[0], 1)), np.cumsum(frames * frames, axis=1)], axis=1
        )
        out = np.empty((len(spans), 2 * frames.shape[0]))
        for i, (j0, j1) in enumerate(spans):
            n = j1 - j0
            mean = (c1[:, j1] - c1[:, j0]) / n
            var = np.maximum((c2[:, j1] - c2[:, j0]) - n * mean * mean, 0.0) / (n - 1)
            out[i, : frames.shape[0]] = mean
            out[i, frames.shape[0] :] = np.sqrt(var + 1e-8)
        return out

    def frame_span(self, a: int, b: int, total: int) -> tuple[int, int]:
        """Trunk frames whose centre lies in samples ``[a, b)`` (at least 2, within range)."""
        stride = TRUNK_STRIDE * self.step
        centre = _FRAME_CENTER + (self.step - 1) * 560  # fbank frame step * 3.5 hops of 160
        j0 = max(0, -(-(a - centre) // stride))
        j1 = min(total, -(-(b - centre) // stride))
        if j1 - j0 < 2:
            j0 = max(0, min(j0, total - 2))
            j1 = min(total, j0 + 2)
        return j0, j1

    def embed_block(
        self, samples: np.ndarray, spans: list[Span], mean: np.ndarray | None = None
    ) -> np.ndarray:
        """Unit embeddings of ``spans`` (sample ranges of ``samples``) from one trunk pass."""
        return self.embed_windows(self.frames(samples, mean), spans)

    def embed_windows(self, frames: np.ndarray, spans: list[Span]) -> np.ndarray:
        """Unit embeddings ``[n, dim]`` of sample ranges ``spans``, from trunk frames."""
        if not spans:
            return np.zeros((0, self.dim), np.float32)
        total = frames.shape[1]
        return self.project(self.pooled(frames, [self.frame_span(a, b, total) for a, b in spans]))

    def whole(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The trunk frames of a clip and its embedding pooled over all of them (= the
        ``Embedder``'s embedding of a clip up to 60 s)."""
        frames = self.frames(samples)
        return frames, self.project(self.pooled(frames, [(0, frames.shape[1])]))[0]

    def embed_clip(
        self, clip, speech: list[Span], window: float = WINDOW_SECONDS, hop: float = HOP_SECONDS
    ):
        """A decoded clip's embedding (the embedder's rule: pieces of at most 60 s, averaged)
        and the embeddings of windows laid inside its ``speech``, from the same trunk frames
        -> (Embedding, vectors ``[n, dim]``, window spans ``[n, 2]`` in samples)."""
        from .embedder import Embedding, normalize, segments

        vecs, xs, ws = [], [], []
        offset = 0
        for piece in segments(clip.samples):
            frames, vec = self.whole(piece)
            vecs.append(vec)
            end = offset + len(piece)
            local = [
                (max(a, offset) - offset, min(b, end) - offset)
                for a, b in speech
                if a < end and b > offset
            ]
            spans = layout(local, window, hop)
            if spans:
                xs.append(self.embed_windows(frames, spans))
                ws.append(np.asarray(spans) + offset)
            offset = end
        vec = vecs[0] if len(vecs) == 1 else normalize(np.mean(vecs, axis=0))
        emb = Embedding(vec, self.embedder.name, clip.source, clip.duration, clip.sha256)
        x = np.concatenate(xs) if xs else np.zeros((0, self.dim), np.float32)
        w = np.concatenate(ws) if ws else np.zeros((0, 2), np.int64)
        return emb, x, w


def raw_fbank(samples: np.ndarray):
    """Kaldi fbank exactly as ``features.fbank`` but without the mean subtraction."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    from . import features as ft

    return kaldi.fbank(
        torch.as_tensor(samples, dtype=torch.float32).reshape(1, -1),
        num_mel_bins=ft.NUM_MEL_BINS,
        frame_length=ft.FRAME_LENGTH_MS,
        frame_shift=ft.FRAME_SHIFT_MS,
        sample_frequency=SAMPLE_RATE,
        dither=0.0,
    )


def speech_segments(
    source: AudioSource,
    on_progress: Progress | None = None,
    fbank: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """Pass 1: Silero speech segments of a streamed file and the mean fbank frame of its
    speech -> (segments, samples in the file, mean [80] or None without speech). ``fbank``:
    the raw fbank to average (default: numpy's, ``FrameEmbedder.raw_fbank`` in ``analyse``).

    fbank sums are kept per ``_BIN`` samples (5 KB per minute), so the mean over exactly the
    speech segments is known once the VAD has decided them."""
    from ..audio.stream import stream_audio
    from ..audio.vad import VadStream, segments_from_probs
    from .features import fbank_numpy

    fbank = fbank or (lambda x: fbank_numpy(x, subtract_mean=False))
    vad = VadStream()
    probs, n = [], 0
    bins: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for block in stream_audio(source):
        probs.append(vad.push(block))
        f = fbank(block).astype(np.float64) if len(block) >= 400 else np.zeros((0, 80))
        centres = n + 160 * np.arange(len(f)) + 200
        first = n // _BIN
        idx = centres // _BIN - first
        width = int(idx.max()) + 1 if len(idx) else 0
        sums = np.zeros((width, f.shape[1]))
        np.add.at(sums, idx, f)
        cnt = np.bincount(idx, minlength=width).astype(float)
        while len(bins) < first + width:
            bins.append(np.zeros(f.shape[1]))
            counts.append(np.zeros(1))
        for k in range(width):
            bins[first + k] += sums[k]
            counts[first + k] += cnt[k]
        n += len(block)
        if on_progress:
            on_progress(len(block) / SAMPLE_RATE)
    probs.append(vad.flush())
    segments = segments_from_probs(np.concatenate(probs), n)
    weight = np.zeros(len(bins))
    for a, b in segments:  # share of each bin inside speech
        for k in range(a // _BIN, min(len(bins), -(-b // _BIN))):
            lo, hi = max(a, k * _BIN), min(b, (k + 1) * _BIN)
            weight[k] += max(0, hi - lo) / _BIN
    total = float(sum(w * c[0] for w, c in zip(weight, counts)))
    mean = None
    if total > 0:
        mean = sum(w * s for w, s in zip(weight, bins)) / total
    return segments, n, mean


def _speech_runs(source: AudioSource, runs: list[list[Span]]) -> Iterator[np.ndarray]:
    """Pass 2: the concatenated samples of each run of segments, in order, streamed."""
    from ..audio.stream import stream_audio

    buf = np.zeros(0, np.float32)
    buf_start = 0
    it = stream_audio(source)
    for run in runs:
        end = run[-1][1]
        while buf_start + len(buf) < end:
            block = next(it, None)
            if block is None:
                break
            buf = np.concatenate([buf, block])
        yield np.concatenate([buf[a - buf_start : b - buf_start] for a, b in run])
        drop = end - buf_start
        buf, buf_start = buf[drop:], end


def analyse(
    source: AudioSource,
    frame_embedder,
    window: float = WINDOW_SECONDS,
    hop: float = HOP_SECONDS,
    on_progress: Progress | None = None,
) -> Analysis:
    """Speech, windows and window embeddings of one recording (two streamed passes);
    ``frame_embedder``: a :class:`FrameEmbedder` or another :func:`window_embedder`.

    ``on_progress(seconds)`` counts the file's duration twice: once for speech detection,
    once for embedding (only speech is embedded)."""
    from ..audio.decode import source_name

    segments, n, mean = speech_segments(source, on_progress, frame_embedder.raw_fbank)
    runs = blocks(segments)  # windows are laid inside the (cut) pieces, never across them
    spans = layout([piece for run in runs for piece in run], window, hop)
    vectors = np.zeros((len(spans), frame_embedder.dim), np.float32)
    done_time = 0
    k = 0  # next window
    for run, samples in zip(runs, _speech_runs(source, runs)):
        # where each window of this run lies in the concatenated samples
        offsets, pos = [], 0
        for a, b in run:
            offsets.append((a, b, pos))
            pos += b - a
        local, idx = [], []
        while k < len(spans) and spans[k][0] < run[-1][1]:
            s, e = spans[k]
            a, _, off = next(o for o in offsets if o[0] <= s < o[1])
            local.append((off + s - a, off + e - a))
            idx.append(k)
            k += 1
        if local:
            vectors[idx] = frame_embedder.embed_block(samples, local, mean)
        if on_progress:
            end = run[-1][1]
            on_progress((end - done_time) / SAMPLE_RATE)
            done_time = end
    if on_progress and n > done_time:
        on_progress((n - done_time) / SAMPLE_RATE)
    windows = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return Analysis(source_name(source), n / SAMPLE_RATE, segments, windows, vectors)


def read_spans(source: AudioSource, spans: list[Span]) -> list[np.ndarray]:
    """The samples of each ``[start, end)`` span of a streamed file (any order, overlaps
    allowed), holding only what the spans still need."""
    from ..audio.stream import stream_audio

    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(spans)
    buf = np.zeros(0, np.float32)
    buf_start = 0
    it = stream_audio(source)
    for pos, i in enumerate(order):
        a, b = spans[i]
        while buf_start + len(buf) < b:
            block = next(it, None)
            if block is None:
                break
            buf = np.concatenate([buf, block])
        out[i] = buf[max(0, a - buf_start) : max(0, b - buf_start)].copy()
        keep = min([spans[j][0] for j in order[pos + 1 :]], default=buf_start + len(buf))
        if keep > buf_start:
            buf, buf_start = buf[keep - buf_start :], keep
    for _ in it:  # read to the end: the decoder's checks (e.g. silent audio) still apply
        pass
    return out
