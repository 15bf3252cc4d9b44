"""Recording quality: energy-based VAD, speech seconds, clipping ratio and an SNR estimate.

VAD (documented rule): 25 ms frames every 10 ms; a frame is speech when its energy is above
``max(-55 dBFS, p95 - 30 dB, noise + 6 dB)``, where p95 is the 95th percentile of frame energies
and noise the mean energy of the quietest 10 % of frames; speech decisions are widened by
100 ms on each side so onsets and offsets are kept. SNR = speech power over noise power (dB),
noise power measured on the quietest 10 % of frames. Clipping = fraction of samples whose
magnitude is at least 0.999 of full scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAME = 400
HOP = 160
HANGOVER_FRAMES = 10
CLIP_LEVEL = 0.999

#: Enrollment refuses recordings with less net speech than this (seconds); see docs/accuracy.md.
MIN_SPEECH_SECONDS = 1.0
#: Enrollment warns below this much speech (EER doubles from whole utterances to 2 s).
WARN_SPEECH_SECONDS = 2.0
#: Enrollment warns above this clipping ratio and below this SNR.
MAX_CLIPPING = 0.01
MIN_SNR_DB = 15.0


@dataclass(frozen=True)
class Quality:
    duration: float
    speech_seconds: float
    clipping: float
    snr_db: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}

    def warnings(
        self, max_clipping: float = MAX_CLIPPING, min_snr_db: float = MIN_SNR_DB
    ) -> list[str]:
        out = []
        if self.speech_seconds < WARN_SPEECH_SECONDS:
            out.append(
                f"short speech ({self.speech_seconds:.1f} s < {WARN_SPEECH_SECONDS:.0f} s):"
                " expect lower accuracy"
            )
        if self.clipping > max_clipping:
            out.append(f"{100 * self.clipping:.1f}% of samples are clipped")
        if self.snr_db < min_snr_db:
            out.append(f"low SNR ({self.snr_db:.1f} dB < {min_snr_db:.0f} dB)")
        return out


def _frame_energy_db(x: np.ndarray) -> np.ndarray:
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    n = 1 + (len(x) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    power = np.mean(np.square(x[idx], dtype=np.float64), axis=1)
    return 10.0 * np.log10(power + 1e-12)


def speech_mask(samples: np.ndarray) -> np.ndarray:
    """Per-frame speech decisions (10 ms hop) of the energy VAD described above."""
    energy = _frame_energy_db(np.asarray(samples, dtype=np.float32))
    quiet = np.sort(energy)[: max(1, len(energy) // 10)]
    noise = 10 * np.log10(np.mean(10 ** (quiet / 10)))
    thr = max(-55.0, float(np.percentile(energy, 95)) - 30.0, noise + 6.0)
    mask = energy > thr
    if mask.any() and HANGOVER_FRAMES:
        kernel = np.ones(2 * HANGOVER_FRAMES + 1)
        mask = np.convolve(mask.astype(float), kernel, mode="same") > 0
    return mask


def measure(samples: np.ndarray) -> Quality:
    """Speech seconds, clipping ratio and SNR of 16 kHz samples in [-1, 1]."""
    x = np.asarray(samples, dtype=np.float32)
    energy = _frame_energy_db(x)
    mask = speech_mask(x)
    quiet = np.sort(energy)[: max(1, len(energy) // 10)]
    noise_p = float(np.mean(10 ** (quiet / 10)))
    speech_p = float(np.mean(10 ** (energy[mask] / 10))) if mask.any() else noise_p
    snr = 10 * np.log10(max(speech_p - noise_p, 1e-12) / max(noise_p, 1e-12))
    speech_s = float(mask.sum()) * HOP / SAMPLE_RATE
    return Quality(
        len(x) / SAMPLE_RATE,
        min(speech_s, len(x) / SAMPLE_RATE),
        float(np.mean(np.abs(x) >= CLIP_LEVEL)),
        float(min(snr, 99.0)),
    )


def trim_silence(samples: np.ndarray) -> np.ndarray:
    """Only the VAD's speech regions, concatenated (unchanged when no speech is found)."""
    x = np.asarray(samples, dtype=np.float32)
    mask = speech_mask(x)
    if not mask.any():
        return x
    keep = np.zeros(len(x), dtype=bool)
    for f in np.flatnonzero(mask):
        keep[f * HOP : f * HOP + FRAME] = True
    return x[keep]
