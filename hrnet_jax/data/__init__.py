"""The data layer, shared by every task (it imports nothing from ``hrnet_jax.tasks``).

``pipeline`` (the grain pipeline builder: sharding, shuffling, bad-record skipping and counting, eval padding,
bounded read-ahead, worker processes), ``keypoints`` (KeypointSpec, COCO17, MPII16), ``sources`` (random-access
record sources: COCO keypoints, synthetic shapes), ``ops`` (image reading, crop geometry), ``synthetic``
(generators of synthetic datasets on disk).
"""
