"""Executes notebooks/pose_demo.ipynb with nbclient (a short run: few steps, a small synthetic dataset)."""
from __future__ import annotations

import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks",
                        "pose_demo.ipynb")


def test_pose_demo_notebook_runs(tmp_path, monkeypatch):
    workdir = tmp_path / "wd"
    monkeypatch.setenv("POSE_DEMO_STEPS", "4")
    monkeypatch.setenv("POSE_DEMO_NUM_TRAIN", "24")
    monkeypatch.setenv("POSE_DEMO_NUM_VAL", "6")
    monkeypatch.setenv("POSE_DEMO_WORKDIR", str(workdir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()
    # The loop wrote its eval row (COCOeval through the real evaluator) and a checkpoint the predictor used.
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/AP" in r]
    assert evals and evals[-1]["step"] == 4 and 0.0 <= evals[-1]["val/AP"] <= 1.0
    assert (workdir / "checkpoints" / "4").is_dir()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)   # the prediction figure was drawn


def test_seg_demo_notebook_runs(tmp_path, monkeypatch):
    workdir = tmp_path / "wd"
    for k, v in {"SEG_DEMO_STEPS": "3", "SEG_DEMO_NUM_TRAIN": "8", "SEG_DEMO_NUM_VAL": "4", "SEG_DEMO_SMALL": "1",
                 "SEG_DEMO_WORKDIR": str(workdir)}.items():
        monkeypatch.setenv(k, v)
    path = os.path.join(os.path.dirname(NOTEBOOK), "seg_demo.ipynb")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    # The eval row (the confusion matrix over the generated val split) and the checkpoint the predictor used.
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/mIoU" in r]
    assert evals and evals[-1]["step"] == 3 and 0.0 <= evals[-1]["val/mIoU"] <= 100.0
    assert (workdir / "checkpoints" / "3").is_dir()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)   # the prediction figure was drawn
