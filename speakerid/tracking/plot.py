"""Timeline of a ``track`` result as PNG (matplotlib, optional): one row per speaker.

Enrolled speakers are drawn in colour, unknown voices in grey. The title and a one-line
summary per speaker are also stored in the PNG's text chunks (``Title``, ``Description``), so
scripts and tests can read what a plot shows.
"""

from __future__ import annotations

from pathlib import Path

from ..results import TrackResult
from ..scoring.plots import _pyplot


def write_timeline(result: TrackResult, path: str | Path) -> Path:
    """Draw ``result`` to ``path`` (PNG) and return the path."""
    plt = _pyplot()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    speakers = result.speakers
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.45 * max(1, len(speakers))))
    colours = plt.get_cmap("tab10")
    named = 0
    notes = []
    for row, spk in enumerate(speakers):
        bars = [(s.start, s.end - s.start) for s in result.segments if s.speaker == spk.speaker]
        if spk.enrolled:
            colour = colours(named % 10)
            named += 1
        else:
            colour = "0.55"
        ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=colour)
        kind = "enrolled" if spk.enrolled else "not enrolled"
        notes.append(f"{spk.speaker} ({kind}): {spk.seconds:.1f} s in {len(bars)} segments")
    ax.set_yticks(range(len(speakers)), [s.speaker for s in speakers])
    ax.set_ylim(len(speakers) - 0.5, -0.5)
    ax.set_xlim(0, max(result.duration, 1e-3))
    ax.set_xlabel("time (s)")
    ax.grid(True, axis="x", alpha=0.3)
    title = f"{Path(result.file).name}: {result.duration:.1f} s, {len(speakers)} speakers"
    ax.set_title(title, fontsize=10)
    fig.savefig(
        path,
        dpi=120,
        bbox_inches="tight",
        metadata={"Title": title, "Description": "; ".join(notes)},
    )
    plt.close(fig)
    return path
