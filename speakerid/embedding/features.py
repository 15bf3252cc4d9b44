"""The official ERes2NetV2 front end: 80-bin Kaldi fbank (dither 0) minus its time mean.

Three implementations of one definition (``torchaudio.compliance.kaldi.fbank``, which the
official pipeline calls): :func:`fbank` calls torchaudio itself (the reference, PyTorch
backend); :func:`fbank_batch` batches it on a device (CUDA); :func:`fbank_numpy` restates it in
numpy for the ONNX Runtime backend, so that one-shot commands never import torch (agreement:
max |diff| ~1e-5 on the official fixtures, tests allow 1e-4 like the fixtures themselves).
torch is imported only by the first two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..audio.decode import SAMPLE_RATE

if TYPE_CHECKING:  # pragma: no cover
    import torch

NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
#: FFT size Kaldi rounds the 400-sample window up to.
PADDED_WINDOW = 512
PREEMPHASIS = 0.97
WINDOW = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400 samples
HOP = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160 samples


def num_frames(num_samples: int) -> int:
    """Frames Kaldi fbank produces for ``num_samples`` (snip_edges=True)."""
    return 0 if num_samples < WINDOW else 1 + (num_samples - WINDOW) // HOP


def fbank(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[T, 80]`` mean-normalized log-mel filterbank of 16 kHz samples in [-1, 1]."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.as_tensor(samples, dtype=torch.float32)
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    feats = kaldi.fbank(
        wav,
        num_mel_bins=NUM_MEL_BINS,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        sample_frequency=SAMPLE_RATE,
        dither=0.0,
    )
    return feats - feats.mean(dim=0, keepdim=True)


_MEL_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _mel_and_window(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi's mel filterbank (``[257, 80]``) and povey window, built once per device."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    key = str(device)
    if key not in _MEL_CACHE:
        banks, _ = kaldi.get_mel_banks(
            NUM_MEL_BINS, PADDED_WINDOW, SAMPLE_RATE, 20.0, 0.0, 100.0, -500.0, 1.0
        )
        banks = torch.nn.functional.pad(banks.float(), (0, 1)).T.contiguous().to(device)
        window = torch.hann_window(WINDOW, periodic=False, dtype=torch.float32).pow(0.85)
        _MEL_CACHE[key] = (banks, window.to(device))
    return _MEL_CACHE[key]


def fbank_batch(
    waves: Sequence[np.ndarray | torch.Tensor], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """:func:`fbank` of many waveforms at once, computed on ``device``.

    The frames of all inputs go through DC removal, pre-emphasis, the povey window, one FFT,
    the mel matrix product and the log together, so a GPU does one large job instead of many
    tiny ones (per-utterance CPU fbank is what limits a batched GPU network). The arithmetic is
    Kaldi's (torchaudio's) step for step; results agree with :func:`fbank` to float rounding
    (tests: max |diff| < 1e-4, like the official fixtures).
    """
    import torch

    device = torch.device(device)
    flat = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waves]
    counts = [num_frames(t.numel()) for t in flat]
    if not any(counts):
        return [torch.zeros(0, NUM_MEL_BINS, device=device) for _ in counts]
    # one host-to-device copy for the whole chunk (inputs already on a device, as in
    # training, are joined there), then each input's frames as a strided view
    if all(t.device.type == "cpu" for t in flat):
        joined = torch.cat(flat).to(device)
    else:
        joined = torch.cat([t.to(device) for t in flat])
    frames, start = [], 0
    for t, n in zip(flat, counts):
        if n:
            frames.append(joined[start : start + t.numel()].unfold(0, WINDOW, HOP))
        start += t.numel()
    x = torch.cat(frames)  # [all frames, 400]
    x = x - x.mean(dim=1, keepdim=True)
    prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    banks, window = _mel_and_window(device)
    x = (x - PREEMPHASIS * prev) * window
    spec = torch.fft.rfft(x, n=PADDED_WINDOW).abs().pow(2.0)
    eps = torch.tensor(torch.finfo(torch.float32).eps, device=device)
    mel = torch.max(spec @ banks, eps).log()
    # each input's time mean, for all inputs in three kernels (not two per input)
    sizes = torch.tensor(counts, device=device)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=device), sizes)
    sums = torch.zeros(len(counts), NUM_MEL_BINS, device=device).index_add_(0, owner, mel)
    mel = mel - (sums / sizes.clamp(min=1)[:, None].to(mel.dtype))[owner]
    return list(torch.split(mel, counts))


@functools.lru_cache(maxsize=1)
def mel_banks() -> np.ndarray:
    """Kaldi's triangular mel filterbank as ``[257, 80]`` float32 (``get_mel_banks`` with
    low 20 Hz, high Nyquist, no VTLN; the last FFT bin gets weight 0, as in torchaudio).

    Built with torchaudio's float32 steps (max |diff| to its matrix ~1e-5: its float32 log
    is not always correctly rounded, ours is)."""
    f32 = np.float32
    low = 1127.0 * math.log(1.0 + 20.0 / 700.0)
    high = 1127.0 * math.log(1.0 + SAMPLE_RATE / 2 / 700.0)
    delta = f32((high - low) / (NUM_MEL_BINS + 1))
    b = np.arange(NUM_MEL_BINS, dtype=f32)[:, None]
    left, center, right = (((b + f32(k)) * delta + f32(low)) for k in (0, 1, 2))
    freq = f32(SAMPLE_RATE / PADDED_WINDOW) * np.arange(PADDED_WINDOW // 2, dtype=f32)
    ratio = (f32(1.0) + freq / f32(700.0)).astype(np.float64)
    mel = (f32(1127.0) * np.log(ratio).astype(f32))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down))  # [80, 256]
    banks = np.pad(banks, ((0, 0), (0, 1)))  # the Nyquist bin is not used
    return np.ascontiguousarray(banks.T, dtype=f32)


@functools.lru_cache(maxsize=1)
def povey_window() -> np.ndarray:
    """Kaldi's "povey" window: a symmetric Hann window to the power 0.85."""
    n = np.arange(WINDOW, dtype=np.float64)
    return ((0.5 - 0.5 * np.cos(2 * math.pi * n / (WINDOW - 1))) ** 0.85).astype(np.float32)


