"""Semantic segmentation (HRNetV2, HRNetV2 + OCR).

Modules: ``loss`` (class-weighted cross-entropy at label resolution, OHEM, OCR's aux + main), ``inference``
(whole image, sliding window, multi-scale + flip), ``metrics`` (confusion matrix → mIoU, per-class IoU, pixel
accuracy), ``task`` (SegmentationTask), ``predict`` (label maps, Cityscapes ids, colour overlays). Class specs,
sources and transforms live in :mod:`hrnet_jax.data` (``classes``, ``sources.segmentation``,
``ops.segmentation``).
"""
