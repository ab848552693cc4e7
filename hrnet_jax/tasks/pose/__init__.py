"""Top-down human pose estimation (HRNetV1 heatmaps).

Modules: ``targets`` (Gaussian heatmaps), ``loss`` (JointsMSE / OHKM), ``decode`` (device-side decoding, flip
fusion, back-projection), ``evaluate`` (rescoring, OKS-NMS, COCOeval with per-dataset sigmas), ``pipeline``
(per-example transforms and datasets), ``task`` (PoseTask). The keypoint spec lives in
:mod:`hrnet_jax.data.keypoints`.
"""
