"""The core every front calls: the ``SpeakerID`` facade (``facade``), probe answers
(``probes``: identify, verify, compare), enrollment (``enrollment``) and the multi-speaker
guard (``guard``) that keeps a recording with several voices from being enrolled or answered.

Every rule lives here once; the CLI, the HTTP server and the client only translate. Imports
audio, embedding, scoring, tracking and registry, never a front.
"""

from .facade import SpeakerID

__all__ = ["SpeakerID"]
