"""Audio to voiceprints: the Kaldi fbank front end (``features``), the ERes2NetV2 network
(``models``), the model table and checkpoints (``weights``), where and how the network runs
(``runtime``: device, threads, precision, processor checks; ``onnx_backend``), the
``Embedder`` itself, and window embeddings of long recordings (``windows``) that tracking and
the multi-speaker guard share.

Imports only ``speakerid.audio`` below it (and errors, config, results).
"""
