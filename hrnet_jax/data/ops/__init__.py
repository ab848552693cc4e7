"""Host-side example operations: ``image`` (reading RGB uint8, ImageNet statistics), ``affine`` (crop geometry),
``segmentation`` (the official random scale / pad / crop / flip of image and label), ``crops``
(RandomResizedCrop, resize + centre crop)."""
