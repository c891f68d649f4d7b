"""Thin wrappers over orbax, TensorBoard and matplotlib used by training."""
