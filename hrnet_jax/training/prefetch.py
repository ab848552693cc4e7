"""Device prefetch: the next batches are transferred while the current step runs.

:class:`DevicePrefetch` wraps a host iterator of numpy batches (a grain ``DatasetIterator``). It keeps ``size``
batches already on the device (``jax.make_array_from_process_local_data`` over the data sharding; uint8 images
travel as uint8), takes the data layer's per-example counters out of each batch (summed in :attr:`counts` for
the batches *consumed*, so read-ahead never double counts), and checkpoints as the underlying iterator would at
the last consumed batch: ``get_state`` / ``set_state`` make a resumed run see exactly the batches it had not
trained on, and carry :attr:`counts` along (grain's Orbax checkpoint handler calls these, JSON as bytes).
"""
from __future__ import annotations

import collections
import json
from typing import Any, Iterator

import grain

from hrnet_jax.data.pipeline import pop_stats
from hrnet_jax.training import sharding as shd


def as_iter_dataset(ds):
    return ds.to_iter_dataset() if isinstance(ds, grain.MapDataset) else ds


class DevicePrefetch:
    def __init__(self, iterator: Iterator[dict], sharding: Any, size: int = 2):
        self._it = iterator
        self._sharding = sharding
        self._size = max(int(size), 1)
        self._queue: collections.deque = collections.deque()
        self._stateful = hasattr(iterator, "get_state")
        self._state = iterator.get_state() if self._stateful else None
        self.counts: dict[str, int] = {}

    def _fill(self) -> None:
        while len(self._queue) < self._size:
            try:
                local = next(self._it)
            except StopIteration:
                self._queue.append(None)
                return
            stats = pop_stats(local)
            state = self._it.get_state() if self._stateful else None
            self._queue.append((shd.put_batch(local, self._sharding), stats, state))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self._queue:
            self._fill()
        item = self._queue.popleft()
        if item is None:
            self._queue.appendleft(None)
            raise StopIteration
        batch, stats, self._state = item
        for k, v in stats.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        self._fill()  # start the next transfers before the caller runs its step
        return batch

    # -- grain checkpointing: the state at the last consumed batch, and the counters so far ---------------
    def get_state(self) -> bytes:
        return json.dumps({"iterator": self._state, "counts": self.counts}).encode()

    def set_state(self, state: bytes) -> None:
        d = json.loads(state.decode() if isinstance(state, bytes) else state)
        self._queue.clear()
        self._it.set_state(d["iterator"])
        self._state = d["iterator"]
        self.counts = {k: int(v) for k, v in d.get("counts", {}).items()}

    def start_prefetch(self) -> None:  # grain's restore calls it; transfers start at the next __next__
        pass
