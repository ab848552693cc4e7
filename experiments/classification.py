"""Classification experiments: HRNet-Wx-C ImageNet pretraining, the offline ``cls_demo``, and loop tests.

ImageNet recipes (HRNet/HRNet-Image-Classification ``experiments/*.yaml``; every width, the small ones included):
SGD nesterov, momentum 0.9, lr 0.05, weight decay 1e-4 on every parameter, global batch 128, 100 epochs, lr
×0.1 at epochs 30 / 60 / 90 (step schedule), plain cross-entropy; ``RandomResizedCrop(224)`` + flip, evaluation
``Resize(256) + CenterCrop(224)``. Steps are computed from ImageNet-1k's 1,281,167 training images.

``cls_w32_in1k_pod`` (and ``cls_w{18,48,64}_in1k_pod``): the large-batch recipe for a TPU pod slice / GPU
cluster: global batch 4096, lr linearly scaled (0.1 per 256 → 1.6) with 5 warm-up epochs, cosine to 0, label
smoothing 0.1, bf16 compute with fp32 parameters / optimizer state / BN statistics, EMA of the weights (decay
0.9995) evaluated beside the raw weights (``val_ema/top1``), weight decay off BN and biases, 16 grain worker
processes per host; ``--config.task.mixup_alpha=0.2 --config.task.cutmix_alpha=1.0`` turns on batch mixing (on
device). W64 shards parameters and optimizer state (FSDP) over the mesh.

Data: ``task.data_dir`` is a TFDS ``data_dir`` holding a prepared ``imagenet2012`` (ArrayRecord; may be ``gs://``),
or, with ``--config.task.source=folder --config.task.eval_split=val``, the folder layout
``data_dir/{train,val}/<wnid>/*.JPEG``.

``cls_demo``: prepares the synthetic ``cls_demo`` TFDS dataset (ten procedural object classes, JPEG at 240-400 px;
:mod:`hrnet_jax.data.synthetic.classification`) into ``data/cls_demo`` on first use and trains a narrow HRNet-C
through the same TFDS → grain → decode → RandomResizedCrop / resize-centre-crop path as ImageNet.

``cls_synthetic`` / ``cls_hrnet_w18_small_synthetic``: in-memory coloured shapes (loop tests, seconds).
"""
from hrnet_jax.tasks.classification.task import task_defaults
from hrnet_jax.training.defaults import default_config

IMAGENET_TRAIN = 1281167
IMAGENET_VAL = 50000


def _imagenet(model: str, *, batch: int = 128, epochs: int = 100, lr: float = 0.05, fsdp: bool = False):
    spe = -(-IMAGENET_TRAIN // batch)  # steps per epoch
    return default_config(
        total_steps=epochs * spe, batch_size=batch, seed=0, log_every=100,
        evals=dict(val=dict(every=5 * spe, steps=0)), checkpoint_every=spe, keep_checkpoints=3,
        best_metric="val/top1",
        model=dict(name=model, dtype="float32", arch={}),
        optimizer=dict(name="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_bn_bias=True,
                       schedule="step", boundaries=(30 * spe, 60 * spe, 90 * spe), decay_factor=0.1),
        sharding=dict(fsdp=fsdp, fsdp_min_bytes=2 ** 18),  # W64: shard every tensor >= 256 KiB
        task=task_defaults(source="tfds", tfds_name="imagenet2012", data_dir="data/tfds", train_split="train",
                           eval_split="validation", num_classes=1000, image_size=224, eval_resize=256,
                           eval_crop=224, rrc_scale=(0.08, 1.0), flip=True, read_workers=8, read_threads=2,
                           read_prefetch_batches=2),
    )


def _pod(model: str, *, batch: int = 4096, epochs: int = 100, fsdp: bool = False):
    cfg = _imagenet(model, batch=batch, epochs=epochs, fsdp=fsdp)
    spe = -(-IMAGENET_TRAIN // batch)
    cfg.model.dtype = "bfloat16"
    cfg.log_every = 50
    cfg.evals = dict(val=dict(every=2 * spe, steps=0))
    for k, v in dict(lr=0.1 * batch / 256, schedule="cosine", warmup_steps=5 * spe, warmup_init_lr=0.0,
                     end_lr=0.0, decay_bn_bias=False, boundaries=(), ema_decay=0.9995).items():
        cfg.optimizer[k] = v
    cfg.best_metric = "val_ema/top1"
    for k, v in dict(label_smoothing=0.1, read_workers=16, read_threads=4, read_prefetch_batches=2).items():
        cfg.task[k] = v
    return cfg


def _named(width: str, fsdp: bool = False):
    return lambda: _imagenet(f"hrnet_{width}", fsdp=fsdp)


# A narrow HRNet-C for the CPU demo and the scale tests (BasicBlocks, one module per stage).
DEMO_ARCH = dict(stem_width=32, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(16,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(16, 32)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(16, 32, 64, 128)),
))

DEMO_STEPS = 300


def cls_demo():
    """Synthetic ImageNet-like TFDS dataset (10 classes, 2000 train / 500 val JPEGs), the narrow ``DEMO_ARCH``
    HRNet-C at 32x32 crops (``RandomResizedCrop`` of the 240-400 px JPEGs, scale 0.35-1; eval: resize 37 → centre
    32), 300 steps of batch 64, SGD nesterov lr 0.05 with cosine, label smoothing 0.1. Measured from a cold start
    (data generated, empty compilation cache) on the shared 2-core CPU at load average 6-8: val/top1 88.0 in
    4 min 47 s."""
    total = DEMO_STEPS
    return default_config(
        total_steps=total, batch_size=64, seed=0, log_every=25, checkpoint_every=total, keep_checkpoints=1,
        evals=dict(val=dict(every=total, steps=0)), best_metric="val/top1",
        model=dict(name="hrnet_w18_small_v1", dtype="float32", arch=DEMO_ARCH),
        optimizer=dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-5, decay_bn_bias=False,
                       schedule="cosine", warmup_steps=30, end_lr=0.0),
        task=task_defaults(source="tfds", tfds_name="cls_demo", data_dir="data/cls_demo",
                           synthetic=dict(num_train=2000, num_val=500, seed=0), train_split="train",
                           eval_split="validation", num_classes=10, image_size=32, eval_resize=37, eval_crop=32,
                           rrc_scale=(0.35, 1.0), flip=True, label_smoothing=0.1, read_workers=0, read_threads=2,
                           read_prefetch_batches=4, eval_batch_size=0),
    )


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
    "cls_demo": cls_demo,
    "cls_w18_small_v1_in1k": _named("w18_small_v1"),
    "cls_w18_small_v2_in1k": _named("w18_small_v2"),
    "cls_w18_in1k": _named("w18"),
    "cls_w30_in1k": _named("w30"),
    "cls_w32_in1k": _named("w32"),
    "cls_w40_in1k": _named("w40"),
    "cls_w44_in1k": _named("w44"),
    "cls_w48_in1k": _named("w48"),
    "cls_w64_in1k": _named("w64", fsdp=True),
    "cls_w18_in1k_pod": lambda: _pod("hrnet_w18"),
    "cls_w32_in1k_pod": lambda: _pod("hrnet_w32"),
    "cls_w48_in1k_pod": lambda: _pod("hrnet_w48"),
    "cls_w64_in1k_pod": lambda: _pod("hrnet_w64", fsdp=True),
}
