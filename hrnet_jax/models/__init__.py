"""HRNet model family: backbone (stem, streams, exchange units, stages), representation heads, registry."""
from hrnet_jax.models.backbone import CONFIGS, HRNetConfig
from hrnet_jax.models.model import HEADS, HRNet
from hrnet_jax.models.registry import create, list_models
from hrnet_jax.models.stage import StageConfig

__all__ = ["CONFIGS", "HEADS", "HRNet", "HRNetConfig", "StageConfig", "create", "list_models"]
