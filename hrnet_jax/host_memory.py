"""Host-memory setting of the command-line entry points (``train``, ``bench``): glibc malloc on huge pages.

XLA's CPU runtime allocates a compiled computation's whole temporary buffer at every call (the W32 training
step at batch 4: 798 MB) and frees it afterwards. glibc serves an allocation that large, made from one of XLA's
worker threads, with a fresh ``mmap`` and returns it with ``munmap``, so every step faults in ~200,000 new 4 KiB
pages: on the 2-core EPYC 0.45 s of kernel time per 1.7 s step. With glibc's tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge pages (``madvise``), and the same
step takes ~500 faults and 0.1-0.3 s of kernel time (W32 step with serial oneDNN convs: 1.64-1.68 s ->
1.40-1.66 s; PyTorch's step is unchanged).

glibc reads its tunables once, when the process starts, so :func:`reexec_with_hugepage_malloc` restarts the
entry point with the tunable set (``os.execve``, same arguments) when it is missing. It does nothing where it
cannot help (not Linux/glibc, glibc < 2.35, transparent huge pages off) or when ``HRNET_JAX_NO_REEXEC=1``.
In a notebook, start Jupyter with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` for the same effect.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepage_malloc_helps() -> str | None:
    """None where the tunable can take effect in a new process; else why not."""
    if sys.platform != "linux":
        return f"not Linux ({sys.platform})"
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return f"not glibc ({lib or 'unknown libc'})"
    try:
        if tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
            return f"glibc {version} < 2.35 has no glibc.malloc.hugetlb"
    except ValueError:
        return f"unknown glibc version {version!r}"
    try:
        with open(_THP) as f:
            mode = f.read()
    except OSError:
        return "no transparent huge pages"
    if "[never]" in mode:
        return "transparent huge pages are off"
    return None


def reexec_with_hugepage_malloc(module: str) -> None:
    """Restarts ``python -m module <same arguments>`` with ``GLIBC_TUNABLES`` including :data:`TUNABLE`, unless
    it is already set, cannot help, or ``HRNET_JAX_NO_REEXEC`` is set. Call it first in ``__main__``."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or os.environ.get("HRNET_JAX_NO_REEXEC"):
        return
    if hugepage_malloc_helps() is not None:
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, TUNABLE) if t))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
