"""Run output on process 0: a progress bar, TensorBoard scalars and ``<workdir>/metrics.jsonl``."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np


def check_workdir(workdir: str) -> None:
    """Fails fast (before any compute) if ``workdir`` cannot be created or written."""
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps({k: (v if isinstance(v, int) or math.isfinite(v) else str(v))
                                      for k, v in row.items()}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


class Progress:
    """A tqdm bar over [start, total) showing loss and img/s; silent when disabled (other processes)."""

    def __init__(self, start: int, total: int, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=1.0, disable=None)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                     refresh=False)
            self.bar.update(n)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Images per second between two ``tick`` calls."""

    def __init__(self):
        self.t, self.images = time.perf_counter(), 0

    def add(self, images: int) -> None:
        self.images += images

    def tick(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.t, 1e-9)
        self.t, self.images = now, 0
        return rate
