"""Bottom-up human pose estimation: HigherHRNet with associative embedding (Cheng et al. 2020).

Modules: ``loss`` (masked heatmap MSE at 1/4 and 1/2, associative-embedding push/pull at 1/4), ``inference``
(device side: flip and multi-scale aggregation of the two resolutions, heatmap NMS, top-k candidates per joint),
``grouping`` (host numpy: tag/heatmap matching with the Hungarian assignment, quarter-offset adjustment,
refinement of missing joints, person scores — vectorised over candidates and people), ``task`` (BottomUpTask).
The model is ``hrnet_jax.models.create("higher_hrnet_w32")``. Reference: HRNet/HigherHRNet-Human-Pose-Estimation
(lib/core/loss.py, inference.py, group.py; hrnet-reference.md sections 4.6, 6.6).
"""
