"""hrnet_jax: HRNet (High-Resolution Network) in JAX / Flax Linen."""

__version__ = "0.1.0"
