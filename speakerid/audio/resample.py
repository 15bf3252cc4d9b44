"""Sample-rate conversion without torch: torchaudio's default resampler, restated in numpy.

Why: one-shot commands (``verify``, ``identify``) must not pay the ~2 s ``import torch``, and a
48 kHz phone recording needs resampling before anything else. This is the algorithm of
``torchaudio.functional.resample(x, orig, new)`` with its defaults (windowed sinc with a Hann
window, ``lowpass_filter_width=6``, ``rolloff=0.99``): the same kernel, built with the same
float32/float64 steps, applied as a strided polyphase filter, so the output agrees with
torchaudio's to float32 rounding (tests: max |diff| below 1e-6 on speech).
"""

from __future__ import annotations

import functools
import math

import numpy as np

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@functools.lru_cache(maxsize=16)
def sinc_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """``[new, 2 * width + orig]`` float32 polyphase kernel and ``width`` (rates in lowest terms).

    Step for step ``torchaudio.functional._get_sinc_resample_kernel`` (sinc_interp_hann)."""
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    # torchaudio builds this ramp in float32 (default dtype) before adding the float64 one
    phase = np.arange(0, -new, -1, dtype=np.float32)[:, None] / np.float32(new)
    t = (phase.astype(np.float64) + idx) * base
    t = np.clip(t, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = np.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel *= window * (base / orig)
    return kernel.astype(np.float32), width


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """``samples`` (1-D float32) from ``orig_rate`` to ``new_rate`` Hz, like torchaudio."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if orig_rate == new_rate:
        return x
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = sinc_kernel(orig, new)
    length = x.shape[0]
    padded = np.concatenate([np.zeros(width, np.float32), x, np.zeros(width + orig, np.float32)])
    taps = kernel.shape[1]
    frames = (padded.shape[0] - taps) // orig + 1
    view = np.lib.stride_tricks.as_strided(
        padded, (frames, taps), (orig * padded.strides[0], padded.strides[0]), writeable=False
    )
    out = (view @ kernel.T).reshape(-1)  # [frames, new] -> phase-interleaved samples
    target = math.ceil(np.float32(new * length / orig))  # torchaudio rounds it via float32
    return np.ascontiguousarray(out[:target], dtype=np.float32)
