"""Top-down human pose estimation (HRNetV1 heatmaps): spec, targets, loss, decoding, evaluation, task glue."""
from hrnet_jax.tasks.pose.spec import COCO17, MPII16, KeypointSpec, get_spec

__all__ = ["COCO17", "MPII16", "KeypointSpec", "get_spec"]
