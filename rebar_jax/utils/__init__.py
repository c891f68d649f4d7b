"""Thin wrappers over orbax, TensorBoard and matplotlib used by training."""

# The package exports its modules (none is imported here: each pulls in its
# own dependency, orbax, TensorBoard or matplotlib).
__all__ = ["checkpoints", "plots", "runs", "timing", "writers"]
