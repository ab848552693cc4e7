"""Benchmark of the JAX HRNetV2p Faster R-CNN against torchvision's ``FasterRCNN`` on the same HRNet backbone.

    python -m hrnet_jax.bench_detection                         # 512x512 and 800x1344 (800x1333 padded), W32
    python -m hrnet_jax.bench_detection --sizes 512x512 --width w18 --iters 3 --json out.json

Per size: ``infer`` (images/s, batch 1, ``train=False``) and ``train`` (images/s of one SGD-momentum step on the
task loss, batch 1, one ground-truth box set), each the median of ``--iters`` timed calls after ``--warmup``; JAX
also reports ``compile_s``. The torch model is torchvision's ``FasterRCNN`` with timm's ``hrnet_w{C}``
(``features_only=True, feature_location=''``: the four stage-4 streams), :class:`TorchHRFPN` (the HRFPN neck,
written here), the default RPN / RoI heads set to the same hyper-parameters (2000 / 2000 proposals, 256 / 512
samples, 7x7 RoIAlign with sampling ratio 2 on strides 4-32, 2-fc 1024 head), images given at the padded size so
its transform does not resize (``min_size``/``max_size`` = the image). Its backbone BN is frozen like the JAX
one (``eval()`` on the backbone). Each framework runs in a fresh child process (the torch one never imports
JAX), with the same thread count, as :mod:`hrnet_jax.bench` does; the report has the machine line (CPU and ISA)
and the load average before and after each worker.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from hrnet_jax.bench import _loadavg, _median_time, _peak_rss_mb, host_info

CHANNELS = {"w18": 18, "w32": 32, "w40": 40, "w48": 48}


# ------------------------------------------------------------------------------------------------- torch side
def torch_hrfpn(in_channels, out_channels: int = 256, num_levels: int = 5):
    """The HRFPN neck in torch (mmdet ``necks/hrfpn.py`` behaviour): bilinear upsampling of streams 1-3 by 2^i,
    concat, 1x1 conv ``reduction_conv.0`` (bias), average pooling by 2^i into 5 levels, a 3x3 ``fpn_conv.i`` each."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TorchHRFPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.reduction_conv = nn.Sequential(nn.Conv2d(sum(in_channels), out_channels, 1))
            self.fpn_conv = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in range(num_levels))
            self.out_channels = out_channels

        def forward(self, xs):
            outs = [xs[0]] + [F.interpolate(x, scale_factor=2 ** i, mode="bilinear", align_corners=False)
                              for i, x in enumerate(xs[1:], 1)]
            r = self.reduction_conv(torch.cat(outs, 1))
            lv = [r] + [F.avg_pool2d(r, 2 ** i, 2 ** i) for i in range(1, num_levels)]
            return [conv(x) for conv, x in zip(self.fpn_conv, lv)]

    return TorchHRFPN()


def timm_hrnet_features(width: str):
    import timm
    name = {"w18_small_v1": "hrnet_w18_small"}.get(width, f"hrnet_{width}")
    return timm.create_model(name, features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                             pretrained=False)


def torchvision_faster_rcnn(width: str, num_classes: int, hw):
    """torchvision ``FasterRCNN`` with timm's HRNet + :func:`torch_hrfpn`, configured as the JAX defaults."""
    from collections import OrderedDict

    import torch
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    body = timm_hrnet_features(width)
    neck = torch_hrfpn(body.feature_info.channels())

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.neck, self.out_channels = body, neck, 256

        def train(self, mode=True):  # norm_eval: the HRNet's BN stays in eval mode
            super().train(mode)
            self.body.eval()
            return self

        def forward(self, x):
            return OrderedDict((str(i), f) for i, f in enumerate(self.neck(self.body(x))))

    anchors = AnchorGenerator(sizes=tuple((8 * s,) for s in (4, 8, 16, 32, 64)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    pooler = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    return FasterRCNN(Backbone(), num_classes=num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pooler,
                      min_size=hw[0], max_size=max(hw), rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000,
                      rpn_pre_nms_top_n_test=2000, rpn_post_nms_top_n_test=2000, rpn_nms_thresh=0.7,
                      rpn_batch_size_per_image=256, rpn_positive_fraction=0.5, box_batch_size_per_image=512,
                      box_positive_fraction=0.25, box_score_thresh=0.05, box_nms_thresh=0.5,
                      box_detections_per_img=100, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])


def _gt(hw):
    h, w = hw
    import numpy as np
    boxes = np.array([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.8 * h],
                      [0.2 * w, 0.5 * h, 0.35 * w, 0.7 * h]], np.float32)
    return boxes, np.array([1, 5, 17], np.int64)


def bench_torch(width: str, hw, args) -> dict:
    import torch
    model = torchvision_faster_rcnn(width, 80, hw)
    x = torch.randn(1, 3, *hw)
    boxes, labels = _gt(hw)
    out = {}
    model.eval()
    with torch.no_grad():
        t = _median_time(lambda: model(list(x)), args.warmup, args.iters)
    out["infer"] = 1.0 / t
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    target = [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}]

    def step():
        losses = model(list(x), target)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["train"] = 1.0 / _median_time(step, args.warmup, args.iters)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# ------------------------------------------------------------------------------------------------- JAX side
