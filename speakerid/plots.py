"""DET curve and score histogram as PNG (matplotlib, an optional dependency)."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from .errors import InvalidInputError
from .metrics import det_curve


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInputError("--plot needs matplotlib: pip install 'speakerid[plots]'") from None
    return plt


def write_plots(
    directory: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    threshold: float | None = None,
) -> list[Path]:
    """``det.png`` (one curve per label) and ``scores.png`` (histogram of the first)."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    probit = np.vectorize(lambda p: NormalDist().inv_cdf(min(max(p, 1e-4), 1 - 1e-4)))
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5]
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (target, nontarget) in curves.items():
        _, p_miss, p_fa = det_curve(target, nontarget)
        keep = (p_miss > 0) & (p_miss < 1) & (p_fa > 0) & (p_fa < 1)  # finite on probit axes
        ax.plot(probit(p_fa[keep]), probit(p_miss[keep]), label=label)
    lo, hi = probit([5e-4, 0.6])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title("DET curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    det = directory / "det.png"
    fig.savefig(det, dpi=120, bbox_inches="tight")
    plt.close(fig)

    target, nontarget = next(iter(curves.values()))
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(target.min(), nontarget.min()), max(target.max(), nontarget.max()), 60)
    ax.hist(nontarget, bins=bins, alpha=0.6, density=True, label="different speakers")
    ax.hist(target, bins=bins, alpha=0.6, density=True, label="same speaker")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend()
    hist = directory / "scores.png"
    fig.savefig(hist, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [det, hist]
