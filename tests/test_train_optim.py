"""Optimizer recipes against hand-written references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax.training.defaults import default_config
from hrnet_jax.training.optim import make_optimizer, make_schedule


def opt(**kw):
    return default_config(optimizer=kw).optimizer


def test_sgd_pytorch_l2_momentum_and_bn_bias_mask():
    o = opt(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01, weight_decay_style="l2", decay_bn_bias=False)
    tx, _ = make_optimizer(o, 100)
    params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}
    grads = [{"kernel": jnp.array([[0.5, 0.5]]), "bias": jnp.array([1.0])},
             {"kernel": jnp.array([[-1.0, 2.0]]), "bias": jnp.array([0.5])}]
    state = tx.init(params)
    p = {k: np.asarray(v) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for g in grads:
        upd, state = tx.update(g, state, params)
        params = jax.tree.map(lambda a, b: a + b, params, upd)
        for k in p:  # torch.optim.SGD(weight_decay=wd) on kernels only
            d = np.asarray(g[k]) + (0.01 * p[k] if k == "kernel" else 0.0)
            buf[k] = 0.9 * buf[k] + d
            p[k] = p[k] - 0.1 * buf[k]
    for k in p:
        np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


def test_schedules():
    s = make_schedule(opt(lr=1.0, schedule="step", boundaries=(0.5, 80), decay_factor=0.1), 100)
    assert [float(s(t)) for t in (0, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    s = make_schedule(opt(lr=1.0, schedule="cosine", warmup_steps=10, warmup_init_lr=0.0), 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5, abs=1e-6) and float(s(110)) == pytest.approx(0.0, abs=1e-6)
    s = make_schedule(opt(lr=1.0, schedule="poly", poly_power=0.9), 100)
    assert float(s(50)) == pytest.approx(0.5 ** 0.9, rel=1e-5)


def test_adam_decoupled_and_accumulation_and_clipping():
    o = opt(name="adam", lr=0.1, weight_decay=0.5, weight_decay_style="decoupled", accum_steps=2,
            grad_clip_norm=1.0)
    tx, _ = make_optimizer(o, 100)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    g = {"w": jnp.full((2, 2), 10.0)}
    upd, state = tx.update(g, state, params)
    assert float(jnp.abs(upd["w"]).max()) == 0.0  # accumulating
    upd, state = tx.update(g, state, params)
    # clipped grad 0.5 per entry; first Adam step: m/sqrt(v) = 1; decoupled wd adds 0.5 * 1
    np.testing.assert_allclose(upd["w"], -0.1 * (1.0 + 0.5), rtol=1e-5)
