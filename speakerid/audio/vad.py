"""Voice activity detection: Silero VAD run directly on ONNX Runtime (no torch).

The model is the ONNX file shipped inside the ``silero-vad`` wheel
(``silero_vad/data/silero_vad.onnx``). We locate it without importing the ``silero_vad`` package,
because that package imports torch, and one-shot commands (``verify``, ``identify``) must stay
fast to start. The session is created once per process (lazily, one intra-op thread).

Model interface: every 512 samples at 16 kHz (32 ms) the network takes ``input`` float32
``[1, 64 + 512]`` (64 samples of context from the previous window, then the new window),
``state`` float32 ``[2, 1, 128]`` and ``sr`` int64, and returns the speech probability ``[1, 1]``
and the next state.

Segments follow Silero's own ``get_speech_timestamps`` (hysteresis): speech starts when the
probability reaches ``THRESHOLD`` (0.5), ends after ``MIN_SILENCE_MS`` (100 ms) below
``NEG_THRESHOLD`` (0.35); segments shorter than ``MIN_SPEECH_MS`` (250 ms) are dropped and the
rest padded by ``SPEECH_PAD_MS`` (30 ms) on each side. Synthetic tones, chords, white/pink/brown
noise and near-silence give no speech; read speech gives about 60-75 % of its duration.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np

from ..errors import VadUnavailableError

log = logging.getLogger("speakerid")

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64
THRESHOLD = 0.5
NEG_THRESHOLD = 0.35
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 30
MODEL_FILE = ("data", "silero_vad.onnx")

Segment = tuple[int, int]  # [start, end) in samples at 16 kHz


def model_path() -> Path:
    """The Silero ONNX file inside the installed ``silero-vad`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base).joinpath(*MODEL_FILE)
        if path.is_file():
            return path
    raise VadUnavailableError(
        "Silero VAD model not found (silero_vad/data/silero_vad.onnx): "
        "install it with pip install silero-vad"
    )


@functools.lru_cache(maxsize=1)
def _session():
    path = model_path()
    try:
        import onnxruntime  # noqa: F401 (open_session's; missing: say so clearly)
    except ImportError:
        raise VadUnavailableError(
            "the Silero VAD needs onnxruntime: pip install onnxruntime"
        ) from None
    from ..config import cache_dir
    from .ort_session import open_session

    try:  # its optimized graph cached with the model exports (half the start-up time)
        sess = open_session(path, 1, cache_dir() / "onnx")
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise VadUnavailableError(f"{path}: cannot load the Silero VAD model ({exc})") from None
    log.debug("loaded Silero VAD from %s", path)
    return sess


def speech_probs(samples: np.ndarray) -> np.ndarray:
    """Speech probability of every 512-sample window of 16 kHz audio (last one zero-padded)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    n = -(-len(x) // WINDOW)
    if n == 0:
        return np.zeros(0, np.float32)
    sess = _session()
    padded = np.zeros(CONTEXT + n * WINDOW, np.float32)
    padded[CONTEXT : CONTEXT + len(x)] = x
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    out = np.empty(n, np.float32)
    for i in range(n):
        chunk = padded[i * WINDOW : i * WINDOW + CONTEXT + WINDOW][None, :]
        prob, state = sess.run(None, {"input": chunk, "state": state, "sr": sr})
        out[i] = float(prob.reshape(-1)[0])
    return out


def segments_from_probs(
    probs: np.ndarray,
    n_samples: int,
    threshold: float = THRESHOLD,
    neg_threshold: float = NEG_THRESHOLD,
    min_speech_ms: int = MIN_SPEECH_MS,
    min_silence_ms: int = MIN_SILENCE_MS,
    pad_ms: int = SPEECH_PAD_MS,
) -> list[Segment]:
    """Silero's ``get_speech_timestamps`` hysteresis on per-window probabilities."""
    ms = SAMPLE_RATE // 1000
    min_speech, min_silence, pad = min_speech_ms * ms, min_silence_ms * ms, pad_ms * ms
    out: list[list[int]] = []
    start: int | None = None
    temp_end = 0
    for i, p in enumerate(probs):
        cur = i * WINDOW
        if p >= threshold and temp_end:
            temp_end = 0
        if p >= threshold and start is None:
            start = cur
            continue
        if start is not None and p < neg_threshold:
            temp_end = temp_end or cur
            if cur - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                out.append([start, temp_end])
            start, temp_end = None, 0
    if start is not None and n_samples - start > min_speech:
        out.append([start, n_samples])
    for i, seg in enumerate(out):  # pad, splitting short gaps between neighbours
        if i == 0:
            seg[0] = max(0, seg[0] - pad)
        if i + 1 < len(out):
            gap = out[i + 1][0] - seg[1]
            if gap < 2 * pad:
                seg[1] += gap // 2
                out[i + 1][0] = max(0, out[i + 1][0] - gap // 2)
            else:
                seg[1] = min(n_samples, seg[1] + pad)
                out[i + 1][0] = max(0, out[i + 1][0] - pad)
        else:
            seg[1] = min(n_samples, seg[1] + pad)
    return [(a, b) for a, b in out]


def speech_segments(samples: np.ndarray) -> list[Segment]:
    """Speech regions ``[(start, end), ...]`` in samples of 16 kHz audio."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    return segments_from_probs(speech_probs(x), len(x))


def speech_seconds(samples: np.ndarray) -> float:
    """Net speech in 16 kHz audio, in seconds."""
    return sum(b - a for a, b in speech_segments(samples)) / SAMPLE_RATE


def keep_speech(samples: np.ndarray, segments: list[Segment] | None = None) -> np.ndarray:
    """Only the speech regions, concatenated (empty when there is no speech)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    segs = speech_segments(x) if segments is None else segments
    if not segs:
        return np.zeros(0, np.float32)
    return np.concatenate([x[a:b] for a, b in segs])


class VadStream:
    """``speech_probs`` of a signal that arrives in blocks of any size: the network's state and
    context carry over, so the concatenated output equals ``speech_probs`` of the whole."""

    def __init__(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._rest = np.zeros(0, np.float32)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def _run(self, x: np.ndarray) -> np.ndarray:
        sess = _session()
        n = len(x) // WINDOW
        out = np.empty(n, np.float32)
        for i in range(n):
            win = x[i * WINDOW : (i + 1) * WINDOW]
            chunk = np.concatenate([self._context, win])[None, :]
            feed = {"input": chunk, "state": self._state, "sr": self._sr}
            prob, self._state = sess.run(None, feed)
            out[i] = float(prob.reshape(-1)[0])
            self._context = win[-CONTEXT:]
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the complete 512-sample windows received so far."""
        x = np.concatenate([self._rest, np.asarray(samples, np.float32).reshape(-1)])
        n = len(x) // WINDOW * WINDOW
        self._rest = x[n:]
        return self._run(x[:n])

    def flush(self) -> np.ndarray:
        """The last, zero-padded window (if any samples are left)."""
        if not len(self._rest):
            return np.zeros(0, np.float32)
        x = np.zeros(WINDOW, np.float32)
        x[: len(self._rest)] = self._rest
        self._rest = np.zeros(0, np.float32)
        return self._run(x)
