"""The loop through the task contract: a toy task written only against tasks.base, device-side metrics worked
by hand, named evals with padding, parameter groups, bf16 compute, init_from."""
import json
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import get_experiment
from hrnet_jax.data import pipeline
from hrnet_jax.tasks.base import Task
from hrnet_jax.train import train
from hrnet_jax.training.config import ConfigError
from hrnet_jax.training.defaults import default_config
from hrnet_jax.training.metrics import Accuracy, Average, ConfusionMatrix

SMALL = {"total_steps": 2, "batch_size": 8, "log_every": 1, "evals.val.every": 2, "checkpoint_every": 2,
         "task.image_size": 16, "model.width": 8, "task.train_examples": 64, "task.eval_examples": 20}

W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


class OffsetRegressor(nn.Module):
    """y = Dense(x) + offset: the forward pass needs a second batch input besides the features."""

    @nn.compact
    def __call__(self, x, offset, train: bool = False):
        return nn.Dense(1, name="dense")(x)[:, 0] + offset


def _toy_example(i: int) -> dict:
    rng = np.random.default_rng(i)
    x = rng.normal(size=4).astype(np.float32)
    off = np.float32(rng.uniform(-1, 1))
    return {"x": x, "offset": off, "y": np.float32(x @ W_TRUE + off)}


class ToyTask(Task):
    """Written only against :class:`hrnet_jax.tasks.base.Task`: an extra forward input, a device metric and a
    host evaluator, two named evals, a frozen parameter group."""
    name = "toy"
    traces = 0

    def build_model(self):
        return OffsetRegressor()

    def train_dataset(self, process_index, process_count):
        ds = grain.MapDataset.range(64).map(_toy_example)[process_index::process_count]
        return ds.shuffle(seed=0).repeat().batch(self.config.batch_size // process_count, drop_remainder=True)

    def eval_dataset(self, name, process_index, process_count):
        n = {"val": 10, "small": 3}[name]
        return pipeline.eval_dataset(n, lambda i: _toy_example(1000 + i), batch_size=4,
                                     process_index=process_index, process_count=process_count)

    def forward(self, apply_fn, variables, batch, *, train, rngs):
        ToyTask.traces += 1
        return apply_fn(variables, batch["x"], batch["offset"], train=train, rngs=rngs)

    def loss(self, preds, batch):
        return jnp.mean((preds - batch["y"]) ** 2), {"abs_err": jnp.mean(jnp.abs(preds - batch["y"]))}

    def metrics(self, preds, batch):
        return {"mse": Average.of((preds - batch["y"]) ** 2, batch.get("valid"))}

    def predict(self, preds, batch):
        return {"pred": preds, "y": batch["y"]}

    def evaluator(self, name):
        class Count:
            rows = 0

            def add(self, outputs):
                Count.rows += len(outputs["pred"])
                self.err = np.max(np.abs(outputs["pred"] - outputs["y"]))

            def result(self):
                return {"rows": float(Count.rows)}
        Count.rows = 0
        return Count()


def _toy_config(**updates):
    return default_config(**{
        "total_steps": 60, "batch_size": 8, "log_every": 20, "checkpoint_every": 30, "keep_checkpoints": 1,
        "evals": {"val": {"every": 30, "steps": 0}, "small": {"every": 60, "steps": 0}},
        "best_metric": "val/mse", "best_mode": "min",
        "optimizer": {"name": "adam", "lr": 0.1}, "task": {"name": "tests:ToyTask"}, **updates})


def test_a_toy_task_on_the_base_class_trains_and_evaluates(tmp_path):
    cfg = _toy_config()
    r = train(cfg, str(tmp_path), task=ToyTask(cfg), quiet=True)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    val = [x for x in rows if "val/mse" in x]
    assert [x["step"] for x in val] == [30, 60] and [x["step"] for x in rows if "small/rows" in x] == [60]
    # the device metric equals numpy's MSE of the final parameters over exactly the 10 real eval rows
    w = np.asarray(r.state.params["dense"]["kernel"])[:, 0]
    b = float(r.state.params["dense"]["bias"][0])
    ex = [_toy_example(1000 + i) for i in range(10)]
    want = np.mean([(e["x"] @ w + b + e["offset"] - e["y"]) ** 2 for e in ex])
    assert val[-1]["val/mse"] == pytest.approx(want, rel=1e-4)
    assert val[-1]["val/rows"] == 10.0 and r.eval_metrics["small/rows"] == 3.0  # 12 / 4 rows read, padding dropped
    assert val[-1]["val/mse"] < 0.05 * np.mean([e["y"] ** 2 for e in ex])       # it learned y = x.w + offset
    assert {"data/val/corrupt_image", "data/val/missing_image"} <= val[-1].keys()
    train_rows = [x for x in rows if "loss" in x]
    assert {"loss", "abs_err", "lr", "grad_norm", "param_norm", "img_per_s"} <= train_rows[0].keys()
    # keep-last-1 plus best by val/mse (min)
    kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert 60 in kept and len(kept) <= 2


def test_parameter_groups_freeze_and_scale(tmp_path):
    class Grouped(ToyTask):
        def param_groups(self, params):
            return {"dense": {"kernel": "body", "bias": "head"}}

    cfg = _toy_config(total_steps=3, log_every=1, checkpoint_every=3, evals={}, best_metric="",
                      optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0,
                                 "groups": {"body": {"frozen": True}, "head": {"lr_mult": 10.0}}})
    task = Grouped(cfg)
    r = train(cfg, str(tmp_path / "g"), task=task, quiet=True)
    ref = train(cfg.override({"optimizer.groups": "{}"}), str(tmp_path / "ref"), task=ToyTask(cfg), quiet=True)
    init = train(cfg.override({"total_steps": 1, "optimizer.lr": 1e-30, "optimizer.groups": "{}"}),
                 str(tmp_path / "init"), task=ToyTask(cfg), quiet=True)
    k0 = np.asarray(init.state.params["dense"]["kernel"])
    np.testing.assert_allclose(np.asarray(r.state.params["dense"]["kernel"]), k0, rtol=0, atol=1e-12)  # frozen
    assert not np.allclose(np.asarray(ref.state.params["dense"]["kernel"]), k0)
    # one step from the same start: the head's bias moves 10x as far as with one group
    one = {"total_steps": 1, "checkpoint_every": 1}
    g1 = train(cfg.override(one), str(tmp_path / "g1"), task=task, quiet=True)
    r1 = train(cfg.override({**one, "optimizer.groups": "{}"}), str(tmp_path / "r1"), task=ToyTask(cfg), quiet=True)
    b0 = float(init.state.params["dense"]["bias"][0])
    db_g = float(g1.state.params["dense"]["bias"][0]) - b0
    db_r = float(r1.state.params["dense"]["bias"][0]) - b0
    assert db_g == pytest.approx(10 * db_r, rel=1e-4) and db_r != 0
    with pytest.raises(ConfigError, match="not parameter groups of this task.*body"):
        bad = _toy_config(total_steps=3, evals={}, best_metric="",
                          optimizer={"name": "sgd", "lr": 0.1, "groups": {"bodyy": {"frozen": True}}})
        train(bad, str(tmp_path / "bad"), task=Grouped(bad), quiet=True)


