"""Training and fine-tuning of ERes2NetV2 speaker embedders (``speakerid train``)."""
