"""The one grain pipeline builder every task uses: per-process sharding, shuffling, bad-record handling,
batching, eval padding, bounded read-ahead and optional worker processes.

A task supplies ``num_records`` and a per-example function; records are addressed by index:

* training: ``example_fn(index, rng) -> dict of numpy arrays`` (``rng`` a ``numpy.random.Generator`` that grain
  derives from (seed, epoch, position), so the stream is reproducible per seed, independent of the number of
  threads / worker processes, and resumable from an iterator state);
* evaluation: ``example_fn(index) -> dict``.

A bad record raises :class:`SkipExample` (``reason`` names why, e.g. ``"corrupt_image"``). Training replaces it
by the next record (index + 1, + 2, ... up to ``max_retries``); evaluation yields a placeholder (zeros shaped like
a good example) with ``valid`` False, so batch shapes never change.

Counters travel with the data, so they are right with worker processes and read-ahead: every example carries
one int32 ``"_stats/<reason>"`` field per declared reason (the same set in every example, so batches stack),
1 when the element's *own* record was bad (records met only as a replacement are not counted: each bad record
is counted once per pass). :func:`pop_stats` removes these fields from a batch and returns their sums; a loop
that adds them up over the batches it consumes never counts read-ahead.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import grain
import numpy as np

log = logging.getLogger(__name__)

STATS_PREFIX = "_stats/"
#: reasons declared by default (the ones :func:`hrnet_jax.data.ops.image.read_image_rgb` raises)
DEFAULT_REASONS = ("missing_image", "corrupt_image")

Example = dict[str, Any]


class SkipExample(Exception):
    """Raised by an example function for a record that cannot be used; ``reason`` is a short counter name."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReadConfig:
    """How batches are produced on the host.

    ``num_threads`` reader threads per process build batches ahead of the consumer; at most
    ``prefetch_batches`` batches are buffered (grain's default, 500 elements, would hold hundreds of batches).
    ``worker_count`` > 0 runs that many worker processes (grain ``mp_prefetch``), each with its own threads and
    ``prefetch_batches`` buffer plus ``worker_buffer_size`` finished batches; 0 reads in this process.
    """
    num_threads: int = 2
    prefetch_batches: int = 4
    worker_count: int = 0
    worker_buffer_size: int = 1

    def read_options(self) -> grain.ReadOptions:
        return grain.ReadOptions(num_threads=int(self.num_threads), prefetch_buffer_size=int(self.prefetch_batches))


def stats_keys(reasons: Sequence[str]) -> tuple[str, ...]:
    return tuple(STATS_PREFIX + r for r in reasons)


def pop_stats(batch: MutableMapping[str, Any]) -> dict[str, int]:
    """Removes the ``_stats/*`` fields from ``batch`` (in place) and returns ``{reason: sum over the batch}``."""
    out = {}
    for key in [k for k in batch if isinstance(k, str) and k.startswith(STATS_PREFIX)]:
        out[key[len(STATS_PREFIX):]] = int(np.sum(np.asarray(batch.pop(key))))
    return out


def _check_reason(e: SkipExample, reasons: Sequence[str]) -> None:
    if e.reason not in reasons:
        raise ValueError(f"example function skipped a record for reason {e.reason!r}, which is not declared; "
                         f"declared reasons: {tuple(reasons)} (pass reasons=... to the pipeline builder)") from e


def _with_stats(ex: Mapping[str, Any], reasons: Sequence[str], bad: str | None) -> Example:
    out = dict(ex)
    for r in reasons:
        out[STATS_PREFIX + r] = np.int32(r == bad)
    return out


class _TrainFn:
    """``random_map`` transform: the example of ``index``, or of the next good record after a :class:`SkipExample`."""

    def __init__(self, num_records: int, example_fn: Callable, reasons: Sequence[str], max_retries: int):
        self.num_records, self.example_fn = num_records, example_fn
        self.reasons, self.max_retries = tuple(reasons), int(max_retries)

    def __call__(self, index, rng: np.random.Generator) -> Example:
        index = int(index)
        bad = None
        errors = []
        for attempt in range(self.max_retries + 1):
            i = (index + attempt) % self.num_records
            try:
                ex = self.example_fn(i, rng)
            except SkipExample as e:
                _check_reason(e, self.reasons)
                if attempt == 0:
                    bad = e.reason
                    log.debug("training record %d skipped: %s", i, e)
                errors.append(f"{i}: {e}")
                continue
            return _with_stats(ex, self.reasons, bad)
        raise RuntimeError(f"{self.max_retries + 1} consecutive bad records from index {index} "
                           f"(of {self.num_records}); is the data path right? First errors: {errors[:3]}")


