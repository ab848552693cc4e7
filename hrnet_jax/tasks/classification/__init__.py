"""Image classification: softmax cross-entropy, device-side top-1/top-5. Synthetic coloured shapes for now;
ImageNet plugs in as another source of the same task."""
