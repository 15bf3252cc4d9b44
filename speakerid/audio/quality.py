"""Recording quality: net speech (Silero VAD), clipping ratio and an energy-based SNR estimate.

Speech seconds and silence trimming come from the Silero VAD (``speakerid.audio.vad``): a neural
detector that, unlike an energy threshold, does not count noise, music or tones as speech, so a
recording of noise has no speech and is refused at enrollment and as a probe. Trimming keeps
``TRIM_PAD_MS`` of context around each speech segment.

SNR (energy based, documented rule): 25 ms frames every 10 ms; a frame is loud when its energy
is above ``max(-55 dBFS, p95 - 30 dB, noise + 6 dB)``, where p95 is the 95th percentile of frame
energies and noise the mean energy of the quietest 10 % of frames, widened by 100 ms on each
side. SNR = power of the loud frames over noise power (dB). Clipping = fraction of samples whose
magnitude is at least 0.999 of full scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .vad import keep_speech, segments_from_probs, speech_probs

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
#: Context kept around each speech segment when trimming (``--vad``): this model loses accuracy
#: when embeddings see only the tight speech segments (docs/accuracy.md).
TRIM_PAD_MS = 300


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


def energy_mask(samples: np.ndarray) -> np.ndarray:
    """Per-frame loud/quiet decisions (10 ms hop) of the energy rule above (for the SNR)."""
    energy = _frame_energy_db(np.asarray(samples, dtype=np.float32))
    quiet = np.sort(energy)[: max(1, len(energy) // 10)]
    noise = 10 * np.log10(np.mean(10 ** (quiet / 10)))
    thr = max(-55.0, float(np.percentile(energy, 95)) - 30.0, noise + 6.0)
    mask = energy > thr
    if mask.any() and HANGOVER_FRAMES:
        kernel = np.ones(2 * HANGOVER_FRAMES + 1)
        mask = np.convolve(mask.astype(float), kernel, mode="same") > 0
    return mask


def measure(samples: np.ndarray, probs: np.ndarray | None = None) -> Quality:
    """Speech seconds (Silero; pass ``vad.speech_probs`` if already computed), clipping ratio
    and SNR of 16 kHz samples in [-1, 1]."""
    x = np.asarray(samples, dtype=np.float32)
    segs = segments_from_probs(speech_probs(x) if probs is None else probs, len(x))
    energy = _frame_energy_db(x)
    mask = energy_mask(x)
    quiet = np.sort(energy)[: max(1, len(energy) // 10)]
    noise_p = float(np.mean(10 ** (quiet / 10)))
    speech_p = float(np.mean(10 ** (energy[mask] / 10))) if mask.any() else noise_p
    snr = 10 * np.log10(max(speech_p - noise_p, 1e-12) / max(noise_p, 1e-12))
    return Quality(
        len(x) / SAMPLE_RATE,
        sum(b - a for a, b in segs) / SAMPLE_RATE,
        float(np.mean(np.abs(x) >= CLIP_LEVEL)),
        float(min(snr, 99.0)),
    )


def trim_silence(samples: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """The Silero VAD's speech regions with ``TRIM_PAD_MS`` of context on each side,
    concatenated (unchanged when no speech is found). ``probs``: ``vad.speech_probs(samples)``."""
    x = np.asarray(samples, dtype=np.float32)
    probs = speech_probs(x) if probs is None else probs
    speech = keep_speech(x, segments_from_probs(probs, len(x), pad_ms=TRIM_PAD_MS))
    return speech if len(speech) else x
