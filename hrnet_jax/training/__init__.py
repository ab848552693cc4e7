"""The generic training machinery: config + overrides, mesh/sharding, optimizers, checkpoints, logging, steps.

The program itself is :mod:`hrnet_jax.train`.
"""
