"""Audio in: decoding every format into 16 kHz mono float32 with a bounded number of
samples (``decode``, ``stream`` for files read in blocks), resampling, the Silero VAD, and the
quality and speech gates that refuse noise, music and silence before any embedding is made.

Owns no model and no registry: it imports only ``speakerid.errors``, ``config`` and
``results``. ``ort_session`` (ONNX Runtime sessions with a cached optimized graph) lives here
because the VAD is its first user; the embedding stage reuses it.
"""
