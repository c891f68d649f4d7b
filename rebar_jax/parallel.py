"""Data parallelism: a training batch sharded over the devices of a host.

A one-axis `jax.sharding.Mesh` ("data") over the devices a run uses. The
minibatch x (B, D) is constrained to `P("data")` inside the jitted step, the
parameters, optimiser and estimator states are replicated, and XLA's SPMD
partitioner splits the per-example work (every estimator is vmapped over data
points) and turns the batch means into all-reduces. The noise is the same as
on one device: with `jax_threefry_partitionable` (the default since jax 0.5)
random bits do not depend on how an array is sharded, so a sharded step's
gradients equal the single-device step's to float rounding
(tests/test_parallel.py). Trajectories then drift apart slowly: Adam's first
steps divide each gradient coordinate by its own magnitude, so a coordinate
near zero can turn a rounding difference into a step of size ~lr.

One process: the mesh spans this process's devices. Runs over several hosts
(`jax.distributed.initialize`) are not supported yet: the trainer writes its
workdir from every process.
"""
from typing import Any, Optional

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "data"


def data_mesh(num_devices: int) -> Optional[Mesh]:
  """A mesh over `num_devices` devices (0: all of them), or None for one.

  Raises:
    ValueError: more devices asked for than there are.
  """
  devices = jax.local_devices()
  n = len(devices) if num_devices == 0 else num_devices
  if n > len(devices):
    raise ValueError(
        f"config.num_devices={num_devices} but JAX sees {len(devices)} "
        f"device(s) ({jax.default_backend()}); use at most {len(devices)} "
        "(0 means all).")
  if n == 1:
    return None
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Optional[Mesh]) -> Optional[NamedSharding]:
  return None if mesh is None else NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """`tree` placed whole on every device of the mesh (unchanged for None)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, replicated(mesh))


def shard_batch(x: jax.Array, mesh: Optional[Mesh]) -> jax.Array:
  """Inside jit: x's leading (batch) axis split over the mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(AXIS)))
