"""Random-access record sources (``len`` / ``[index]``): ``coco_keypoints`` (CocoKeypointSource), ``shapes``
(SyntheticShapes)."""
