"""The R-CNN box head: mmdet ``SharedFCBBoxHead`` (``ConvFCBBoxHead`` with two shared fcs of 1024), a classifier
over C + 1 classes and class-specific regression (4C). Internally the background is the LAST class (mmdet v2 and
later); :mod:`hrnet_jax.models.detection.checkpoint` reorders mmdet v1 files (background first, 4(C+1) regression
outputs)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

XAVIER = nn.initializers.xavier_uniform()  # ConvFCBBoxHead.init_weights: xavier_uniform fcs, zero bias


class BBoxHead(nn.Module):
    num_classes: int  # foreground classes C
    fc_channels: int = 1024
    num_fcs: int = 2
    dtype: Any = None

    @nn.compact
    def __call__(self, roi_feats):
        """``roi_feats`` (..., 7, 7, C_in) → (cls logits (..., C + 1), deltas (..., C, 4))."""
        lead = roi_feats.shape[:-3]
        # mmdet flattens NCHW RoI features: (C_in, 7, 7) order, so that checkpoint fc weights apply unchanged.
        x = jnp.moveaxis(roi_feats, -1, -3).reshape(*lead, -1)
        for i in range(self.num_fcs):
            x = nn.relu(nn.Dense(self.fc_channels, dtype=self.dtype, kernel_init=XAVIER,
                                 name=f"shared_fcs.{i}")(x))
        cls = nn.Dense(self.num_classes + 1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                       name="fc_cls")(x)
        reg = nn.Dense(4 * self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.001),
                       name="fc_reg")(x)
        return cls.astype(jnp.float32), reg.astype(jnp.float32).reshape(*lead, self.num_classes, 4)
