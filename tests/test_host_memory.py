"""The entry points' re-exec with glibc's huge-page malloc tunable (hrnet_jax.host_memory), seen from the child
process's own environment and memory map."""
import os
import subprocess
import sys
import textwrap

import pytest

from hrnet_jax import host_memory

PROBE = textwrap.dedent("""
    import os, sys
    from hrnet_jax.host_memory import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc("probe")
    print(os.environ.get("GLIBC_TUNABLES", ""))
    print(len(sys.argv[1:]), *sys.argv[1:])
""")


def _run(tmp_path, env_extra, *args):
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "HRNET_JAX_NO_REEXEC")}
    env.update(env_extra, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    out = subprocess.run([sys.executable, "-m", "probe", *args], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    return out.splitlines()


def test_reexec_sets_the_tunable_and_keeps_arguments_and_other_tunables(tmp_path):
    helps = host_memory.hugepage_malloc_helps() is None
    tunables, argv = _run(tmp_path, {}, "--a=1", "b c")
    assert tunables == (host_memory.TUNABLE if helps else "")
    assert argv == "2 --a=1 b c"
    tunables, _ = _run(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert tunables == ("glibc.malloc.arena_max=4:" + host_memory.TUNABLE if helps else "glibc.malloc.arena_max=4")


def test_opt_out_and_already_set(tmp_path):
    assert _run(tmp_path, {"HRNET_JAX_NO_REEXEC": "1"})[0] == ""
    assert _run(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[0] == "glibc.malloc.hugetlb=0"


@pytest.mark.skipif(host_memory.hugepage_malloc_helps() is not None, reason="huge-page malloc cannot help here")
def test_tunable_puts_a_large_malloc_on_huge_pages():
    """glibc with the tunable madvises a 64 MiB allocation for huge pages: the kernel's smaps says so."""
    code = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)
        with open("/proc/self/smaps") as f:
            blocks = f.read().split("\\n")
        print(sum(int(l.split()[1]) for l in blocks if l.startswith("AnonHugePages:")))
    """)
    def huge_kb(tunables):
        env = dict(os.environ, GLIBC_TUNABLES=tunables)
        return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout)
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        if "[madvise]" in f.read():  # (with "always" every process gets huge pages anyway)
            assert huge_kb("glibc.malloc.hugetlb=0") < 8 << 10  # 4 KiB pages (at most a few stray huge ones)
    assert huge_kb(host_memory.TUNABLE) >= 48 << 10  # most of the 64 MiB on 2 MiB pages
