"""Classification experiments. ``cls_synthetic``: a tiny conv net on synthetic coloured shapes (CPU, seconds);
``cls_hrnet_w18_small_synthetic``: the same data through HRNet-W18-small-v1."""
from hrnet_jax.tasks.classification.task import task_defaults
from hrnet_jax.training.defaults import default_config


def cls_synthetic():
    return default_config(
        total_steps=200, batch_size=32, seed=0, log_every=20, checkpoint_every=100,
        evals=dict(val=dict(every=100, steps=0)), best_metric="val/top1",
        model=dict(name="tiny_cnn", width=16),
        optimizer=dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                       decay_bn_bias=False, schedule="cosine", warmup_steps=10),
        task=task_defaults(num_classes=8, image_size=32, train_examples=4096, eval_examples=256),
    )


def cls_hrnet_w18_small_synthetic():
    cfg = cls_synthetic()
    cfg.model = dict(name="hrnet_w18_small_v1", dtype="float32", arch={})
    cfg.task.image_size = 64
    return cfg


EXPERIMENTS = {
    "cls_synthetic": cls_synthetic,
    "cls_hrnet_w18_small_synthetic": cls_hrnet_w18_small_synthetic,
}
