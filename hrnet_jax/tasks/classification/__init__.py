"""Image classification: softmax cross-entropy, top-1/top-5. Synthetic coloured shapes for now; ImageNet can
grow from here by swapping the data source."""
from hrnet_jax.tasks.classification.data import SyntheticShapes
from hrnet_jax.tasks.classification.task import ClassificationTask, TinyCNN, TopKEvaluator

__all__ = ["ClassificationTask", "SyntheticShapes", "TinyCNN", "TopKEvaluator"]
