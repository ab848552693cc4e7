"""The device mesh (one ``data`` axis), batch sharding, and FSDP of large tensors over ``data``."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], nbytes: int, n: int, min_bytes: int) -> P:
    """Shard the largest dimension divisible by ``n`` of a tensor of at least ``min_bytes`` (else replicate)."""
    if n <= 1 or nbytes < min_bytes or not shape:
        return P()
    for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[d] % n == 0:
            spec = [None] * len(shape)
            spec[d] = DATA
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool = False, min_bytes: int = 4 * 2 ** 20) -> Any:
    """NamedShardings for a pytree of ShapeDtypeStructs: replicated, or FSDP of big tensors (params and the
    optimizer moments, which have the same shapes, get the same layout)."""
    n = mesh.shape[DATA]

    def one(x):
        if not fsdp:
            return replicated(mesh)
        nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        return NamedSharding(mesh, fsdp_spec(x.shape, nbytes, n, min_bytes))

    return jax.tree.map(one, abstract_state)


def put_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """Each process's numpy batch (its rows of the global batch) → global jax Arrays sharded over ``data``."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
            if _is_array(v)}


def _is_array(v) -> bool:
    a = np.asarray(v)
    return a.dtype.kind in "biuf" and a.ndim >= 1


def bytes_per_device(abstract: Any, shardings: Any) -> tuple[int, int]:
    """(total bytes, bytes held by one device) of a pytree of ShapeDtypeStructs laid out by ``shardings``."""
    total = per = 0
    for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        item = np.dtype(x.dtype).itemsize
        total += int(np.prod(x.shape)) * item
        per += int(np.prod(s.shard_shape(x.shape))) * item
    return total, per


def memory_line(abstract_state: Any, shardings: Any, fsdp: bool = False) -> str:
    """One line: the train state's size (params, optimizer state, EMA) in all and per device."""
    total, per = bytes_per_device(abstract_state, shardings)
    params_total, params_per = bytes_per_device(abstract_state.params, shardings.params)
    mib = lambda b: f"{b / 2 ** 20:,.1f} MiB"
    return (f"train state {mib(total)} ({mib(params_total)} params), per device {mib(per)} "
            f"({mib(params_per)} params){' with FSDP' if fsdp else ''}")
