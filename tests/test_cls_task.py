"""ClassificationTask on the device: top-1 / top-5 over a batch sharded on 8 devices equal numpy's; mixup /
cutmix targets; label-smoothed loss by hand; the EMA update; FSDP of W64 (memory per device). One subprocess with
8 host devices runs the device checks."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json, functools
    import numpy as np, jax, jax.numpy as jnp
    from experiments import get_experiment
    from hrnet_jax.tasks import build_task
    from hrnet_jax.tasks.classification.task import top_k_accuracy, mix_batch
    from hrnet_jax.training import sharding as shd, metrics as M, steps, optim
    out = {}
    assert jax.device_count() == 8
    mesh = shd.make_mesh()
    data = shd.batch_sharding(mesh)
    task = build_task(get_experiment("cls_synthetic", ["task.num_classes=12"]))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 64).astype(np.int32)
    valid = rng.uniform(size=64) < 0.8
    batch = {"label": jax.device_put(labels, data), "valid": jax.device_put(valid, data)}
    preds = jax.device_put(logits, data)
    with jax.set_mesh(mesh):
        states = jax.jit(task.metrics)(preds, batch)
        # two batches merged on device
        states = M.merge(states, jax.jit(task.metrics)(preds[::-1], {k: v[::-1] for k, v in batch.items()}))
    got = M.compute(states)
    keep = np.concatenate([valid, valid[::-1]])
    L, Y = np.concatenate([logits, logits[::-1]])[keep], np.concatenate([labels, labels[::-1]])[keep]
    out["top"] = [got["top1"], top_k_accuracy(L, Y, 1), got["top5"], top_k_accuracy(L, Y, 5)]

    # mixup / cutmix on a global batch sharded over 8 devices
    imgs = jnp.asarray(rng.normal(size=(16, 8, 8, 3)), jnp.float32)
    tgt = jax.nn.one_hot(jnp.arange(16) % 5, 5)
    res = {}
    for name, kw in {"mixup": dict(mixup_alpha=0.4, cutmix_alpha=0.0), "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0)}.items():
        with jax.set_mesh(mesh):
            x, t = jax.jit(functools.partial(mix_batch, **kw))(jax.device_put(imgs, data), jax.device_put(tgt, data),
                                                               jax.random.PRNGKey(3))
        x, t = np.asarray(x), np.asarray(t)
        lam = float(t[0, 0])  # example 0 (class 0) mixed with example 15 (class 0) would be ambiguous: use row 1
        lam = float(t[1, 1])
        res[name] = dict(sum=np.abs(t.sum(1) - 1).max().item(), lam=lam)
        other = np.asarray(imgs)[::-1]
        if name == "mixup":
            res[name]["err"] = float(np.abs(x - (lam * np.asarray(imgs) + (1 - lam) * other)).max())
        else:
            from_other = np.all(np.isclose(x, other), axis=-1) & ~np.all(np.isclose(x, np.asarray(imgs)), axis=-1)
            res[name]["pasted_frac"] = float(from_other[1].mean())
    out["mix"] = res

    # FSDP of W64: parameters and optimizer state sharded over 8 devices
    cfg = get_experiment("cls_w64_in1k", ["task.source=shapes", "task.image_size=64", "batch_size=8"])
    t64 = build_task(cfg)
    model = t64.build_model()
    tx, _ = optim.make_optimizer(cfg.optimizer, cfg.total_steps)
    ex = {"image": np.zeros((1, 64, 64, 3), np.uint8), "label": np.zeros((1,), np.int32)}
    abstract = jax.eval_shape(functools.partial(steps.init_state, t64, model, tx, ex, 0))
    for fsdp in (False, True):
        sh = shd.state_shardings(abstract, mesh, fsdp, cfg.sharding.fsdp_min_bytes)
        total, per = shd.bytes_per_device(abstract, sh)
        ptotal, pper = shd.bytes_per_device(abstract.params, sh.params)
        out[f"fsdp_{fsdp}"] = [total, per, ptotal, pper, shd.memory_line(abstract, sh, fsdp)]
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_top_k_on_8_devices_equal_numpy(result):
    top1, ref1, top5, ref5 = result["top"]
    assert top1 == pytest.approx(ref1, abs=1e-4) and top5 == pytest.approx(ref5, abs=1e-4)
    assert 0 < top1 < top5 < 100


def test_mixup_and_cutmix_targets(result):
    mix, cut = result["mix"]["mixup"], result["mix"]["cutmix"]
    assert mix["sum"] < 1e-5 and cut["sum"] < 1e-5          # soft targets still sum to one
    assert 0 <= mix["lam"] <= 1 and mix["err"] < 1e-5       # x = lam x + (1 - lam) x[::-1]
    assert cut["pasted_frac"] == pytest.approx(1 - cut["lam"], abs=1e-6)   # target weight = pasted area


def test_fsdp_w64_shards_params_and_optimizer_state(result):
    total, per, ptotal, pper, line = result["fsdp_True"]
    rtotal, rper, _, _, _ = result["fsdp_False"]
    assert ptotal > 128e6 * 4 and rper == rtotal                 # 128M fp32 params; replicated: all on each
    assert per < 0.2 * total and pper < 0.2 * ptotal             # sharded: ~1/8 each (small tensors replicated)
    assert "per device" in line and "with FSDP" in line
    print(line)


def test_label_smoothing_loss_by_hand():
    import jax.numpy as jnp
    from experiments import get_experiment
    from hrnet_jax.tasks import build_task
    task = build_task(get_experiment("cls_synthetic", ["task.label_smoothing=0.1", "task.num_classes=4"]))
    logits = np.array([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 3], np.int32)
    batch = task.preprocess({"image": np.zeros((2, 4, 4, 3), np.uint8), "label": labels}, None, train=True)
    loss, aux = task.loss(jnp.asarray(logits), batch)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.full((2, 4), 0.1 / 4)
    target[[0, 1], labels] += 0.9
    assert float(loss) == pytest.approx(float(-(target * logp).sum(1).mean()), rel=1e-6)
    assert float(aux["accuracy"]) == 0.5
    plain = task.preprocess({"image": np.zeros((2, 4, 4, 3), np.uint8), "label": labels}, None, train=False)
    assert "target" not in plain


def test_ema_update_formula():
    import jax.numpy as jnp
    from hrnet_jax.training.steps import ema_update
    ema = {"params": {"w": jnp.ones(3)}, "batch_stats": {"n": jnp.zeros(2)}}
    new = {"params": {"w": jnp.full(3, 3.0)}, "batch_stats": {"n": jnp.full(2, 2.0)}}
    d0 = min(0.99, 1 / 10)          # warm-up at step 0
    out = ema_update(ema, new, 0.99, jnp.int32(0))
    np.testing.assert_allclose(out["params"]["w"], d0 * 1 + (1 - d0) * 3, rtol=1e-6)
    out = ema_update(ema, new, 0.99, jnp.int32(10 ** 6))
    np.testing.assert_allclose(out["batch_stats"]["n"], 0.01 * 2, rtol=1e-5)


def test_predict_images_top5_with_names(tmp_path, capsys):
    import cv2
    import jax
    from experiments import get_experiment
    from hrnet_jax.tasks import build_task
    from hrnet_jax.tasks.classification.predict import predict_images
    from hrnet_jax.training.steps import init_variables
    task = build_task(get_experiment("cls_synthetic", ["task.eval_resize=36", "task.eval_crop=32"]))
    model = task.build_model()
    variables = init_variables(task, model, {"image": np.zeros((1, 32, 32, 3), np.uint8),
                                             "label": np.zeros((1,), np.int32)}, jax.random.PRNGKey(0))
    paths = []
    for i in range(3):
        p = str(tmp_path / f"im{i}.jpg")
        cv2.imwrite(p, np.random.default_rng(i).integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8))
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = predict_images(task, variables, paths + [str(tmp_path / "bad.jpg")], str(tmp_path / "pred"), topk=5,
                         batch_size=2)
    assert [r["image"] for r in out] == paths + [str(tmp_path / "bad.jpg")]
    assert out[-1]["error"] == "corrupt_image"
    names = task.class_names()
    for r in out[:3]:
        probs = [e["prob"] for e in r["top"]]
        assert len(r["top"]) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(e["name"] == names[e["class"]] for e in r["top"])
    printed = capsys.readouterr().out
    assert paths[0] in printed and out[0]["top"][0]["name"] in printed
    assert (tmp_path / "pred" / "predictions.json").exists()