class _EvalFn:
    """``map`` transform: the example of ``index`` (``valid`` True), or a placeholder (``valid`` False) for a bad
    record or an index past the end (padding)."""

    def __init__(self, num_records: int, example_fn: Callable, reasons: Sequence[str],
                 placeholder: Mapping[str, Any] | None, max_probe: int):
        self.num_records, self.example_fn, self.reasons = num_records, example_fn, tuple(reasons)
        self.placeholder = None if placeholder is None else dict(placeholder)
        self.max_probe = max_probe

    def _placeholder(self) -> Example:
        if self.placeholder is None:
            for i in range(min(self.num_records, self.max_probe)):
                try:
                    good = self.example_fn(i)
                except SkipExample:
                    continue
                self.placeholder = {k: np.zeros_like(np.asarray(v)) for k, v in good.items()}
                break
            else:
                raise RuntimeError(f"no good record among the first {min(self.num_records, self.max_probe)} of "
                                   f"{self.num_records} to shape the evaluation placeholder on")
        return self.placeholder

    def __call__(self, index) -> Example:
        index = int(index)
        bad = None
        if index < self.num_records:
            try:
                ex = dict(self.example_fn(index))
                ex["valid"] = np.bool_(True)
                return _with_stats(ex, self.reasons, None)
            except SkipExample as e:
                _check_reason(e, self.reasons)
                log.warning("evaluation record %d skipped: %s", index, e)
                bad = e.reason
        ex = dict(self._placeholder())
        ex["valid"] = np.bool_(False)
        return _with_stats(ex, self.reasons, bad)


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed (parse none: defaults)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS([sys.argv[0] if sys.argv and sys.argv[0] else "hrnet_jax"], known_only=True)


def _finish(ds: grain.MapDataset, read: ReadConfig) -> grain.IterDataset:
    it = ds.to_iter_dataset(read.read_options())
    if read.worker_count > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(read.worker_count),
                                                         per_worker_buffer_size=int(read.worker_buffer_size)))
    return it


def train_dataset(num_records: int, example_fn: Callable[[int, np.random.Generator], Mapping[str, Any]], *,
                  batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, read: ReadConfig = ReadConfig(), max_retries: int = 16,
                  reasons: Sequence[str] = DEFAULT_REASONS) -> grain.IterDataset:
    """Batches of training examples for one process (infinite when ``num_epochs`` is None).

    ``range(num_records)`` -> shuffle (a new order every epoch) -> repeat -> ``example_fn`` with per-element
    generators (seed ``seed * 1000003``, keyed by the global position) -> ``[process_index::process_count]``
    (so global batches do not depend on the process count) -> batch (drop
    remainder). Iterators support ``get_state`` / ``set_state`` and grain checkpointing.
    """
    if num_records <= 0:
        raise ValueError("train_dataset: no records")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if num_records < batch_size * process_count:
        raise ValueError(f"{num_records} records are fewer than one global batch of {batch_size * process_count}")
    # One global stream (order and augmentation draws keyed by the global position), then every process takes
    # its rows of it: global batch t holds the same examples whatever the process count, and each process
    # still reads only its own records (random access).
    ds = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(_TrainFn(num_records, example_fn, reasons, max_retries), seed=seed * 1000003)
    ds = ds[process_index::process_count]
    return _finish(ds.batch(batch_size, drop_remainder=True), read)


def eval_num_batches(num_records: int, batch_size: int, process_count: int = 1) -> int:
    """Batches per process of :func:`eval_dataset` (the same on every process)."""
    global_batch = batch_size * process_count
    return -(-num_records // global_batch)


def eval_dataset(num_records: int, example_fn: Callable[[int], Mapping[str, Any]], *, batch_size: int,
                 process_index: int = 0, process_count: int = 1, read: ReadConfig = ReadConfig(),
                 reasons: Sequence[str] = DEFAULT_REASONS, placeholder: Mapping[str, Any] | None = None,
                 max_probe: int = 64) -> grain.IterDataset:
    """Every record once, in order, for one process; each batch carries a bool ``valid``.

    The index range is padded to a multiple of the global batch (``batch_size * process_count``), so every
    process runs :func:`eval_num_batches` full batches; padding rows and bad records are placeholders (zeros
    shaped like the first good example, or ``placeholder``) with ``valid`` False.
    """
    if num_records <= 0:
        raise ValueError("eval_dataset: no records")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    total = eval_num_batches(num_records, batch_size, process_count) * batch_size * process_count
    ds = grain.MapDataset.range(total)[process_index::process_count]
    ds = ds.map(_EvalFn(num_records, example_fn, reasons, placeholder, max_probe))
    return _finish(ds.batch(batch_size, drop_remainder=False), read)
