"""Waveform augmentation built without an external noise corpus.

- additive noise: babble (the sum of 3-6 *other* crops of the same batch, i.e. other voices
  from the training data) or synthetic coloured noise (white, pink, brown) at a random SNR;
- reverberation: a synthetic room impulse response, exponentially decaying noise with a random
  RT60 and direct-to-reverberant ratio (the Schroeder model of a diffuse field).

Everything is vectorised over a ``[B, N]`` batch and driven by an explicit numpy Generator, so
a resumed run reproduces the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio.decode import SAMPLE_RATE

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise whose power spectrum falls as ``1/f**alpha``."""
    alpha = NOISE_COLOURS[colour]
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spec *= freqs ** (-alpha / 2.0)
    noise = np.fft.irfft(spec, n=n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``clean + g * noise`` with ``g`` chosen so that the power ratio is ``snr_db``."""
    p_clean = float(np.mean(clean.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    gain = np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (clean + gain * noise).astype(np.float32)


def synthetic_rir(
    rt60: float, drr_db: float, rng: np.random.Generator, seconds: float = 0.3
) -> np.ndarray:
    """Impulse response: a unit direct path plus a diffuse tail decaying 60 dB in ``rt60``."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 60 dB in amplitude
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / (np.sum(tail**2) + 1e-12))
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve (FFT), keep the original length and loudness."""
    n = len(wave) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(rir, size), size)[: len(wave)]
    scale = np.sqrt(np.mean(wave.astype(np.float64) ** 2) / (np.mean(out**2) + 1e-12))
    return (out * scale).astype(np.float32)


@dataclass
class Augmenter:
    """Random noise and reverberation for a batch of equal-length crops."""

    p_noise: float = 0.6
    p_reverb: float = 0.3
    p_babble: float = 0.25  # share of noisy crops that get babble rather than coloured noise
    babble_snr: tuple[float, float] = (13.0, 20.0)
    noise_snr: tuple[float, float] = (5.0, 20.0)
    rt60: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (-3.0, 12.0)
    strength: float = 1.0  # 0..1, scales the probabilities (ramped in at the start of training)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.array(batch, dtype=np.float32, copy=True)
        b, n = out.shape
        for i in range(b):
            if rng.random() < self.p_reverb * self.strength:
                rir = synthetic_rir(rng.uniform(*self.rt60), rng.uniform(*self.drr_db), rng)
                out[i] = reverberate(out[i], rir)
            if rng.random() < self.p_noise * self.strength:
                if b > 3 and rng.random() < self.p_babble:
                    others = [j for j in range(b) if j != i]
                    k = int(rng.integers(3, min(6, len(others)) + 1))
                    noise = np.sum(batch[rng.choice(others, size=k, replace=False)], axis=0)
                    snr = rng.uniform(*self.babble_snr)
                else:
                    colour = str(rng.choice(list(NOISE_COLOURS)))
                    noise, snr = coloured_noise(n, colour, rng), rng.uniform(*self.noise_snr)
                out[i] = mix_at_snr(out[i], noise, snr)
        peak = np.abs(out).max(axis=1, keepdims=True)
        return np.where(peak > 1.0, out / np.maximum(peak, 1e-12), out)
