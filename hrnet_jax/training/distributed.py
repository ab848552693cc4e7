"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the usual cluster environment."""
from __future__ import annotations

import os

import jax

# Environments where jax.distributed.initialize() finds the coordinator by itself.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialises multi-process JAX when flags are given or a cluster environment is detected.

    Must run before anything touches a JAX backend. On CPU the cross-process collectives use gloo.
    Returns True if ``jax.distributed`` was initialised.
    """
    if coordinator_address is None and num_processes is None and not any(v in os.environ for v in _CLUSTER_ENV):
        return False
    if os.environ.get("SLURM_JOB_ID") and coordinator_address is None and "SLURM_NTASKS" in os.environ \
            and os.environ["SLURM_NTASKS"] == "1":
        return False  # a single-task Slurm job is a plain one-process run
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
    return True
