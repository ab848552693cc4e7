"""The loop's task hooks (eval_forward, predict, evaluator, data_stats), bf16 compute, init_from."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import get_experiment
from hrnet_jax.tasks.classification import ClassificationTask
from hrnet_jax.train import train

SMALL = {"total_steps": 2, "batch_size": 8, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
         "task.image_size": 16, "model.width": 8, "task.train_examples": 64, "task.eval_examples": 20}


class FlipTask(ClassificationTask):
    """Flip-test eval forward (what pose does) and a dataset that reports skipped examples."""
    calls = 0

    def eval_forward(self, apply_fn, variables, batch):
        FlipTask.calls += 1  # counts traces: the eval step is compiled once
        a = apply_fn(variables, batch["image"], train=False)
        b = apply_fn(variables, batch["image"][:, :, ::-1], train=False)
        return (a + b) / 2

    def data_stats(self):
        return {"skipped": 3}


def test_eval_forward_evaluator_and_data_stats(tmp_path):
    cfg = get_experiment("cls_synthetic", {**SMALL, "total_steps": 6, "keep_checkpoints": 1,
                                           "best_metric": "top1", "checkpoint_every": 1})
    r = train(cfg, str(tmp_path), task=FlipTask(cfg), quiet=True)
    assert FlipTask.calls == 1
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    evals = [x for x in rows if "eval/top1" in x]
    assert [x["step"] for x in evals] == [2, 4, 6] and evals[-1] == {"step": 6, **r.eval_metrics}
    # keep-last-1 plus best-by-eval/top1
    best = max(x["eval/top1"] for x in evals)
    kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert 6 in kept and len(kept) <= 2
    assert any(x["step"] in kept and x["eval/top1"] == best for x in evals), (kept, evals)
    assert 0 <= r.eval_metrics["eval/top1"] <= r.eval_metrics["eval/top5"] <= 100
    # 20 eval examples padded to 24: the evaluator saw exactly 20 (top5 of 8 classes: multiples of 5%)
    assert (r.eval_metrics["eval/top5"] * 20 / 100) == pytest.approx(round(r.eval_metrics["eval/top5"] / 5))
    train_rows = [x for x in rows if "loss" in x]
    assert [x["step"] for x in train_rows] == [1, 2, 3, 4, 5, 6]
    for x in train_rows:
        assert {"loss", "lr", "img_per_s", "accuracy", "grad_norm", "data/skipped"} <= x.keys()
    assert json.load(open(tmp_path / "config.json"))["total_steps"] == 6


def test_bf16_compute_keeps_fp32_master_weights(tmp_path):
    cfg = get_experiment("cls_synthetic", {**SMALL, "model.dtype": "bfloat16", "eval_every": 0})
    r = train(cfg, str(tmp_path), quiet=True)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(r.state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(r.state.opt_state) if x.ndim)
    assert np.isfinite(r.history[-1]["loss"])


def test_init_from_full_and_matching(tmp_path, capsys):
    from hrnet_jax.training.checkpoint import merge_variables, save_variables
    small = {"total_steps": 1, "batch_size": 8, "log_every": 1, "eval_every": 0, "checkpoint_every": 1,
             "task.image_size": 16, "model.width": 8, "task.train_examples": 64, "optimizer.lr": 0.0,
             "optimizer.momentum": 0.0}
    src = train(get_experiment("cls_synthetic", {**small, "seed": 1}), str(tmp_path / "src"), quiet=True)
    params = jax.device_get(src.state.params)
    save_variables(str(tmp_path / "full"), {"params": params, "batch_stats": jax.device_get(src.state.batch_stats)})
    r = train(get_experiment("cls_synthetic", {**small, "init_from": str(tmp_path / "full")}), str(tmp_path / "a"))
    assert "0 fresh" in capsys.readouterr().err
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(r.state.params))):
        np.testing.assert_array_equal(a, b)  # lr 0: params are the loaded ones
    backbone = {k: v for k, v in params.items() if k != "head"}
    save_variables(str(tmp_path / "backbone"), {"params": backbone})
    with pytest.raises(ValueError, match="missing from the checkpoint"):  # full mode refuses a partial tree
        merge_variables({"params": params}, {"params": backbone}, "full")
    r = train(get_experiment("cls_synthetic", {**small, "init_from": str(tmp_path / "backbone"),
                                               "init_from_mode": "matching"}), str(tmp_path / "c"))
    err = capsys.readouterr().err
    assert "fresh: params/head/kernel" in err and "fresh: batch_stats/bn0/mean" in err
    np.testing.assert_array_equal(params["conv0"]["kernel"], jax.device_get(r.state.params["conv0"]["kernel"]))
