"""Device mesh and shardings: the one place that decides where arrays live.

The mesh has two axes, `data` and `fsdp` (`config.mesh.fsdp` devices, 1 by default). The batch is split over
every device (both axes). Parameters and optimizer state are replicated over `data` and, when `fsdp` > 1, split
over `fsdp` (fully sharded data parallelism: each large array is split along its largest dimension that the axis
divides; each step gathers the parameters whole once, `gather_parameters`, and reduces gradients onto the
split). Each device then holds 1/fsdp of the training
state, at the cost of those collectives in every step: worth it only when the state does not fit beside the
activations (docs/multihost.md).
"""

import itertools
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, FSDP = 'data', 'fsdp'
BATCH_AXES = (DATA, FSDP)  # the batch is split over every device
# Arrays smaller than this stay replicated even when parameters are sharded: splitting them saves nothing.
MIN_SHARDED_SIZE = 2**16
# How long a process waits at a barrier for the others: long enough for one to prepare a data set or compile.
BARRIER_TIMEOUT_S = 3600
_barrier_numbers = itertools.count()


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Multi-host start: explicit values, or JAX's own discovery (SLURM, Cloud TPU, JAX_COORDINATOR_ADDRESS...)."""
  if coordinator or num_processes:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info('Process %d of %d; %d local of %d devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op with one process).

  Through the coordination service, not a device collective: on CPU the first collective of every new executable
  sets up a Gloo context with a fixed 30 s deadline, so processes that arrive further apart than that would fail.
  """
  # Barrier keys may be used once; every process numbers its barriers in the same order.
  ocp.multihost.get_barrier_sync_fn()(key=f'{name} #{next(_barrier_numbers)}', timeout_ms=BARRIER_TIMEOUT_S * 1000)


def process_zero_first(work, name: str):
  """`work()` on process 0, then on the others (for work that fills a shared directory, e.g. preparing data)."""
  if jax.process_count() == 1:
    return work()
  result = work() if jax.process_index() == 0 else None
  barrier(name)
  return result if jax.process_index() == 0 else work()


def compile_together(jitted, *args, name: str) -> None:
  """With several processes: compiles `jitted` for `args` (arrays or ShapeDtypeStructs) into its cache now, then
  waits for the others, so that its first cross-process collective does not wait for a slower compiler (see
  `barrier`)."""
  if jax.process_count() > 1:
    jitted.lower(*args).compile()
    barrier(f'compiled {name}')


def put(tree, shardings):
  """Host values (the same on every process) → global arrays with `shardings` (one, or a matching tree).

  Each process fills its own shards; unlike `jax.device_put`, which with several processes first checks through
  a device collective that they all passed the same value (and fails after 30 s on CPU, see `barrier`)."""
  def place(value, target):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda value: place(value, shardings), tree)
  return jax.tree.map(place, tree, shardings)


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """(data, fsdp) mesh over `devices` (default: all), laid out by `jax.make_mesh` for the interconnect (the
  `fsdp` axis, whose gathers run in every step, on the closest devices)."""
  devices = list(jax.devices() if devices is None else devices)
  per_process = len(devices) // jax.process_count()
  if fsdp < 1 or per_process % fsdp:
    raise ValueError(f'config.mesh.fsdp ({fsdp}) must divide the number of devices of each process ({per_process})')
  # Auto axes: GSPMD propagates shardings through the model (make_mesh's default, Explicit, would ask every op).
  return jax.make_mesh((len(devices) // fsdp, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _parameter_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  if fsdp_size == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      return P(*([None] * axis + [FSDP]))
  return P()


def state_shardings(mesh: Mesh, abstract_state):
  """Shardings for the train state: replicated, or split over `fsdp` when that axis is larger than 1."""
  fsdp_size = mesh.shape[FSDP]
  return jax.tree.map(lambda x: NamedSharding(mesh, _parameter_spec(x.shape, fsdp_size)), abstract_state)


def gather_parameters(loss_fn, mesh: Mesh):
  """FSDP's forward pass: `loss_fn(params, *args)` with the parameters gathered whole once, at its start.

  Left to itself, sharding propagation carries a parameter's split into the activations it meets (all-to-alls),
  gathers a parameter again at each use, and gathers the LSTM's kernels at every word. Gathering first gives one
  all-gather per parameter and step; the gradient's transpose is the matching reduction onto the split."""
  if mesh.shape[FSDP] == 1:
    return loss_fn
  whole = NamedSharding(mesh, P())

  def gathered(params, *args):
    return loss_fn(jax.lax.with_sharding_constraint(params, whole), *args)
  return gathered


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batches → global arrays split over every device (the model's numeric inputs only)."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local_batch.items()}


def local_batch_size(global_batch_size: int, mesh: Mesh, name: str = 'config.train.batch_size') -> int:
  if global_batch_size < 1 or global_batch_size % mesh.size:
    raise ValueError(f'{name} ({global_batch_size}) must be a positive multiple of the number of devices '
                     f'({mesh.size}): each device takes an equal share of the batch')
  return global_batch_size // jax.process_count()


def to_host(tree):
  """numpy copies of (possibly multi-process) arrays: replicated ones read locally, sharded ones gathered."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded array that live on this process, in global order (this process's examples)."""
  shards = {shard.index[0].start or 0: shard for shard in x.addressable_shards}
  return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])
