"""Generators of synthetic datasets on disk: ``pose`` (COCO-format keypoints), ``segmentation`` (Cityscapes-format
street scenes), ``classification`` (an ImageNet-like TFDS dataset)."""
