"""XLA CPU does not re-compute HRNet's residual streams inside its fusions (``execution.cut_fusion``, applied by
the execution policy after every block).

Without the cut, XLA's fusion pass copies each block's BN / add / ReLU into every later consumer, so the work
grows with the square of a stream's depth (in the full pose W32 train step: ~140-operand transposes, 2.3x the
step time). The check counts ReLUs (``maximum``) in XLA's own optimised HLO of an 8-block stream: a bounded
number per block with the cut, several times more without it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax.execution import ExecutionPolicy, PolicyModel
from hrnet_jax.models.stream import Stream


def _relus_in_compiled_hlo(cut: bool, num_blocks: int, train: bool) -> int:
    stream = PolicyModel(Stream(block="BASIC", num_blocks=num_blocks, planes=16, in_channels=16, train=train),
                         ExecutionPolicy(onednn=False, cut_fusion=cut))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 16)), jnp.float32)
    v = stream.init(jax.random.PRNGKey(0), x)
    if train:
        def loss(params, x):
            y, _ = stream.apply({"params": params, "batch_stats": v["batch_stats"]}, x, mutable=["batch_stats"])
            return jnp.sum(jnp.square(y))
        fn, args = jax.grad(loss), (v["params"], x)
    else:
        fn, args = (lambda v, x: stream.apply(v, x)), (v, x)
    return jax.jit(fn).lower(*args).compile().as_text().count(" maximum(")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA CPU fusion property")
@pytest.mark.parametrize("train", [True, False])
def test_cut_fusion_keeps_recomputation_linear(train):
    n = 8
    cut = _relus_in_compiled_hlo(True, n, train)
    uncut = _relus_in_compiled_hlo(False, n, train)
    assert cut <= 4 * n, cut  # 2 ReLUs per block (+ their gradients' masks in training)
    assert uncut > 2 * cut, (uncut, cut)
