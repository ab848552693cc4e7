"""Classification data: the cls_demo TFDS builder prepares ArrayRecord files without TensorFlow and the pipeline
reads them back through tfds.data_source; per-process shards are disjoint, complete, and read only their own
records; corrupt JPEG bytes are skipped and counted; the folder layout source."""
import hashlib
import os
import sys

import cv2
import numpy as np
import pytest

from hrnet_jax.data import pipeline
from hrnet_jax.data.sources.imagenet import FolderSource, TfdsSource
from hrnet_jax.data.synthetic.classification import CLASSES, ensure_cls_demo

SMALL = dict(num_train=40, num_val=12, min_side=48, max_side=96, seed=3)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds") / "cls_demo")
    ensure_cls_demo(d, quiet=True, **SMALL)
    return d


def _digest(b) -> str:
    return hashlib.md5(bytes(b)).hexdigest()


def test_builder_prepares_without_tensorflow_and_reads_back(demo_dir):
    assert "tensorflow" not in sys.modules  # neither preparing nor reading imported TF
    files = os.listdir(os.path.join(demo_dir, "cls_demo", "1.0.0"))
    assert any(f.startswith("cls_demo-train.array_record") for f in files), files
    src = TfdsSource("cls_demo", "train", demo_dir)
    assert len(src) == 40 and src.classes == list(CLASSES)
    data, label, name = src.record(5)
    assert data[:2] == b"\xff\xd8" and 0 <= label < 10 and "cls_demo/train[5]" in name
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert 48 <= min(img.shape[:2]) and max(img.shape[:2]) <= 96
    assert sorted(int(src.record(i)[1]) for i in range(40)) == sorted(i % 10 for i in range(40))
    assert len(TfdsSource("cls_demo", "validation", demo_dir)) == 12
    # a second call reuses the prepared copy; a foreign folder is refused untouched
    assert ensure_cls_demo(demo_dir, quiet=True, **SMALL) == demo_dir
    assert "tensorflow" not in sys.modules


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by the cls_demo generator"):
        ensure_cls_demo(str(tmp_path), quiet=True, **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


class _Recording:
    """A source wrapper recording which records a process reads."""

    def __init__(self, src):
        self.src, self.read = src, []

    def __len__(self):
        return len(self.src)

    def record(self, i):
        self.read.append(int(i))
        return self.src.record(i)


def _ids(i, rng, src):
    data, label, _ = src.record(i)
    return {"digest": np.frombuffer(bytes.fromhex(_digest(data)), np.uint8), "label": np.int32(label)}


def test_process_shards_disjoint_complete_and_local(demo_dir):
    n, local_bs, pc = 40, 4, 2  # one epoch = 40 / 8 = 5 global batches
    seen, reads = [], []
    for pi in range(pc):
        src = _Recording(TfdsSource("cls_demo", "train", demo_dir))
        ds = pipeline.train_dataset(n, lambda i, rng, s=src: _ids(i, rng, s), batch_size=local_bs, seed=7,
                                    process_index=pi, process_count=pc, read=pipeline.ReadConfig(num_threads=1,
                                                                                                 prefetch_batches=1))
        it = iter(ds)
        rows = [bytes(d).hex() for _ in range(n // (local_bs * pc)) for d in next(it)["digest"]]
        seen.append(rows)
        reads.append(set(src.read))
    assert not set(seen[0]) & set(seen[1])                       # disjoint
    everything = {_digest(TfdsSource("cls_demo", "train", demo_dir).record(i)[0]) for i in range(n)}
    assert set(seen[0]) | set(seen[1]) == everything             # complete: one epoch is the dataset
    # each process read (about) only its own records: the 20 it yielded, plus at most its read-ahead
    for pi in range(pc):
        assert len(reads[pi]) <= 20 + 2 * local_bs, len(reads[pi])
    assert len(reads[0] & reads[1]) <= 2 * 2 * local_bs


def test_task_reads_tfds_sharded_eval_complete(demo_dir):
    from experiments import get_experiment
    from hrnet_jax.tasks import build_task
    cfg = get_experiment("cls_demo", [f"task.data_dir={demo_dir}", "task.synthetic={}", "batch_size=8",
                                      "task.eval_batch_size=8", "task.image_size=32", "task.eval_resize=37",
                                      "task.eval_crop=32"])
    task = build_task(cfg)
    labels, n_valid = [], 0
    for pi in range(2):
        batches = list(task.eval_dataset("val", pi, 2))
        assert len(batches) == pipeline.eval_num_batches(12, 4, 2) == 2
        for b in batches:
            assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
            labels += list(b["label"][b["valid"]])
            n_valid += int(b["valid"].sum())
    assert n_valid == 12
    src = TfdsSource("cls_demo", "validation", demo_dir)
    assert sorted(labels) == sorted(src.record(i)[1] for i in range(12))
    b = next(iter(task.train_dataset(1, 2)))
    assert b["image"].shape == (4, 32, 32, 3) and b["label"].dtype == np.int32
    assert task.class_names() == list(CLASSES)


def _corrupt_builder():
    import tensorflow_datasets as tfds
    from etils import epath

    class ClsCorrupt(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        code_path = epath.Path(__file__)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["a", "b"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(8), "validation": self._generate_examples(8)}

        def _generate_examples(self, n):
            for i in range(n):
                img = np.full((40, 56, 3), 30 * i, np.uint8)
                data = cv2.imencode(".jpg", img)[1].tobytes()
                if i == 2:
                    data = data[: len(data) // 2]      # truncated JPEG
                if i == 5:
                    data = b"\xff\xd8 not really a jpeg \xff\xd9"
                yield i, {"image": data, "label": i % 2}

    return ClsCorrupt


def test_corrupt_jpeg_bytes_skipped_and_counted(tmp_path):
    builder = _corrupt_builder()(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    from experiments import get_experiment
    from hrnet_jax.tasks import build_task
    cfg = get_experiment("cls_demo", [f"task.data_dir={tmp_path}", "task.synthetic={}", "task.tfds_name=cls_corrupt",
                                      "task.num_classes=2", "batch_size=4", "task.image_size=32",
                                      "task.eval_resize=32", "task.eval_crop=32"])
    task = build_task(cfg)
    counts, valid = {}, 0
    for b in task.eval_dataset("val", 0, 1):
        b = dict(b)
        for k, v in pipeline.pop_stats(b).items():
            counts[k] = counts.get(k, 0) + v
        valid += int(b["valid"].sum())
    assert counts["corrupt_image"] == 2 and valid == 6
    it = iter(task.train_dataset(0, 1))
    total = {}
    for _ in range(2):  # one epoch of 8 records
        b = dict(next(it))
        for k, v in pipeline.pop_stats(b).items():
            total[k] = total.get(k, 0) + v
        assert b["image"].shape == (4, 32, 32, 3)
    assert total["corrupt_image"] == 2


def test_folder_source(tmp_path):
    classes = ["n02", "n01", "n03"]
    for c in classes:
        os.makedirs(tmp_path / "train" / c)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "train" / c / f"{c}_{i}.JPEG"), np.full((30, 40, 3), 50, np.uint8))
    os.makedirs(tmp_path / "val")
    lines = []
    for i, c in enumerate(["n03", "n01", "n02", "n03"]):
        cv2.imwrite(str(tmp_path / "val" / f"v{i}.JPEG"), np.full((30, 40, 3), 50, np.uint8))
        lines.append(f"v{i}.JPEG {c}")
    (tmp_path / "val_labels.txt").write_text("\n".join(lines))
    (tmp_path / "synset_words.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\nn03 great white shark\n")
    tr = FolderSource(str(tmp_path), "train")
    assert tr.classes == ["n01", "n02", "n03"] and len(tr) == 6
    assert tr.names == ["tench, Tinca tinca", "goldfish", "great white shark"]
    assert [tr.record(i)[1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    va = FolderSource(str(tmp_path), "val")
    assert [va.record(i)[1] for i in range(4)] == [2, 0, 1, 2]
    os.remove(tmp_path / "val" / "v1.JPEG")
    from hrnet_jax.data.ops.image import ImageReadError
    with pytest.raises(ImageReadError) as e:
        va.record(1)
    assert e.value.reason == "missing_image"