def test_metric_states_against_numpy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(12, 7)).astype(np.float32), rng.integers(0, 7, 12)
    valid = np.arange(12) < 9
    order = np.argsort(-logits, axis=1)
    for k in (1, 5):
        want = 100.0 * np.mean([labels[i] in order[i, :k] for i in range(9)])
        a = Accuracy.from_logits(jnp.asarray(logits[:5]), jnp.asarray(labels[:5]), k, jnp.asarray(valid[:5]))
        b = Accuracy.from_logits(jnp.asarray(logits[5:]), jnp.asarray(labels[5:]), k, jnp.asarray(valid[5:]))
        assert a.merge(b).compute() == pytest.approx(want)
    # confusion matrix -> mIoU by hand: classes 0..2, 255 ignored, one class never present
    pred = np.array([[0, 0, 1, 1, 2, 0]])
    lab = np.array([[0, 1, 1, 255, 2, 0]])
    cm = ConfusionMatrix.of(jnp.asarray(pred), jnp.asarray(lab), 4).compute()
    tp = [2, 1, 1]
    fp = [1, 0, 0]   # class 0 predicted at the pixel labelled 1
    fn = [0, 1, 0]   # class 1 pixel predicted as 0
    iou = [t / (t + p + n) for t, p, n in zip(tp, fp, fn)]
    assert cm["mIoU"] == pytest.approx(100 * np.mean(iou))
    assert cm["pixel_acc"] == pytest.approx(100 * 4 / 5)


def test_bf16_compute_keeps_fp32_master_weights(tmp_path):
    cfg = get_experiment("cls_synthetic", {**SMALL, "model.dtype": "bfloat16", "evals.val.every": 0})
    r = train(cfg, str(tmp_path), quiet=True)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(r.state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(r.state.opt_state) if x.ndim)
    assert np.isfinite(r.history[-1]["loss"])


