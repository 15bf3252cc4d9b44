"""The suite's numeric tolerances, each from an error budget instead of one machine's digits.

Two correct float32 computations of the same quantity that differ only in the order of their
operations -- another SIMD width (AVX2 vs AVX-512), thread count, batch, backend -- differ by
about (rounding steps that differ) x u x (magnitude), with u = 2**-24 ~ 6.0e-8 the unit
round-off. Each bound below states that estimate and a margin, and says what a real defect
costs, so a bound that passes here cannot hide one. The measured values quoted were taken on
this project's Intel Xeon (AVX-512, AMX) under three oneDNN/ATen code paths -- native,
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (what an AVX2-only CPU such as AMD EPYC
runs) and ``ATEN_CPU_CAPABILITY=default`` -- at 1 and 2 threads (``make test-avx2`` runs the
whole suite on the AVX2 path).
"""

from __future__ import annotations

import numpy as np

#: float32 unit round-off.
U = 2.0**-24

# --- Kaldi fbank -------------------------------------------------------------------------------
#: A log mel energy's absolute error is its energy's relative error. The FFT (9 butterfly
#: stages of 512 points) and the power and mel sums (<= 25 terms) leave an error of about
#: 40 u of the FRAME's energy in each bin, so a bin r times quieter than the frame's loudest
#: bin carries ~40 u r in its log: near-silent bins (r ~ 1e7 in real speech) are not determined
#: by float32 at all. Per element: |d| <= FBANK_ABS + FBANK_REL * r.
FBANK_REL = 64 * U  # ~3.8e-6; measured need <= 13.4 u (the official goldens, 3 code paths)
#: Rounding of the log and of the mean subtraction at |x| < 32 (2 ulp = 7.6e-6), plus the
#: per-bin mean over up to 3,000 frames, whose float32 sum differs between summation orders by
#: up to log2(3000) u |x| ~ 2.3e-5: 3.1e-5. Measured in loud bins (r < 10): <= 1.3e-5.
FBANK_ABS = 4e-5


def fbank_budget(samples: np.ndarray) -> np.ndarray:
    """Per-element tolerance ``FBANK_ABS + FBANK_REL * r`` for the fbank of ``samples`` (16 kHz,
    float in [-1, 1]): ``r`` is how much quieter each bin is than its frame's loudest bin,
    from a float64 fbank of the same samples."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wave = torch.as_tensor(np.asarray(samples), dtype=torch.float64)[None]
    raw = kaldi.fbank(wave, num_mel_bins=80, sample_frequency=16000, dither=0.0)
    r = torch.exp(raw.max(dim=1, keepdim=True).values - raw)
    return (FBANK_ABS + FBANK_REL * r).numpy()


def within_fbank_budget(got, want, samples: np.ndarray) -> bool:
    """Every element of two fbanks of ``samples`` within :func:`fbank_budget`."""
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    return bool((diff <= fbank_budget(samples)).all())


# --- embeddings ------------------------------------------------------------------------------
#: Two computations of one embedding (backends, batch vs alone, thread counts): 1 - cos =
#: theta^2 / 2 for a relative error theta, so 0.99999 allows theta <= 4.5e-3. float32 rounding
#: of the features (~1e-6 relative) amplified ~1e3x by the tiny random fixtures gives theta
#: ~1e-3 at worst (1 - cos 5e-7); measured 1 - cos <= 3.5e-8 (tiny fixture vs its goldens, 3
#: code paths). A wrong layer, weight or mask gives 1 - cos > 1e-2 (swapped AFF inputs: 0.52).
COSINE_SAME = 0.99999
#: A score is a cosine of two embeddings each off by theta <= sqrt(2 (1 - COSINE_SAME)): it
#: moves by at most 2 theta.
SCORE_ATOL = 2 * float(np.sqrt(2 * (1 - COSINE_SAME)))
#: Outputs of one network computed two ways (padded batch vs alone, folded BatchNorm): the
#: deepest path has ~40 layers whose reductions (<= 3 x 3 x 256 terms) differ by ~sqrt(K) u ~
#: 3e-6 relative each: <= 1.2e-4 relative at worst, of the largest output. Measured: 4e-7.
#: Masking errors in padded batches move outputs by > 3 % (tests/test_embedder.py).
NETWORK_RTOL = 1.2e-4

#: The norm of an L2-normalized float32 embedding: each of its 192 components carries <= 2 u
#: relative error from the division, and a float32 norm of 192 squares adds <= log2(192) u
#: (pairwise sums): |norm - 1| <= ~10 u = 6e-7 at worst; allowed 2e-6. An unnormalized
#: embedding is off by far more (raw norms are ~1-20).
NORM_ATOL = 2e-6

# --- resampling ------------------------------------------------------------------------------
#: torchaudio builds its windowed-sinc kernel in float32, at arguments up to 6 pi ~ 19 (ulp
#: 1.9e-6 relative per weight), over ~13 taps weighted by |x| <= 0.6: ~1.5e-5; the convolution's
#: own rounding adds 13 u |x| < 1e-6. Measured: 1.11e-5 (11.025 kHz), the same on every code
#: path. A wrong cutoff or a one-sample phase error moves samples by > 1e-2.
RESAMPLE_ATOL = 4e-5
