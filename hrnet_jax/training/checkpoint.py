"""Checkpoints: one Orbax (V0) CheckpointManager for the train state and the grain iterator state, plus
reading/writing plain variable checkpoints ``{params, batch_stats}`` for ``--init_from``.

Layout: ``<workdir>/checkpoints/<step>/{state, data}``. Restores always go through an abstract target whose
leaves carry the *current* mesh's NamedShardings, so a checkpoint written on 8 devices restores on 1.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class Checkpointer:
    """Keep-last-N plus best-by-metric, async saves, train state + data iterator in one step directory."""

    def __init__(self, directory: str, *, keep: int = 3, best_metric: str = "", best_mode: str = "max",
                 async_save: bool = True):
        policies = [cm.LatestN(n=keep)]
        if best_metric:  # "<eval name>/<metric>", a key of the metrics passed to save()
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any = None, metrics: dict | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
        """Restores ``state`` onto ``abstract_state``'s shardings, and ``data_iter`` in place.

        A checkpoint written by another number of processes has no data file for this process
        (``process_<i>-of-<n>.json``): the iterator position is then taken from the written ones (every
        process's iterator is at the same local-batch position of one global stream: ``data.pipeline``), and
        the data counters, which were per process, go to process 0 as their sum."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        remapped = None
        if data_iter is not None:
            from etils import epath  # local paths and gs:// alike
            data_dir = epath.Path(self.directory) / str(int(step)) / "data"
            own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
            if data_dir.is_dir() and not own.exists():
                remapped = remap_data_state(data_dir, jax.process_index())
            else:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        state = self.manager.restore(int(step), args=ocp.args.Composite(**items))["state"]
        if remapped is not None:
            data_iter.set_state(remapped)
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def remap_data_state(data_dir, process_index: int) -> bytes:
    """The data-iterator state for ``process_index`` from the ``process_<i>-of-<n>.json`` files another process
    count wrote (see :meth:`Checkpointer.restore`)."""
    import json
    import re
    from etils import epath
    files = sorted(p for p in epath.Path(data_dir).iterdir() if re.fullmatch(r"process_\d+-of-\d+\.json", p.name))
    if not files:
        raise FileNotFoundError(f"no data iterator state in {data_dir}")
    states = [json.loads(p.read_text()) for p in files]
    iterators = [json.dumps(s.get("iterator"), sort_keys=True) for s in states]
    if len(set(iterators)) > 1:
        raise ValueError(f"the processes that wrote {data_dir} were at different data positions; cannot restore "
                         f"on another process count")
    counts: dict[str, int] = {}
    if process_index == 0:
        for s in states:
            for k, v in (s.get("counts") or {}).items():
                counts[k] = counts.get(k, 0) + int(v)
    else:
        counts = {k: 0 for k in (states[0].get("counts") or {})}
    return json.dumps({"iterator": states[0].get("iterator"), "counts": counts}).encode()


def latest_step_on_disk(directory: str) -> int | None:
    """The newest finalized step folder of a checkpoint directory (Orbax writes unfinished ones under temporary
    names), without opening a manager; None if there is none."""
    if not os.path.isdir(directory):
        return None
    steps = [int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d))]
    return max(steps) if steps else None


def abstract_like(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# -- variable checkpoints (converted weights) -------------------------------------------------------------

def save_variables(path: str, variables: dict) -> None:
    """Writes ``{"params": ..., "batch_stats": ...}`` as an Orbax PyTree checkpoint (what ``--init_from`` reads)."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), variables, force=True)


def load_variables(path: str) -> dict:
    """Reads a variables checkpoint as host numpy arrays (no device layout needed: works on any mesh).

    ``path`` is the checkpoint itself or a ``hrnet_jax.convert`` output folder (which holds it as ``variables``).
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "variables")):
        path = os.path.join(path, "variables")
    import absl.logging  # Orbax warns about the step-level metadata file of a training checkpoint's item
    verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        return _load_tree(path)
    finally:
        absl.logging.set_verbosity(verbosity)


def _load_tree(path: str) -> dict:
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        tree = getattr(tree, "tree", tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                                    is_leaf=lambda x: not isinstance(x, (dict, list, tuple)))
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def merge_variables(fresh: dict, loaded: dict, mode: str = "full") -> tuple[dict, dict]:
    """Puts ``loaded`` values into the ``fresh`` tree (same structure as the model's variables).

    ``mode="full"``: every fresh leaf must be present with the same shape (else ValueError listing them).
    ``mode="matching"``: take leaves whose path and shape match (e.g. backbone only); report the others.
    Returns ``(merged, report)`` with report = {"loaded": [...], "fresh": [...], "unused": [...]} paths.
    """
    if mode not in ("full", "matching"):
        raise ValueError(f"unknown init_from_mode {mode!r}; valid: full, matching")
    flat_fresh = _flatten(fresh)
    flat_loaded = _flatten(loaded)
    merged, report = {}, {"loaded": [], "fresh": [], "unused": [], "shape_mismatch": []}
    for path, value in flat_fresh.items():
        src = flat_loaded.get(path)
        if src is not None and tuple(np.shape(src)) == tuple(value.shape):
            merged[path] = np.asarray(src, dtype=value.dtype)
            report["loaded"].append(path)
        else:
            merged[path] = value
            report["fresh" if src is None else "shape_mismatch"].append(path)
    report["unused"] = sorted(set(flat_loaded) - set(flat_fresh))
    if mode == "full" and (report["fresh"] or report["shape_mismatch"]):
        raise ValueError(f"init_from (full): {len(report['fresh'])} variables missing from the checkpoint "
                         f"(e.g. {report['fresh'][:5]}), {len(report['shape_mismatch'])} with other shapes "
                         f"(e.g. {report['shape_mismatch'][:5]}); use init_from_mode=matching for a partial "
                         f"(backbone) load")
    return _unflatten(merged), report


def _flatten(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out["/".join(prefix + (str(k),))] = v
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
