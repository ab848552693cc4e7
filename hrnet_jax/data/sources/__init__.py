"""Random-access record sources (``len`` / ``[index]`` or ``load(index)``): ``coco_keypoints``
(CocoKeypointSource), ``segmentation`` (Cityscapes folders, image + label-PNG folders, TFDS), ``imagenet``
(TFDS and folder image classification), ``shapes`` (SyntheticShapes)."""