def test_classification_eval_equals_numpy_top_k_of_the_final_model(tmp_path):
    """top-1/top-5 come from device metric states merged over padded batches: compare with numpy on the same
    20 examples and the final weights."""
    cfg = get_experiment("cls_synthetic", {**SMALL, "total_steps": 4})
    r = train(cfg, str(tmp_path), quiet=True)
    from hrnet_jax.data.sources.shapes import SyntheticShapes
    from hrnet_jax.tasks import build_task
    from hrnet_jax.tasks.classification.task import top_k_accuracy
    task = build_task(cfg)
    src = SyntheticShapes(20, 8, 16, seed=cfg.seed + 1_000_003)
    images = np.stack([src[i]["image"] for i in range(20)])
    labels = np.array([src[i]["label"] for i in range(20)])
    logits = task.build_model().apply(r.state.variables, task.normalize(jnp.asarray(images)), train=False)
    for k in (1, 5):
        assert r.eval_metrics[f"val/top{k}"] == pytest.approx(top_k_accuracy(np.asarray(logits), labels, k),
                                                              abs=1e-4)


def test_init_from_full_and_matching(tmp_path, capsys):
    from hrnet_jax.training.checkpoint import merge_variables, save_variables
    small = {"total_steps": 1, "batch_size": 8, "log_every": 1, "evals.val.every": 0, "checkpoint_every": 1,
             "task.image_size": 16, "model.width": 8, "task.train_examples": 64, "optimizer.lr": 1e-30,
             "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0}
    src = train(get_experiment("cls_synthetic", {**small, "seed": 1}), str(tmp_path / "src"), quiet=True)
    params = jax.device_get(src.state.params)
    save_variables(str(tmp_path / "full"), {"params": params, "batch_stats": jax.device_get(src.state.batch_stats)})
    r = train(get_experiment("cls_synthetic", {**small, "init_from": str(tmp_path / "full")}), str(tmp_path / "a"))
    assert "0 fresh" in capsys.readouterr().err
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(r.state.params))):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # lr ~0: params are the loaded ones
    backbone = {k: v for k, v in params.items() if k != "head"}
    save_variables(str(tmp_path / "backbone"), {"params": backbone})
    with pytest.raises(ValueError, match="missing from the checkpoint"):  # full mode refuses a partial tree
        merge_variables({"params": params}, {"params": backbone}, "full")
    r = train(get_experiment("cls_synthetic", {**small, "init_from": str(tmp_path / "backbone"),
                                               "init_from_mode": "matching"}), str(tmp_path / "c"))
    err = capsys.readouterr().err
    assert "fresh: params/head/kernel" in err and "fresh: batch_stats/bn0/mean" in err
    np.testing.assert_allclose(params["conv0"]["kernel"], jax.device_get(r.state.params["conv0"]["kernel"]),
                               rtol=1e-6)
    # a checkpoint of one submodule (a classification backbone for a detector's params/backbone) goes under
    # init_from_prefix: its variables land there and nowhere else
    save_variables(str(tmp_path / "sub"), {"params": params["conv0"]})
    r = train(get_experiment("cls_synthetic", {**small, "seed": 2, "init_from": str(tmp_path / "sub"),
                                               "init_from_mode": "matching", "init_from_prefix": "conv0"}),
              str(tmp_path / "d"))
    assert "1 variables loaded" in capsys.readouterr().err
    np.testing.assert_allclose(params["conv0"]["kernel"], jax.device_get(r.state.params["conv0"]["kernel"]),
                               rtol=1e-6)
    assert not np.allclose(params["head"]["kernel"], jax.device_get(r.state.params["head"]["kernel"]))


def test_data_counters_count_consumed_batches_and_survive_a_resume(tmp_path):
    """Per-example ``_stats/*`` fields are summed over the batches the loop consumed (device read-ahead never
    counts) and restored with the checkpoint: compare with the same stream read by hand."""
    class Counting(ToyTask):
        def train_dataset(self, process_index, process_count):
            ds = grain.MapDataset.range(64).map(lambda i: {**_toy_example(i), "_stats/odd": np.int32(i % 2)})
            return ds.shuffle(seed=0).repeat().batch(self.config.batch_size, drop_remainder=True)

    cfg = _toy_config(total_steps=4, log_every=1, checkpoint_every=2, evals={}, best_metric="")
    ref = Counting(cfg).train_dataset(0, 1)
    want = np.cumsum([int(np.sum(ref[i]["_stats/odd"])) for i in range(7)])
    train(cfg, str(tmp_path), task=Counting(cfg), quiet=True)
    r = train(cfg.override({"total_steps": 7}), str(tmp_path), task=Counting(cfg), quiet=True)   # resumes at 4
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if "loss" in line]
    assert [x["step"] for x in rows] == list(range(1, 8))
    assert [x["data/train/odd"] for x in rows] == list(want), (rows, want)
    assert int(r.state.step) == 7
