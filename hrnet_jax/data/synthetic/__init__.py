"""Generators of synthetic datasets on disk: ``pose`` (COCO-format keypoints)."""
