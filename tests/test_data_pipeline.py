"""The shared pipeline builder: eval padding, determinism, resume, bad-record skipping and counting, memory."""
import os
import subprocess
import sys
import textwrap

import cv2
import grain
import numpy as np
import pytest

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.ops.image import ImageReadError, read_image_rgb

SYNC = dp.ReadConfig(num_threads=0, prefetch_batches=0)


class IndexExample:
    """Train: ``{"idx", "draw"}`` (the index and a draw of its generator); eval: ``{"idx", "x"}``."""

    def __call__(self, index, rng=None):
        ex = {"idx": np.int32(index), "x": np.full((2, 3), index, np.float32)}
        if rng is not None:
            ex["draw"] = np.float64(rng.random())
        return ex


class FileExample:
    """Reads ``paths[index]`` as an RGB image; bad files raise ImageReadError (a SkipExample)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __call__(self, index, rng=None):
        return {"image": read_image_rgb(self.paths[index]), "idx": np.int32(index)}


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ---- evaluation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_padding_every_record_once_same_batches_everywhere(process_count):
    n, bs = 10, 2
    expected_batches = -(-n // (bs * process_count))
    seen = []
    for p in range(process_count):
        batches = list(dp.eval_dataset(n, IndexExample(), batch_size=bs, process_index=p,
                                       process_count=process_count))
        assert len(batches) == expected_batches == dp.eval_num_batches(n, bs, process_count)
        for b in batches:
            assert b["valid"].dtype == bool and b["valid"].shape == (bs,) and np.isfinite(b["x"]).all()
            assert dp.pop_stats(b) == {"missing_image": 0, "corrupt_image": 0}
            seen += list(b["idx"][b["valid"]])
            assert (b["x"][~b["valid"]] == 0).all()   # placeholder rows are zeros
    assert sorted(seen) == list(range(n))          # valid count == num_records, each once


# ---- training: determinism, epochs, resume --------------------------------------------------------------------
def test_train_deterministic_per_seed_and_independent_of_threads():
    kw = dict(batch_size=4, process_index=0, process_count=1)
    a = _take(dp.train_dataset(12, IndexExample(), seed=3, read=SYNC, **kw), 7)
    b = _take(dp.train_dataset(12, IndexExample(), seed=3, read=dp.ReadConfig(num_threads=2), **kw), 7)
    c = _take(dp.train_dataset(12, IndexExample(), seed=4, read=SYNC, **kw), 7)
    for x, y in zip(a, b):
        _same(x, y)
    assert not np.array_equal(a[0]["idx"], c[0]["idx"])
    # each epoch (3 batches of 4) covers the 12 records once, in a new order
    e1, e2 = (np.concatenate([x["idx"] for x in a[i:i + 3]]) for i in (0, 3))
    assert sorted(e1) == sorted(e2) == list(range(12)) and not np.array_equal(e1, e2)


def test_train_processes_get_disjoint_shards():
    shards = [np.concatenate([b["idx"] for b in _take(dp.train_dataset(
        12, IndexExample(), batch_size=3, seed=0, process_index=p, process_count=2, read=SYNC), 2)]) for p in (0, 1)]
    assert sorted(np.concatenate(shards)) == list(range(12))


def test_train_resume_from_state_and_grain_checkpoint(tmp_path):
    make = lambda: dp.train_dataset(20, IndexExample(), batch_size=3, seed=7, read=dp.ReadConfig(num_threads=2))  # noqa
    it = iter(make())
    for _ in range(4):
        next(it)
    state = it.get_state()
    (tmp_path / "ckpt").mkdir()
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
    expected = [next(it) for _ in range(5)]
    it2 = iter(make())
    it2.set_state(state)
    it3 = iter(make())
    handler.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(it3))
    for e in expected:
        _same(e, next(it2))
        _same(e, next(it3))


# ---- bad records ----------------------------------------------------------------------------------------------
@pytest.fixture()
def image_files(tmp_path):
    """10 image files: 3 corrupt (garbage, empty, truncated JPEG) and 1 missing."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        p = str(tmp_path / f"{i:02d}.jpg")
        cv2.imwrite(p, (rng.random((16, 12, 3)) * 255).astype(np.uint8))
        paths.append(p)
    open(paths[2], "wb").write(b"\xff\xd8 not a jpeg at all")
    open(paths[5], "wb").write(b"")
    data = open(paths[6], "rb").read()
    open(paths[6], "wb").write(data[: len(data) // 2])
    os.remove(paths[8])
    return paths, {2, 5, 6}, {8}


def test_read_image_reasons(image_files):
    paths, corrupt, missing = image_files
    img = read_image_rgb(paths[0])
    assert img.dtype == np.uint8 and img.shape == (16, 12, 3)
    for i in corrupt | missing:
        with pytest.raises(ImageReadError) as e:
            read_image_rgb(paths[i])
        assert e.value.reason == ("missing_image" if i in missing else "corrupt_image") and paths[i] in str(e.value)
        assert isinstance(e.value, dp.SkipExample)


def test_eval_counts_each_bad_record_once(image_files):
    paths, corrupt, missing = image_files
    stats, valid, idx = {"corrupt_image": 0, "missing_image": 0}, 0, []
    for p in (0, 1):
        for b in dp.eval_dataset(len(paths), FileExample(paths), batch_size=3, process_index=p, process_count=2):
            for k, v in dp.pop_stats(b).items():
                stats[k] += v
            assert not any(k.startswith(dp.STATS_PREFIX) for k in b)
            assert b["image"].dtype == np.uint8 and b["image"].shape == (3, 16, 12, 3)
            assert (b["image"][~b["valid"]] == 0).all()
            valid += int(b["valid"].sum())
            idx += list(b["idx"][b["valid"]])
    assert stats == {"corrupt_image": 3, "missing_image": 1}
    assert valid == 6 and set(idx) == set(range(10)) - corrupt - missing


@pytest.mark.parametrize("workers", [0, 2])
def test_train_skips_and_counts_each_bad_record_once_per_epoch(image_files, workers):
    paths, corrupt, missing = image_files
    read = dp.ReadConfig(num_threads=1, prefetch_batches=2, worker_count=workers)
    ds = dp.train_dataset(len(paths), FileExample(paths), batch_size=5, seed=1, read=read)
    it = iter(ds)
    for epoch in range(2):
        stats = {"corrupt_image": 0, "missing_image": 0}
        for _ in range(2):   # 2 batches of 5 = one pass over the 10 records
            b = next(it)
            for k, v in dp.pop_stats(b).items():
                stats[k] += v
            assert not any(k.startswith(dp.STATS_PREFIX) for k in b)
            assert b["image"].dtype == np.uint8 and not set(b["idx"].tolist()) & (corrupt | missing)
        assert stats == {"corrupt_image": 3, "missing_image": 1}, epoch
    if workers:   # worker processes give the same stream as threads
        ref = _take(dp.train_dataset(len(paths), FileExample(paths), batch_size=5, seed=1, read=SYNC), 3)
        got = _take(ds, 3)
        for x, y in zip(ref, got):
            _same(x, y)


def test_undeclared_reason_and_hopeless_data_fail_clearly():
    def bad(index, rng=None):
        raise dp.SkipExample("weird")

    with pytest.raises(ValueError, match="weird"):
        next(iter(dp.train_dataset(4, bad, batch_size=2, seed=0, read=SYNC)))

    def unreadable(index, rng=None):
        raise dp.SkipExample("corrupt_image", f"record {index}")

    with pytest.raises(RuntimeError, match="consecutive bad records"):
        next(iter(dp.train_dataset(4, unreadable, batch_size=2, seed=0, read=SYNC, max_retries=3)))
    ok = dp.train_dataset(4, bad, batch_size=2, seed=0, read=SYNC, reasons=("weird",))
    with pytest.raises(RuntimeError):
        next(iter(ok))


# ---- host memory ----------------------------------------------------------------------------------------------
RSS_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    from hrnet_jax.data import pipeline as dp
    from hrnet_jax.data.keypoints import COCO17
    from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
    from hrnet_jax.data.synthetic.pose import generate_synthetic_pose_dataset
    from hrnet_jax.tasks.pose import pipeline as P
    root, threads, prefetch, batches, batch_size, step_s = sys.argv[1:7]
    paths = generate_synthetic_pose_dataset(root, COCO17, num_train=24, num_val=2, image_size_hw=(192, 192),
                                            max_people=2)
    src = CocoKeypointSource(paths["train_ann"], paths["train_images"], COCO17, (128, 96))
    read = dp.ReadConfig(num_threads=int(threads), prefetch_batches=int(prefetch))
    ds = P.train_dataset(src, COCO17, (128, 96), (32, 24), 2.0, P.AugmentConfig(), int(batch_size), 0, read=read)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB (Linux: KiB)
    it = iter(ds)
    next(it)
    base = peak()
    t = time.perf_counter()
    for _ in range(int(batches)):
        next(it)
        time.sleep(float(step_s))   # a train step: the consumer is slower than the readers
    print(json.dumps(dict(base_mib=base, peak_mib=peak(), growth_mib=peak() - base,
                          batch_mib=sum(v.nbytes for v in next(it).values()) / 2**20,
                          seconds=time.perf_counter() - t)))
""")


def run_rss_probe(root, threads, prefetch, batches=30, batch_size=32, step_s=0.2):
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(root), str(threads), str(prefetch), str(batches),
                          str(batch_size), str(step_s)], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bounded_read_ahead_keeps_host_memory_flat(tmp_path):
    """30 pose-demo batches (32 x 128x96, 2.7 MiB each) behind a 0.2 s consumer: with the default ReadConfig
    peak RSS grows by less than 64 MiB after the first batch (measured ~10 MiB; grain's default read options,
    16 threads / 500 batches, grew by ~200 MiB in the same run and keep growing with a slower consumer)."""
    d = dp.ReadConfig()
    r = run_rss_probe(tmp_path / "data", d.num_threads, d.prefetch_batches, step_s=0.2)
    assert r["growth_mib"] < 64, r
