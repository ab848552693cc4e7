"""Where hrnet_jax.compile_cache puts JAX's persistent compilation cache (its use by a resumed training run is
tested in test_train_resume)."""
from pathlib import Path

import jax

from hrnet_jax import compile_cache


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("HRNET_JAX_CACHE", str(tmp_path))
    key = compile_cache.machine_key()
    assert compile_cache.default_dir() == tmp_path / "xla" / key
    arch, digest = key.rsplit("-", 1)
    assert arch and len(digest) == 12 and int(digest, 16) >= 0

    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == tmp_path / "mine"
    monkeypatch.setenv(compile_cache.ENV, "~/somewhere")
    assert compile_cache.default_dir() == Path.home() / "somewhere"
    before = jax.config.jax_compilation_cache_dir
    for off in ("off", "OFF", "0", ""):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.default_dir() is None
        assert compile_cache.enable() == (before or None)  # off: JAX's setting is left alone
        assert jax.config.jax_compilation_cache_dir == before
