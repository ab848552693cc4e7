"""Benchmark of bottom-up (HigherHRNet) inference: the grouping, and the whole inference against PyTorch.

    python -m hrnet_jax.bench_bottomup                       # grouping at 1/5/10/20 people + whole inference at 512
    python -m hrnet_jax.bench_bottomup --grouping-only --people 1,10,20 --json out.json

1. Grouping (numpy, this process): :func:`hrnet_jax.tasks.bottomup.grouping.group` against a straightforward
   per-person-loop implementation of the reference's ``HeatmapParser.parse`` (:func:`loop_group` below:
   ``match_by_tag`` with a list of people, ``adjust`` and ``refine`` looping over people and joints, ``refine``
   scanning the whole map per person and joint; the same ``scipy`` assignment in both, so the comparison measures
   the vectorisation, not Munkres vs scipy), on synthetic COCO-density maps at the PROJECT2IMAGE resolution
   (512x512, K = 17, T = 2 tags from the flip test, 30 candidates per joint, Gaussian joints of 1-20 people,
   per-person tags, background noise). Both results are checked equal before timing.
2. Whole inference (two fresh worker processes, one per framework, same threads, one after the other):
   the network on the image and its mirror, the two-resolution aggregation, flip fusion, projection to the input
   size, heatmap NMS and top-k, and the copy of the maps to the host. JAX: ``higher_hrnet_w32`` with BN folded, one
   jitted function (:func:`hrnet_jax.tasks.bottomup.inference.inference_fn`). PyTorch: timm's ``hrnet_w32``
   backbone (features_only, its highest-resolution stream; timm fuses every stream in the last module, slightly
   more work than HigherHRNet's backbone) + the HigherHRNet head in ``torch.nn`` + the reference's test-time steps
   in torch, eager. Random weights: grouping on random-weight maps is meaningless, so end-to-end img/s adds each
   side's grouping time at the given density measured in part 1 (vectorised for JAX, per-person loop for torch).

The machine line names the CPU and its vector ISA; the load average is printed before each part (measure on a
quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from hrnet_jax.bench import _loadavg, _median_time, host_info

COCO_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


# -------------------------------------------------------------------------------- synthetic dense maps
def synthetic_maps(num_people: int, size: int = 512, nj: int = 17, t: int = 2, seed: int = 0):
    """(heatmaps (K, S, S), tagmaps (K, S, S, T)) float32 like an aggregated HigherHRNet output at input size:
    people of 60-200 px with Gaussian joints (sigma 4 px: sigma 2 at 1/2 upsampled), joint values 0.2-0.9,
    20 % of the joints missing, per-person tags 1.5 apart (+ noise 0.15), background noise 0.01."""
    rng = np.random.RandomState(seed)
    hm = (0.01 * rng.randn(nj, size, size)).astype(np.float32)
    tm = (0.15 * rng.randn(nj, size, size, t)).astype(np.float32)
    for p in range(num_people):
        tag = (p - num_people / 2) * 1.5
        h = rng.randint(60, 200)
        cx, cy = rng.randint(h // 4, size - h // 4), rng.randint(h // 2, size - h // 2)
        for k in range(nj):
            if rng.rand() < 0.2:
                continue
            x = int(np.clip(cx + rng.randn() * h / 6, 0, size - 1))
            y = int(np.clip(cy + (k / nj - 0.5) * h + rng.randn() * 5, 0, size - 1))
            y0, y1, x0, x1 = max(y - 12, 0), min(y + 13, size), max(x - 12, 0), min(x + 13, size)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            g = (0.2 + 0.7 * rng.rand()) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0 ** 2))
            hm[k, y0:y1, x0:x1] = np.maximum(hm[k, y0:y1, x0:x1], g)
            tm[k, y0:y1, x0:x1] += (tag * (g > 0.05))[..., None]
    return hm, tm


def numpy_detect(hm: np.ndarray, tm: np.ndarray, k: int = 30, kernel: int = 5) -> dict:
    """NMS (max filter) + top-k per joint in numpy: the candidates the device side would give."""
    from scipy.ndimage import maximum_filter
    nj, h, w = hm.shape
    pool = maximum_filter(hm, size=(1, kernel, kernel), mode="constant", cval=-np.inf)
    det = (hm * (pool == hm)).reshape(nj, -1)
    ind = np.argsort(-det, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(det, ind, 1)
    tags = np.take_along_axis(tm.reshape(nj, h * w, -1), ind[..., None], 1)
    from hrnet_jax.tasks.bottomup.grouping import block_stats
    out = {"vals": vals, "tags": tags, "locs": np.stack([ind % w, ind // w], -1).astype(np.int32),
           "heatmaps": hm, "tagmaps": tm}
    out["block_max"], out["block_tag_min"], out["block_tag_max"] = block_stats(hm, tm)  # the device's part
    return out


# ----------------------------------------------------------------------- per-person-loop baseline
def loop_group(det: dict, params) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``HeatmapParser.parse`` written the straightforward way (people in a list; per-person
    loops in matching, adjust and refine; refine scans the whole map for every person and joint)."""
    from scipy.optimize import linear_sum_assignment
    vals, tags, locs, hm, tm = (det[k] for k in ("vals", "tags", "locs", "heatmaps", "tagmaps"))
    nj, t = vals.shape[0], tags.shape[-1]
    people = []
    for i, idx in enumerate(params.order()):
        cands = [np.concatenate([locs[idx, c].astype(np.float64), [vals[idx, c]], tags[idx, c]])
                 for c in range(vals.shape[1]) if vals[idx, c] > params.detection_threshold]
        if not cands:
            continue
        if i == 0 or not people:
            for c in cands:
                people.append([np.zeros((nj, 3 + t)), [c[3:].astype(np.float32)]])
                people[-1][0][idx] = c
            continue
        grouped = people[:params.max_num_people]
        if params.ignore_too_much and len(grouped) == params.max_num_people:
            continue
        means = [np.mean(np.array(p[1], np.float32), axis=0) for p in grouped]
        dist = np.array([[np.linalg.norm(c[3:] - m) for m in means] for c in cands])
        cost = np.round(dist) * 100 - np.array([c[2] for c in cands])[:, None] if params.use_detection_val \
            else dist.copy()
        if len(cands) > len(grouped):
            cost = np.concatenate([cost, np.full((len(cands), len(cands) - len(grouped)), 1e10)], 1)
        for r, q in zip(*linear_sum_assignment(cost)):
            if q < len(grouped) and dist[r, q] < params.tag_threshold:
                grouped[q][0][idx] = cands[r]
                grouped[q][1].append(cands[r][3:].astype(np.float32))
            else:
                people.append([np.zeros((nj, 3 + t)), [cands[r][3:].astype(np.float32)]])
                people[-1][0][idx] = cands[r]
    ans = [p[0].astype(np.float32) for p in people]
    h, w = hm.shape[1:]
    for person in ans:
        for j in range(nj):
            if person[j, 2] > 0:
                x, y = person[j, :2]
                xi, yi = int(x), int(y)
                x += 0.25 if hm[j, yi, min(xi + 1, w - 1)] > hm[j, yi, max(xi - 1, 0)] else -0.25
                y += 0.25 if hm[j, min(yi + 1, h - 1), xi] > hm[j, max(yi - 1, 0), xi] else -0.25
                person[j, :2] = (x + 0.5, y + 0.5)
    scores = [p[:, 2].mean() for p in ans]
    for person in ans:
        prev = np.mean([tm[j, int(person[j, 1]), int(person[j, 0])] for j in range(nj) if person[j, 2] > 0], 0)
        found = []
        for j in range(nj):
            score = hm[j] - np.round(np.sqrt(((tm[j] - prev[None, None]) ** 2).sum(axis=2)))
            y, x = np.unravel_index(np.argmax(score), score.shape)
            dx = 0.25 if hm[j, y, min(x + 1, w - 1)] > hm[j, y, max(x - 1, 0)] else -0.25
            dy = 0.25 if hm[j, min(y + 1, h - 1), x] > hm[j, max(y - 1, 0), x] else -0.25
            found.append((x + 0.5 + dx, y + 0.5 + dy, hm[j, y, x]))
        for j in range(nj):
            if found[j][2] > 0 and person[j, 2] == 0:
                person[j, :3] = found[j]
    return (np.stack(ans) if ans else np.zeros((0, nj, 3 + t), np.float32)), np.array(scores, np.float32)


