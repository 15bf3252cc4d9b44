"""Speaker embedding networks."""

from .eres2netv2 import ERes2NetV2, ERes2NetV2Config, infer_config

__all__ = ["ERes2NetV2", "ERes2NetV2Config", "infer_config"]
