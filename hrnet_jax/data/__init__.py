"""Data: COCO-format keypoint loading, crop/augmentation transforms, synthetic datasets."""