def bench_grouping(people_counts, size: int = 512, iters: int = 3, seed: int = 0) -> list:
    """Per density: vectorised and loop grouping seconds per image (median of ``iters``), equality checked."""
    from hrnet_jax.tasks.bottomup.grouping import GroupingParams, group
    params = GroupingParams()
    rows = []
    for n in people_counts:
        det = numpy_detect(*synthetic_maps(n, size, seed=seed + n))
        fast, fast_scores = group(det, params)
        slow, slow_scores = loop_group(det, params)
        same = fast.shape == slow.shape and np.allclose(fast, slow, atol=1e-5) and \
            np.allclose(fast_scores, slow_scores, atol=1e-6)
        t_fast = _median_time(lambda: group(det, params), 1, iters)
        host_det = {k: v for k, v in det.items() if not k.startswith("block_")}
        t_host = _median_time(lambda: group(host_det, params), 0, iters)
        t_loop = _median_time(lambda: loop_group(det, params), 0, iters)
        rows.append(dict(people=n, found=int(fast.shape[0]), candidates=int((det["vals"] > 0.1).sum()),
                         vectorised_ms=round(t_fast * 1e3, 2), vectorised_host_blocks_ms=round(t_host * 1e3, 2),
                         loop_ms=round(t_loop * 1e3, 1),
                         speedup=round(t_loop / t_fast, 1), equal=bool(same), load=_loadavg()))
        print(f"grouping {n:>2} people ({rows[-1]['found']} found, {rows[-1]['candidates']} candidates): "
              f"vectorised {rows[-1]['vectorised_ms']} ms (block statistics on the host too: "
              f"{rows[-1]['vectorised_host_blocks_ms']} ms), per-person loop {rows[-1]['loop_ms']} ms, "
              f"x{rows[-1]['speedup']}, equal={same}, load {rows[-1]['load']}", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------ whole inference
def _torch_higher(torch, nj: int = 17):
    """timm hrnet_w32 (features_only, stream 0) + the HigherHRNet head in torch.nn (random weights)."""
    import timm
    nn = torch.nn
    body = timm.create_model("hrnet_w32", pretrained=False, features_only=True, feature_location="")
    c = 32

    def basic():
        class Basic(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
                self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

            def forward(self, x):
                return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)
        return Basic()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.final_layers = nn.ModuleList([nn.Conv2d(c, 2 * nj, 1), nn.Conv2d(c, nj, 1)])
            self.deconv = nn.Sequential(nn.ConvTranspose2d(c + 2 * nj, c, 4, 2, 1, 0, bias=False),
                                        nn.BatchNorm2d(c), nn.ReLU(), *[basic() for _ in range(4)])

        def forward(self, x):
            x = self.body(x)[1]
            y = self.final_layers[0](x)
            return [y, self.final_layers[1](self.deconv(torch.cat((x, y), 1)))]

    return Net().eval()


def _torch_infer(torch, net, x, nj: int = 17, k: int = 30):
    """The reference's test-time steps for one scale with flip (get_multi_stage_outputs, aggregate_results,
    HeatmapParser.top_k), then the maps to numpy."""
    F = torch.nn.functional
    size = x.shape[2:]
    hms, tags = [], []
    for flip in (False, True):
        outs = net(torch.flip(x, [3]) if flip else x)
        outs = [F.interpolate(outs[0], size=outs[1].shape[2:], mode="bilinear", align_corners=False), outs[1]]
        if flip:
            outs = [torch.flip(o, [3]) for o in outs]
        hm = (outs[0][:, :nj] + outs[1][:, :nj]) / 2
        tg = outs[0][:, nj:]
        if flip:
            hm, tg = hm[:, list(COCO_FLIP)], tg[:, list(COCO_FLIP)]
        hms.append(F.interpolate(hm, size=size, mode="bilinear", align_corners=False))
        tags.append(F.interpolate(tg, size=size, mode="bilinear", align_corners=False).unsqueeze(4))
    det = (hms[0] + hms[1]) / 2
    tag = torch.cat(tags, 4)
    pool = F.max_pool2d(det, 5, 1, 2)
    nms = det * torch.eq(pool, det).float()
    b, _, h, w = det.shape
    vals, ind = nms.view(b, nj, -1).topk(k, dim=2)
    t = tag.view(b, nj, h * w, -1)
    tag_k = torch.stack([torch.gather(t[:, :, :, i], 2, ind) for i in range(t.shape[3])], 3)
    return [a.numpy() for a in (vals, tag_k, ind, det, tag)]


def worker(job: dict) -> None:
    size, iters, warmup = job["size"], job["iters"], job["warmup"]
    x = np.random.RandomState(0).randn(1, size, size, 3).astype(np.float32)
    res = {}
    if job["framework"] == "jax":
        import jax
        jax.config.update("jax_enable_compilation_cache", False)
        from hrnet_jax import inference, models
        from hrnet_jax.bench import _random_variables, jax_machine_info
        from hrnet_jax.tasks.bottomup import inference as bu
        res["machine"] = jax_machine_info()
        model = models.create("higher_hrnet_w32")
        variables = _random_variables(model, x)
        apply_fn, v = inference.prepare(model, variables)

        def fn(v, x):
            return bu.inference_fn(lambda y: apply_fn(v, y, train=False), 17, COCO_FLIP, (size, size))(x)

        run = inference.InferenceFunction(fn, v)
        t = time.perf_counter()
        run.compiled(x)
        res["compile_s"] = round(time.perf_counter() - t, 1)
        call = lambda: jax.tree.map(np.asarray, run(x))  # noqa: E731 - includes the copy to the host
    else:
        import torch
        torch.set_num_threads(job["threads"])
        res["machine"] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        net = _torch_higher(torch)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

        def call():
            with torch.no_grad():
                return _torch_infer(torch, net, xt)
    res["seconds"] = _median_time(call, warmup, iters)
    res["load"] = _loadavg()
    with open(job["out"], "w") as f:
        json.dump(res, f)


def run_worker(framework: str, size: int, iters: int, warmup: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hrnet_bench_bu_") as d:
        job = dict(framework=framework, size=size, iters=iters, warmup=warmup, threads=threads,
                   out=os.path.join(d, "out.json"))
        rc = subprocess.run([sys.executable, "-m", "hrnet_jax.bench_bottomup", "--worker", json.dumps(job)],
                            stdout=sys.stderr).returncode
        if rc or not os.path.exists(job["out"]):
            return {"error": f"{framework} worker exited with {rc}"}
        with open(job["out"]) as f:
            return json.load(f)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.bench_bottomup", description=__doc__.split("\n\n")[0])
    p.add_argument("--people", default="1,5,10,20", help="grouping densities (people per image)")
    p.add_argument("--size", type=int, default=512, help="input size (square)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="threads for both frameworks (default: all cores)")
    p.add_argument("--grouping-only", action="store_true")
    p.add_argument("--no-grouping", action="store_true", help="only the whole-inference workers (end-to-end "
                   "figures then need a grouping run: see the JSON of one)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(json.loads(a.worker))
        return {}
    threads = a.threads or os.cpu_count() or 1
    if a.threads == 1:  # as hrnet_jax.bench: XLA single-threaded too (read when the workers' backends start)
        extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()
    results = {"machine": host_info(), "size": a.size, "threads": threads}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"load {results['machine']['load_at_start']}", file=sys.stderr)
    densities = [int(v) for v in a.people.split(",") if v]
    results["grouping"] = [] if a.no_grouping else bench_grouping(densities, a.size, a.iters)
    if not a.grouping_only:
        results["jax"] = run_worker("jax", a.size, a.iters, a.warmup, threads)
        results["torch"] = run_worker("torch", a.size, a.iters, a.warmup, threads)
        tj, tt = results["jax"].get("seconds"), results["torch"].get("seconds")
        if tj and tt:
            results["network_nms_topk"] = {"jax_img_s": round(1 / tj, 2), "torch_img_s": round(1 / tt, 2),
                                           "ratio": round(tt / tj, 2)}
            results["end_to_end"] = [
                dict(people=g["people"], jax_img_s=round(1 / (tj + g["vectorised_ms"] / 1e3), 2),
                     torch_img_s=round(1 / (tt + g["loop_ms"] / 1e3), 2),
                     ratio=round((tt + g["loop_ms"] / 1e3) / (tj + g["vectorised_ms"] / 1e3), 2))
                for g in results["grouping"]]
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
