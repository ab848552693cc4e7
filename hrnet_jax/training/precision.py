"""Compute dtypes by name (configs hold strings; params stay float32)."""
from __future__ import annotations

import jax.numpy as jnp

_DTYPES = {"float32": None, "fp32": None, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
           "float16": jnp.float16, "fp16": jnp.float16}


def compute_dtype(name: str):
    """``"float32"`` → None (the modules' default), ``"bfloat16"`` → ``jnp.bfloat16``."""
    if name not in _DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; valid: {sorted(_DTYPES)}")
    return _DTYPES[name]
