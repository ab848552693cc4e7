"""Classification inference on image files: the task's eval transform (decode → ``Resize(eval_resize)`` →
``CenterCrop(eval_crop)``), one jitted forward, softmax, the top-k classes with their names.

``hrnet_jax.predict`` dispatches here for classification checkpoints; ``--evaluate cls_w32_in1k`` goes through the
task's named evals instead (top-1 / top-5 on ImageNet val, :mod:`hrnet_jax.training.evaluate`).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.data.ops import crops
from hrnet_jax.data.ops.image import ImageReadError


def predict_images(task, variables: dict, paths: list[str], out_dir: str, topk: int = 5,
                   batch_size: int = 32) -> list[dict]:
    """Top-``topk`` classes of each image in ``paths`` (printed, returned, and written to
    ``out_dir/predictions.json`` when ``out_dir``). Each result: ``{"image": path, "top": [{"class": index,
    "name": str, "prob": float}, ...]}``; an unreadable image gives ``{"image": path, "error": reason}``."""
    t = task.t
    names = task.class_names()
    model = task.build_model()

    @jax.jit
    def probs_fn(variables, images):
        batch = task.preprocess({"image": images, "label": jnp.zeros(images.shape[:1], jnp.int32)}, None,
                                train=False)
        logits = task.forward(model.apply, variables, batch, train=False, rngs=None)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    results: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        imgs = np.stack([im for _, im in pending])
        n = len(imgs)
        pad = batch_size - n  # one compiled shape
        if pad > 0:
            imgs = np.concatenate([imgs, np.zeros((pad,) + imgs.shape[1:], imgs.dtype)])
        probs = np.asarray(probs_fn(variables, imgs))[:n]
        k = min(int(topk), probs.shape[-1])
        for (i, _), p in zip(pending, probs):
            top = np.argsort(-p)[:k]
            results[i]["top"] = [{"class": int(c), "name": names[c] if c < len(names) else str(c),
                                  "prob": float(p[c])} for c in top]
        pending.clear()

    for path in paths:
        results.append({"image": path})
        try:
            with open(path, "rb") as f:
                data = f.read()
            img = crops.decode_resize_center_crop(data, t.eval_resize, t.eval_crop, path=path)
        except FileNotFoundError:
            results[-1]["error"] = "missing_image"
            continue
        except ImageReadError as e:
            results[-1]["error"] = e.reason
            continue
        pending.append((len(results) - 1, img))
        if len(pending) == batch_size:
            flush()
    flush()

    for r in results:
        if "error" in r:
            print(f"{r['image']}: skipped ({r['error']})", file=sys.stderr)
            continue
        tops = ", ".join(f"{e['name']} {100 * e['prob']:.1f}%" for e in r["top"])
        print(f"{r['image']}: {tops}")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, "predictions.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, "predictions.json"))
    return results
