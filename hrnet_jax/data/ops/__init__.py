"""Host-side example operations: ``image`` (reading RGB uint8, ImageNet statistics), ``affine`` (crop geometry)."""
