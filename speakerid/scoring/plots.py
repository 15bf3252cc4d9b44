"""DET curve and score histogram as PNG (matplotlib, an optional dependency).

Both plots mark the EER point and the chosen threshold and are titled with the model and the
trial counts; the title and the marker labels are also stored in each PNG's text chunks
(``Title``, ``Description``) so that scripts and tests can read what a plot shows.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from ..errors import InvalidInputError
from .metrics import det_curve, eer

AXIS = (5e-4, 0.6)  # DET axis range (rates)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInputError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def _save(fig, path: Path, title: str, notes: list[str]) -> None:
    meta = {"Title": title, "Description": "; ".join(notes)}
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata=meta)


def write_plots(
    directory: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    threshold: float | None = None,
    model: str | None = None,
) -> list[Path]:
    """``det.png`` (one curve per label) and ``scores.png`` (histogram of the first curve).

    ``threshold`` is the chosen operating threshold on the first curve's scale.
    """
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    target, nontarget = next(iter(curves.values()))
    title = f"{len(target):,} target / {len(nontarget):,} non-target trials"
    title = f"{model}: {title}" if model else title
    clip = lambda p: min(max(p, AXIS[0]), AXIS[1])  # noqa: E731 - keep markers on the axes
    probit = np.vectorize(lambda p: NormalDist().inv_cdf(min(max(p, 1e-4), 1 - 1e-4)))
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5]
    fig, ax = plt.subplots(figsize=(5, 5))
    notes: list[str] = []
    for n, (label, (tgt, non)) in enumerate(curves.items()):
        _, p_miss, p_fa = det_curve(tgt, non)
        keep = (p_miss > 0) & (p_miss < 1) & (p_fa > 0) & (p_fa < 1)  # finite on probit axes
        (line,) = ax.plot(probit(p_fa[keep]), probit(p_miss[keep]), label=label)
        rate, thr = eer(tgt, non)
        note = f"{label} EER {100 * rate:.2f}% at {thr:.4f}"
        ax.plot(*probit([clip(rate)] * 2), "o", color=line.get_color(), label=note, clip_on=False)
        notes.append(note)
        if n == 0 and threshold is not None:
            far = float(np.mean(non >= threshold))
            frr = float(np.mean(tgt < threshold))
            note = f"threshold {threshold:.4f}: FAR {100 * far:.2f}% FRR {100 * frr:.2f}%"
            ax.plot(probit(clip(far)), probit(clip(frr)), "s", color="k", label=note, clip_on=False)
            notes.append(note)
    lo, hi = probit(list(AXIS))
    ax.plot([lo, hi], [lo, hi], color="0.8", linewidth=0.8)  # the EER diagonal
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title(f"DET curve\n{title}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    det = directory / "det.png"
    _save(fig, det, title, notes)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(target.min(), nontarget.min()), max(target.max(), nontarget.max()), 60)
    ax.hist(nontarget, bins=bins, alpha=0.6, density=True, label="different speakers")
    ax.hist(target, bins=bins, alpha=0.6, density=True, label="same speaker")
    rate, thr = eer(target, nontarget)
    notes = [f"EER threshold {thr:.4f} (EER {100 * rate:.2f}%)"]
    ax.axvline(thr, color="tab:red", linestyle=":", label=notes[0])
    if threshold is not None:
        notes.append(f"threshold {threshold:.4f}")
        ax.axvline(threshold, color="k", linestyle="--", label=notes[-1])
    ax.set_xlabel(f"score ({next(iter(curves))})")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    hist = directory / "scores.png"
    _save(fig, hist, title, notes)
    plt.close(fig)
    return [det, hist]
