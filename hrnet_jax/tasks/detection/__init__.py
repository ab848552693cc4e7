"""Object detection (HRNetV2p + Faster R-CNN): loss here; the task, data and evaluation by their modules."""
