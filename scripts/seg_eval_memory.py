"""Compiled temporary memory of the segmentation eval modes at Cityscapes size (XLA's memory analysis).

    python scripts/seg_eval_memory.py [--model seg_hrnet_w48] [--size 1024x2048]

Lowers the task's eval forward (whole image; multi-scale 0.5-1.75 + flip with 1024x2048 sliding windows for
scales > 1) for one image and prints XLA's temp / argument / output sizes of each compiled program: the windows
run under ``lax.scan``, so the multi-scale program holds one window's activations at a time.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="seg_hrnet_w48")
    p.add_argument("--size", default="1024x2048")
    p.add_argument("--modes", default="whole,multiscale")
    a = p.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    from experiments import build_task, get_experiment
    out = {}
    for mode in a.modes.split(","):
        cfg = get_experiment("seg_w48_cityscapes", {"model.name": a.model, "task.eval_mode": mode,
                                                    "task.eval_flip": mode == "multiscale"})
        task = build_task(cfg)
        model = task.build_model()
        x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.uint8)
        variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))

        def fwd(v, img):
            batch = task.preprocess({"image": img}, None, train=False)
            return jnp.argmax(task.scores(model.apply, v, batch["image"]), -1)

        t0 = time.time()
        compiled = jax.jit(fwd).lower(variables, x).compile()
        m = compiled.memory_analysis()
        out[mode] = {"compile_s": round(time.time() - t0, 1),
                     "temp_mib": round(m.temp_size_in_bytes / 2**20, 1),
                     "argument_mib": round(m.argument_size_in_bytes / 2**20, 1),
                     "output_mib": round(m.output_size_in_bytes / 2**20, 1)}
        print(mode, json.dumps(out[mode]), flush=True)
    print(json.dumps({"model": a.model, "size": [h, w], **out}))


if __name__ == "__main__":
    main()
