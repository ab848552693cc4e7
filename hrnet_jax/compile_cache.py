"""JAX's persistent compilation cache for the command-line runs, so that a rerun (a resumed or repeated
training run) loads its compiled steps instead of compiling them again.

Why: the HRNet train steps take long to compile on CPUs (W48 classification, 2 cores: 35-47 s; see
``models.stream.repeat`` for why), and a preempted run that is resumed compiles the same steps again. With the
cache, the second process that compiles a given step on a given machine reads the executable from disk.

``python -m hrnet_jax.train`` calls :func:`enable`; ``python -m hrnet_jax.bench`` never does, because it
measures cold compiles. From Python or a notebook, call ``compile_cache.enable()`` before the first
``jax.jit`` call, or set JAX's own ``jax_compilation_cache_dir``.

Where: ``$HRNET_JAX_COMPILE_CACHE`` if set (``off`` turns the cache off), else ``xla/<machine key>`` under
``$HRNET_JAX_CACHE`` (default ``~/.cache/hrnet_jax``, which also holds the built oneDNN kernels). The machine
key is the CPU architecture and a hash of its instruction-set flags: XLA compiles CPU code for the host's
instruction set, so two machines that share a home directory must not share compiled executables. A cache
directory that a user has already given JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
"""
from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax

ENV = "HRNET_JAX_COMPILE_CACHE"


def machine_key() -> str:
    """``<arch>-<12 hex digits>``: the architecture and a hash of the CPU's feature flags (Linux
    ``/proc/cpuinfo``; elsewhere the processor string)."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return f"{platform.machine() or 'unknown'}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def cache_root() -> Path:
    """``$HRNET_JAX_CACHE`` (default ``~/.cache/hrnet_jax``): the project's on-disk caches, this one and the
    built oneDNN kernels (``kernels.onednn``)."""
    return Path(os.environ.get("HRNET_JAX_CACHE", Path.home() / ".cache" / "hrnet_jax")).expanduser()


def default_dir() -> Path | None:
    """The directory :func:`enable` uses without an argument; None when ``$HRNET_JAX_COMPILE_CACHE=off``."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "none", "") else Path(env).expanduser()
    return cache_root() / "xla" / machine_key()


def enable(path: str | os.PathLike | None = None) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` (default: :func:`default_dir`); returns the
    directory in use, or None when the cache is off. Call it before the first compilation."""
    current = jax.config.jax_compilation_cache_dir
    if path is None and current:
        return current  # the user configured JAX's cache themselves
    target = Path(path).expanduser() if path is not None else default_dir()
    if target is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(target))
    # every step, however quick to compile on this machine: whether a step is cached must not depend on load
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(target)
