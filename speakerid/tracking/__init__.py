"""Who speaks when: speaker tracking (diarization named by the registry), see ``pipeline``."""

from .pipeline import track

__all__ = ["track"]