def bench_jax(width: str, hw, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from hrnet_jax.models.detection import create_detector
    from hrnet_jax.tasks.detection.loss import detection_loss

    model = create_detector(f"faster_rcnn_hrnetv2p_{width}", num_classes=80)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, *hw, 3)), jnp.float32)
    ihw = jnp.asarray([hw], jnp.int32)
    boxes, labels = _gt(hw)
    gb = jnp.asarray(np.concatenate([boxes, np.zeros((5, 4), np.float32)])[None])
    gl = jnp.asarray(np.concatenate([labels - 1, np.zeros(5, np.int64)])[None].astype(np.int32))
    gv = jnp.asarray(np.arange(8)[None] < 3)
    variables = jax.jit(lambda: model.init({"params": jax.random.PRNGKey(0)}, x, ihw, train=False))()
    out = {}
    t0 = time.perf_counter()
    infer = jax.jit(lambda v, x: model.apply(v, x, ihw, train=False)).lower(variables, x).compile()
    out["compile_infer_s"] = time.perf_counter() - t0
    out["infer"] = 1.0 / _median_time(lambda: jax.block_until_ready(infer(variables, x)), args.warmup, args.iters)
    tx = optax.sgd(0.001, momentum=0.9)

    def step(params, opt, key):
        def f(p):
            o = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, ihw, gb, gl, gv, train=True,
                            rngs={"sample": key})
            return detection_loss(o)[0]
        loss, g = jax.value_and_grad(f)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    params, opt = variables["params"], tx.init(variables["params"])
    t0 = time.perf_counter()
    train = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, jax.random.PRNGKey(0)).compile()
    out["compile_train_s"] = time.perf_counter() - t0
    state = {"p": params, "o": opt}

    def run():
        state["p"], state["o"], loss = train(state["p"], state["o"], jax.random.PRNGKey(1))
        jax.block_until_ready(loss)

    out["train"] = 1.0 / _median_time(run, args.warmup, args.iters)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# ------------------------------------------------------------------------------------------------- driver
def _worker(job: dict) -> None:
    args = argparse.Namespace(**job["args"])
    hw = tuple(job["hw"])
    if job["framework"] == "jax":
        from hrnet_jax.bench import jax_machine_info
        import jax
        jax.config.update("jax_enable_compilation_cache", False)
        res = {"machine": jax_machine_info(), "figures": bench_jax(job["width"], hw, args)}
    else:
        import torch
        from hrnet_jax.bench import torch_machine_info
        torch.set_num_threads(job["threads"])
        res = {"machine": torch_machine_info(torch), "figures": bench_torch(job["width"], hw, args)}
        res["machine"]["jax_in_torch_process"] = "jax" in sys.modules
    with open(job["out"], "w") as f:
        json.dump(res, f)


def _run(framework: str, width: str, hw, args, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hrnet_detbench_") as d:
        job = dict(framework=framework, width=width, hw=list(hw), threads=threads, out=os.path.join(d, "r.json"),
                   args={"warmup": args.warmup, "iters": args.iters})
        load0 = _loadavg()
        rc = subprocess.run([sys.executable, "-m", "hrnet_jax.bench_detection", "--worker", json.dumps(job)],
                            stdout=sys.stderr).returncode
        res = json.load(open(job["out"])) if os.path.exists(job["out"]) else {"machine": {}, "figures": {}}
        if rc:
            res["figures"]["error"] = f"{framework} worker exited with {rc}"
        res["figures"]["load_before"], res["figures"]["load_after"] = load0, _loadavg()
        return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.bench_detection", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512x512,800x1344", help="HxW list, multiples of 32 (800x1333 pads to 1344)")
    p.add_argument("--width", default="w32", choices=sorted(CHANNELS))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(json.loads(a.worker))
        return {}
    results = {"machine": host_info(), "runs": []}
    for size in a.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        if h % 32 or w % 32:
            p.error(f"--sizes {size}: height and width must be multiples of 32")
        run = {"size": [h, w], "width": a.width}
        for fw in ("jax", "torch"):
            r = _run(fw, a.width, (h, w), a, a.threads)
            results["machine"].update({f"{fw}_{k}": v for k, v in r["machine"].items()})
            run[fw] = r["figures"]
        for k in ("infer", "train"):
            if k in run["jax"] and k in run["torch"]:
                run[f"ratio_{k}"] = run["jax"][k] / run["torch"][k]
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    print(f"machine: {results['machine'].get('cpu')}, {results['machine'].get('cores')} cores")
    for r in results["runs"]:
        j, t = r["jax"], r["torch"]
        print(f"{r['width']} {r['size'][0]}x{r['size'][1]}: infer JAX {j.get('infer', 0):.3f} img/s vs torch "
              f"{t.get('infer', 0):.3f} (x{r.get('ratio_infer', float('nan')):.2f}); train JAX {j.get('train', 0):.3f} "
              f"vs torch {t.get('train', 0):.3f} (x{r.get('ratio_train', float('nan')):.2f}); load "
              f"{j.get('load_before')}-{t.get('load_after')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
