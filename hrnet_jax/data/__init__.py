"""The data layer, shared by every task (it imports nothing from ``hrnet_jax.tasks``).

``pipeline`` (the grain pipeline builder: sharding, shuffling, bad-record skipping and counting, eval padding,
bounded read-ahead, worker processes), ``keypoints`` (KeypointSpec, COCO17, MPII16), ``classes`` (ClassSpec:
segmentation classes, colours, ignore index, raw-id mapping; Cityscapes), ``sources`` (random-access record
sources), ``ops`` (image reading, crop geometry, segmentation and classification transforms), ``synthetic``
(generators of synthetic datasets on disk).
"""
