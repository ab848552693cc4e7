"""8-device data mesh (and FSDP) vs 1 device; a checkpoint written on 8 devices restores on 1 device."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from experiments.pose import DEMO_W16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"total_steps": 6, "batch_size": 16, "log_every": 1, "evals.val.every": 3, "checkpoint_every": 3,
         "task.image_size": 16, "model.width": 8, "task.train_examples": 256, "task.eval_examples": 40}


def run_py(code: str, devices: int = 1, timeout: int = 300) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout


def test_8_devices_match_1_device_and_fsdp_shards(tmp_path):
    out = run_py(f"""
        import json, jax, numpy as np
        from experiments import get_experiment
        from hrnet_jax.train import train
        assert jax.device_count() == 8
        cfg = get_experiment("cls_synthetic", {SMALL!r})
        runs = {{
            "d1": train(cfg, "{tmp_path}/d1", devices=jax.devices()[:1], quiet=True),
            "d8": train(cfg, "{tmp_path}/d8", quiet=True),
            "fsdp": train(cfg.override({{"sharding.fsdp": True, "sharding.fsdp_min_bytes": 4096}}),
                          "{tmp_path}/fsdp", quiet=True),
        }}
        res = {{}}
        for k, r in runs.items():
            leaves = jax.tree_util.tree_leaves_with_path(r.state.params)
            res[k] = {{
                "losses": [h["loss"] for h in r.history if "loss" in h],
                "eval": r.eval_metrics,
                "specs": {{jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in leaves}},
                "ndev": {{jax.tree_util.keystr(p): len(x.sharding.device_set) for p, x in leaves}},
            }}
            np.savez("{tmp_path}/" + k + ".npz", **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in
                     jax.tree_util.tree_leaves_with_path((r.state.params, r.state.batch_stats))}})
        print(json.dumps(res))
        """, devices=8)
    res = json.loads(out.strip().splitlines()[-1])
    ref = np.load(tmp_path / "d1.npz")
    assert len(res["d1"]["losses"]) == SMALL["total_steps"]
    for k in ("d8", "fsdp"):
        np.testing.assert_allclose(res[k]["losses"], res["d1"]["losses"], rtol=1e-5)
        got = np.load(tmp_path / f"{k}.npz")
        for name in ref.files:
            a, b = got[name], ref[name]
            rel = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
            assert rel <= 1e-5, (k, name, rel)
        assert res[k]["eval"].keys() == {"val/top1", "val/top5"}
        np.testing.assert_allclose(res[k]["eval"]["val/top1"], res["d1"]["eval"]["val/top1"], atol=100 / 40)
    # data parallel: replicated params; FSDP: the big kernels are split over the 8 devices
    assert all("data" not in s for s in res["d8"]["specs"].values())
    sharded = [p for p, s in res["fsdp"]["specs"].items() if "data" in s]
    assert any("conv2" in p for p in sharded), res["fsdp"]["specs"]
    assert all(res["fsdp"]["ndev"][p] == 8 for p in sharded)

    # the 8-device FSDP checkpoint restores in a 1-device process, bitwise
    for k in ("fsdp",):
        out = run_py(f"""
            import jax, numpy as np
            from experiments import get_experiment
            from hrnet_jax.train import train
            assert jax.device_count() == 1
            cfg = get_experiment("cls_synthetic", {SMALL!r})
            r = train(cfg, "{tmp_path}/{k}", quiet=True)  # already at total_steps: restore only
            assert int(r.state.step) == {SMALL['total_steps']}
            np.savez("{tmp_path}/{k}_restored.npz", **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in
                     jax.tree_util.tree_leaves_with_path((r.state.params, r.state.batch_stats))}})
            print(len(r.state.params["conv2"]["kernel"].sharding.device_set))
            """, devices=1)
        assert out.strip().splitlines()[-1] == "1"
        got, want = np.load(tmp_path / f"{k}_restored.npz"), np.load(tmp_path / f"{k}.npz")
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name])


def test_narrow_hrnet_on_8_devices_with_a_resume_matches_1_device(tmp_path):
    """The demo-width HRNet (BatchNorm over the global batch, oneDNN convs on 1 CPU device, XLA's on 8): 2 steps on
    1 device vs 1 + (restart) 1 on 8 devices give the same parameters and batch statistics, up to float32
    summation order (which BatchNorm amplifies in small-valued leaves such as a zero-initialised BN bias)."""
    hr = {"total_steps": 2, "batch_size": 8, "log_every": 1, "evals.val.every": 0, "checkpoint_every": 1,
          "task.image_size": 64, "task.train_examples": 64, "optimizer.lr": 0.01,
          "model": "{'name': 'hrnet_w18_small_v1', 'dtype': 'float32', 'arch': %r}" % (DEMO_W16,)}
    save = """
        np.savez(path, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in
                 jax.tree_util.tree_leaves_with_path((r.state.params, r.state.batch_stats))})"""
    run_py(f"""
        import jax, numpy as np
        from experiments import get_experiment
        from hrnet_jax.train import train
        r = train(get_experiment("cls_synthetic", {hr!r}), "{tmp_path}/one", quiet=True)
        path = "{tmp_path}/one.npz"
        {save}
        """, devices=1)
    run_py(f"""
        import jax, numpy as np
        from experiments import get_experiment
        from hrnet_jax.train import train
        cfg = get_experiment("cls_synthetic", {hr!r})
        train(cfg.override({{"total_steps": 1}}), "{tmp_path}/eight", quiet=True)
        r = train(cfg, "{tmp_path}/eight", quiet=True)     # resumes at step 1
        assert int(r.state.step) == 2 and len(r.history) == 1, r.history
        path = "{tmp_path}/eight.npz"
        {save}
        """, devices=8)
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "eight.npz")
    assert a.files == b.files
    flat_a = np.concatenate([a[n].ravel() for n in a.files])
    flat_b = np.concatenate([b[n].ravel() for n in a.files])
    assert np.linalg.norm(flat_a - flat_b) / np.linalg.norm(flat_a) <= 1e-5
    for name in a.files:
        assert np.max(np.abs(a[name] - b[name])) <= 1e-3 * max(1.0, np.max(np.abs(a[name]))), name
