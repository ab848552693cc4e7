"""Micro-benchmark: W32-sized BasicBlocks (3x3 conv + folded-BN bias + ReLU, NHWC, eval) per stream, JAX vs
PyTorch eager, for trying XLA CPU flags (run once per XLA_FLAGS value; torch is measured in the same process).

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_convolution python scripts/conv_micro.py
    python scripts/conv_micro.py --grad     # forward + backward (what a train step adds)
"""
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

B = int(os.environ.get("MICRO_BATCH", 8))
STREAMS = [(56, 32), (28, 64), (14, 128), (7, 256)]  # (H=W, C) of W32 at 224
NBLOCKS = 4


def med(fn, n=5):
    fn()
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((B, h, h, c), np.float32) for h, c in STREAMS]
    ws = [[rng.standard_normal((3, 3, c, c), np.float32) * 0.05 for _ in range(2 * NBLOCKS)] for _, c in STREAMS]
    bs = [[rng.standard_normal((c,), np.float32) * 0.1 for _ in range(2 * NBLOCKS)] for _, c in STREAMS]
    flops = sum(2 * B * h * h * 9 * c * c * 2 * NBLOCKS for h, c in STREAMS)

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b

    def f(xs, ws, bs):
        outs = []
        for x, w, b in zip(xs, ws, bs):
            for k in range(NBLOCKS):
                y = jax.nn.relu(conv(x, w[2 * k], b[2 * k]))
                x = jax.nn.relu(conv(y, w[2 * k + 1], b[2 * k + 1]) + x)
            outs.append(x)
        return outs

    grad = "--grad" in sys.argv  # forward + backward (input and weight gradients), 3x the flops
    if grad:
        flops *= 3
        f0 = f
        f = jax.grad(lambda xs, ws, bs: sum(jnp.sum(o) for o in f0(xs, ws, bs)), argnums=(0, 1, 2))
    jf = jax.jit(f)
    args = jax.device_put((xs, ws, bs))
    t = time.perf_counter()
    c = jf.lower(*args).compile()
    ct = time.perf_counter() - t
    tj = med(lambda: jax.block_until_ready(c(*args)))
    line = f"jax {jax.__version__} XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}': {tj * 1e3:.1f} ms " \
           f"({flops / tj / 1e9:.1f} GFLOP/s, compile {ct:.1f}s)"
    if "--no-torch" not in sys.argv:
        import torch
        torch.set_num_threads(os.cpu_count())
        F = torch.nn.functional
        txs = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(grad) for x in xs]
        tws = [[torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(grad) for w in wl] for wl in ws]
        tbs = [[torch.from_numpy(b).requires_grad_(grad) for b in bl] for bl in bs]

        def tf():
            with torch.set_grad_enabled(grad):
                outs = []
                for x, w, b in zip(txs, tws, tbs):
                    for k in range(NBLOCKS):
                        y = F.relu(F.conv2d(x, w[2 * k], b[2 * k], padding=1))
                        x = F.relu(F.conv2d(y, w[2 * k + 1], b[2 * k + 1], padding=1) + x)
                    outs.append(x)
                if grad:
                    sum(o.sum() for o in outs).backward()
        tt = med(tf)
        line += f"; torch {tt * 1e3:.1f} ms ({flops / tt / 1e9:.1f} GFLOP/s); jax/torch speed {tt / tj:.2f}x"
    print(line + f"; load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
