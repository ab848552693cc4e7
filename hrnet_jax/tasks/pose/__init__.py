"""Top-down human pose estimation (HRNetV1 heatmaps): spec, targets, loss, decoding, evaluation, task glue.

Modules: ``spec`` (KeypointSpec, COCO17, MPII16), ``targets`` (Gaussian heatmaps), ``loss`` (JointsMSE / OHKM),
``decode`` (device-side decoding, flip fusion, back-projection), ``evaluate`` (rescoring, OKS-NMS, COCOeval with
per-dataset sigmas), ``pipeline`` (per-example transforms and grain datasets), ``task`` (PoseTask).
"""
from hrnet_jax.tasks.pose.spec import COCO17, MPII16, KeypointSpec, get_spec

__all__ = ["COCO17", "MPII16", "KeypointSpec", "PoseTask", "PoseTaskConfig", "get_spec"]


def __getattr__(name):  # PoseTask lazily: hrnet_jax.data imports the spec module, the task imports hrnet_jax.data
    if name in ("PoseTask", "PoseTaskConfig"):
        from hrnet_jax.tasks.pose import task
        return getattr(task, name)
    raise AttributeError(name)
