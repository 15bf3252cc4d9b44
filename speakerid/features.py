"""The official ERes2NetV2 front end: 80-bin Kaldi fbank (dither 0) minus its time mean."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from .audio import SAMPLE_RATE

NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


def num_frames(num_samples: int) -> int:
    """Frames Kaldi fbank produces for ``num_samples`` (snip_edges=True)."""
    win = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)
    hop = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)
    return 0 if num_samples < win else 1 + (num_samples - win) // hop


def fbank(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[T, 80]`` mean-normalized log-mel filterbank of 16 kHz samples in [-1, 1]."""
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