def fbank_numpy(samples: np.ndarray, subtract_mean: bool = True) -> np.ndarray:
    """:func:`fbank` without torch: ``[T, 80]`` float32 from 16 kHz samples in [-1, 1].

    Kaldi's steps in torchaudio's order and precision (float32): snip_edges framing, DC removal
    per frame, pre-emphasis 0.97 with the first sample repeated, povey window, 512-point power
    spectrum, mel product, log floored at float32 epsilon, then minus the time mean. Only the
    FFT differs (numpy's pocketfft vs PyTorch's), so the two agree to float32 rounding: ~5e-5 on
    the official fixtures; on real speech up to ~2e-3 in near-silent mel bins, which is the
    size of torchaudio's own float32 error there (its float32 vs float64 result: 1.6e-3).
    ``subtract_mean=False``: the log-mel frames as they are (window embeddings subtract a mean
    of their own).
    """
    x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    n = num_frames(x.shape[0])
    if n == 0:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        x, (n, WINDOW), (HOP * x.strides[0], x.strides[0]), writeable=False
    )
    frames = frames - frames.mean(axis=1, keepdims=True, dtype=np.float32)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - np.float32(PREEMPHASIS) * prev) * povey_window()
    spec = np.fft.rfft(frames, n=PADDED_WINDOW)  # complex64 for float32 input (numpy >= 2)
    power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32, copy=False)
    feats = np.log(np.maximum(power @ mel_banks(), np.finfo(np.float32).eps))
    return feats - feats.mean(axis=0, keepdims=True) if subtract_mean else feats
