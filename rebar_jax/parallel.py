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

Several processes (hosts): `initialize(...)` (`jax.distributed.initialize`)
before anything touches a device; the mesh then spans every process's
devices. Every process computes the same minibatch indices from (seed, step)
and holds the whole data set (these data sets are small), so its inputs are
global replicated arrays built from local copies, without any exchange. All
processes save checkpoints together (orbax); process 0 writes the run's files
in the workdir, the others a private copy in <workdir>/processes/<i>/.
Each process evaluates on its own copy of the parameters (the same numbers,
computed once per process). Tested: 2 processes x 2 fake CPU devices on
localhost give the 4-device single-process run's final metrics
(tests/test_parallel.py).
"""
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "data"


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`; None: what the
  cluster environment says, e.g. SLURM's). CPU processes exchange through
  gloo collectives."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds in any process (itself in a one-process run)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def local(tree: Any) -> Any:
  """A replicated global tree as this process's copy, for host-local work
  (evaluation, diagnostics). Unchanged in a one-process run."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(lambda a: a.addressable_data(0), tree)


def data_mesh(num_devices: int) -> Optional[Mesh]:
  """A mesh over `num_devices` devices (0: all of them), or None for one.

  Raises:
    ValueError: more devices asked for than there are.
  """
  devices = jax.devices()
  n = len(devices) if num_devices == 0 else num_devices
  if n > len(devices):
    raise ValueError(
        f"config.num_devices={num_devices} but JAX sees {len(devices)} "
        f"device(s) ({jax.default_backend()}); use at most {len(devices)} "
        "(0 means all).")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(
        f"config.num_devices={num_devices} in a run of "
        f"{jax.process_count()} processes: use 0 (all {len(devices)} "
        "devices of all processes).")
  if n == 1:
    return None
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Optional[Mesh]) -> Optional[NamedSharding]:
  return None if mesh is None else NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """`tree` placed whole on every device of the mesh (unchanged for None)."""
  if mesh is None:
    return tree
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))
  # replicated(mesh); each process supplies its devices' copies
  sharding = NamedSharding(mesh, P())

  def from_host(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(np.shape(a), sharding,
                                        lambda index: a[index])
  return jax.tree.map(from_host, tree)


def shard_batch(x: jax.Array, mesh: Optional[Mesh]) -> jax.Array:
  """Inside jit: x's leading (batch) axis split over the mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(AXIS)))
