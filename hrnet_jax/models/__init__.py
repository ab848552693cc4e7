"""HRNet model family: backbone (stem, streams, exchange units, stages), representation heads, registry.

``create`` returns the architecture under an execution policy (:mod:`hrnet_jax.execution`)."""
from hrnet_jax.execution import ExecutionPolicy, PolicyModel
from hrnet_jax.models.backbone import CONFIGS, HRNetConfig
from hrnet_jax.models.model import HEADS, HRNet
from hrnet_jax.models.registry import create, list_models
from hrnet_jax.models.stage import StageConfig

__all__ = ["CONFIGS", "ExecutionPolicy", "HEADS", "HRNet", "HRNetConfig", "PolicyModel", "StageConfig", "create",
           "list_models"]
