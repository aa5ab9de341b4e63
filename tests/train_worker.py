"""Training steps of the tiny config on simulated devices, or as one of several processes.

  python tests/train_worker.py --data-dir D --devices 8 --runs RUNS.json --out OUT
  python tests/train_worker.py --data-dir D --devices 1 --runs RUNS.json --out OUT
      --coordinator localhost:PORT --num-processes 2 --process-id I [--delay S]

RUNS.json lists runs, each {"name", "devices" (the first N devices; default all), "steps", "batch_size", "fsdp",
"batch_norm", "accumulation_steps", "dtype", "adam_eps", "min_sharded_size", "updates", "model" (overrides of
config.model), "loop"}. A process runs them one after another, each on its own mesh, on the same global batches
(each process keeps its rows of them), and writes OUT/<name>.<process index>.json (losses, devices, processes,
the batch rows each device received, parameter checksums, the parameters sharded over the fsdp axis, and the
compiled step's argument bytes per device beside what the shardings imply), with "updates" also OUT/<name>.npz
(the parameter updates of the first step, first/NAME, and of all steps, all/NAME). "steps": 0 builds the sharded
state and neither compiles nor steps (argument bytes: the shardings' alone). Several processes build their trainer with `train.build_trainer`, whose data preparation and compilation meet at barriers (see `--delay`).

A run with "loop": {"workdir", and config.train overrides} runs the training loop instead,
`train.train_and_evaluate` (what `main.py` runs), and records the parameter checksums of every checkpoint it saves.
A run with "toy_per_device": true checks `batch_norm='per_device'` exactly on a toy model (`toy_per_device`).

The train step is wrapped in `chex.assert_max_traces(n=1)`: a second trace (a recompilation) is an error.
"""

import argparse
import faulthandler
import json
import math
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument('--data-dir', required=True)
parser.add_argument('--devices', type=int, default=1, help='simulated devices of this process')
parser.add_argument('--runs', required=True)
parser.add_argument('--out', required=True)
parser.add_argument('--coordinator')
parser.add_argument('--num-processes', type=int, default=1)
parser.add_argument('--process-id', type=int, default=0)
parser.add_argument('--delay', type=float, default=0, help='seconds to sleep before building the trainer')
args = parser.parse_args()
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={args.devices}').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

if args.coordinator:
  jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)

from configs import tiny  # noqa: E402
from data_pipeline import input_pipeline, loader, prepare  # noqa: E402
from lbdt_jax import checkpointing, sharding, train  # noqa: E402
from lbdt_jax.models import LBDT  # noqa: E402

DEFAULTS = {'devices': None, 'steps': 3, 'batch_size': 8, 'fsdp': 1, 'batch_norm': 'global',
            'accumulation_steps': 1, 'dtype': 'float32', 'adam_eps': 1e-8, 'min_sharded_size': None,
            'updates': False, 'model': {}, 'loop': None, 'toy_per_device': False}
TRAIN_STEP, MIN_SHARDED_SIZE, SAVE = train.train_step, sharding.MIN_SHARDED_SIZE, checkpointing.save


def run_config(run: dict):
  config = tiny.get_config()
  config.data.data_dir = args.data_dir
  config.train.batch_size = config.eval.batch_size = run['batch_size']
  config.train.batch_norm = run['batch_norm']
  config.train.accumulation_steps = run['accumulation_steps']
  config.optimizer.eps = run['adam_eps']
  config.mesh.fsdp = run['fsdp']
  config.model.update(dtype=run['dtype'],
                      **{key: tuple(v) if isinstance(v, list) else v for key, v in run['model'].items()})
  return config


def flatten(params):
  return {'/'.join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(sharding.to_host(params))}


def checksums(params) -> dict[str, float]:
  return {k: float(np.sum(leaf, dtype=np.float64)) for k, leaf in flatten(params).items()}


def loop_run(config, loop: dict) -> dict:
  saved = {}

  def save(manager, step, state, iterator):
    saved[step] = checksums(state.params)
    SAVE(manager, step, state, iterator)
  checkpointing.save = save
  config.train.update({k: v for k, v in loop.items() if k != 'workdir'})
  time.sleep(args.delay)
  result = train.train_and_evaluate(config, loop['workdir'])
  return {'stopped_at_step': result.get('stopped_at_step'), 'saved': saved, 'devices': jax.device_count(),
          'processes': jax.process_count()}


def toy_per_device() -> dict:
  """The loss of `batch_norm='per_device'` over all devices, one example each, on a toy model with BatchNorm,
  and what it must be: the mean of the losses of each example alone; likewise the BatchNorm statistics."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, frame, frame_difference, words, word_mask, train=False):
      normalised = nn.BatchNorm(use_running_average=not train, momentum=0.5)(frame + frame_difference)
      return normalised.sum(-1) + (words * word_mask[..., None]).sum((1, 2))[:, None, None]  # logits [B, H, W]

  count = jax.device_count()
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = {'frame': rng.standard_normal((count, 4, 4, 3)).astype(np.float32),
           'frame_difference': rng.standard_normal((count, 4, 4, 3)).astype(np.float32),
           'word_ids': rng.integers(1, 5, (count, 3)).astype(np.int32), 'word_mask': np.ones((count, 3), np.int32),
           'mask': rng.integers(0, 2, (count, 4, 4)).astype(np.uint8)}
  model, key = Toy(), jax.random.key(0)
  variables = model.init(key, batch['frame'], batch['frame_difference'], np.zeros((count, 3, 2), np.float32),
                         batch['word_mask'])
  params = {'model': variables['params'], 'word_vectors': rng.standard_normal((5, 2)).astype(np.float32)}
  per_device_loss, loss_of = train._per_device_forward_loss, train._forward_loss  # pylint: disable=protected-access
  loss, (stats, _) = jax.jit(per_device_loss(model, mesh))(params, variables['batch_stats'],
                                                           sharding.global_batch(batch, mesh), key)
  alone = [loss_of(model, params, variables['batch_stats'], {k: v[i:i + 1] for k, v in batch.items()}, key)
           for i in range(count)]
  whole, _ = loss_of(model, params, variables['batch_stats'], batch, key)
  expected_stats = jax.tree.map(lambda *leaves: np.mean(leaves, axis=0), *[s for _, (s, _) in alone])
  return {'devices': count, 'loss': float(loss), 'mean_alone': float(np.mean([l for l, _ in alone])),
          'whole_batch': float(whole),
          'stats_difference': max(float(np.max(np.abs(np.asarray(a) - b)))
                                  for a, b in zip(jax.tree.leaves(sharding.to_host(stats)),
                                                  jax.tree.leaves(expected_stats)))}


def train_run(run: dict) -> dict:
  if run['toy_per_device']:
    return toy_per_device()
  config = run_config(run)
  chex.clear_trace_counter()
  train.train_step = chex.assert_max_traces(TRAIN_STEP, n=1)  # what create_state_and_step binds
  sharding.MIN_SHARDED_SIZE = run['min_sharded_size'] or MIN_SHARDED_SIZE
  if run['loop']:
    return loop_run(config, run['loop'])
  if args.num_processes > 1:
    time.sleep(args.delay)
    trainer = train.build_trainer(config)  # data preparation and compilation meet at barriers
    mesh, state, step_fn, prepared, table = (trainer.mesh, trainer.state, trainer.step_fn, trainer.prepared,
                                             trainer.table)
  else:
    mesh = sharding.make_mesh(run['fsdp'], jax.devices()[:run['devices'] or jax.device_count()])
    train.check_config(config, mesh)
    prepared = prepare.prepare(config)
    table = prepare.word_table(prepared)
  # Every process reads the global batches a single process would read and keeps its rows, so that runs with any
  # number of processes see the same data.
  name, split = prepare.parse_dataset_split(config.data.train)
  global_batches = loader.TrainIterator(
      prepared[name].split(split), input_pipeline.SentenceTable(prepare.sentences(prepared), table, config.max_words),
      input_pipeline.Preprocessing.from_config(config), delta=config.data.delta, global_batch_size=run['batch_size'],
      seed=config.seed)
  if args.num_processes == 1:
    state, _, step_fn, _ = train.create_state_and_step(config, LBDT(train.model_config(config)), mesh, table,
                                                       global_batches.batches_per_epoch)
  rows = slice(jax.process_index() * run['batch_size'] // jax.process_count(),
               (jax.process_index() + 1) * run['batch_size'] // jax.process_count())
  sharded = sorted(path for path, leaf in flatten_shardings(state.params).items()
                   if sharding.FSDP in leaf.spec)
  batch_spec = train._batch_spec(config, mesh)  # pylint: disable=protected-access
  compiled = step_fn.lower(state, batch_spec).compile() if run['steps'] else None
  memory = {'measured': compiled.memory_analysis().argument_size_in_bytes if compiled else None,
            'state': per_device_bytes(state), 'batch': {k: per_device_bytes(v) for k, v in batch_spec.items()}}
  losses, rows_per_device, snapshots = [], set(), [flatten(state.params)] if run['updates'] else []
  for step in range(run['steps']):
    batch = train.model_inputs({k: v[rows] for k, v in next(global_batches).items()}, mesh)
    rows_per_device |= {shard.data.shape[0] for shard in batch['frame'].addressable_shards}
    state, metrics = step_fn(state, batch)
    losses.append(float(sharding.to_host(metrics['loss'])))
    if run['updates'] and step == 0:
      snapshots.append(flatten(state.params))
  flat = flatten(state.params)
  if run['updates'] and jax.process_index() == 0:
    start, first = snapshots
    np.savez(os.path.join(args.out, f'{run["name"]}.npz'), **{f'first/{k}': first[k] - start[k] for k in flat},
             **{f'all/{k}': flat[k] - start[k] for k in flat})
  return {'losses': losses, 'devices': int(mesh.devices.size), 'processes': jax.process_count(), 'sharded': sharded,
          'rows_per_device': sorted(rows_per_device), 'params': checksums(state.params), 'argument_bytes': memory}


def per_device_bytes(tree) -> int:
  """Bytes of one device's shards of `tree` (arrays or ShapeDtypeStructs with shardings)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def flatten_shardings(params):
  return {'/'.join(str(k.key) for k in path): leaf.sharding
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


with open(args.runs) as f:
  runs = [{**DEFAULTS, **run} for run in json.load(f)]
for run in runs:
  started = time.time()
  result = train_run(run)
  result['seconds'] = time.time() - started
  with open(os.path.join(args.out, f'{run["name"]}.{jax.process_index()}.json'), 'w') as f:
    json.dump(result, f)
  print(f'{run["name"]}: {result["seconds"]:.1f} s', flush=True)
if args.coordinator:
  # Leave together and now: a process still alive a minute later prints its threads' stacks (a hang at exit
  # would otherwise show only as the other process's shutdown-barrier timeout).
  faulthandler.dump_traceback_later(60, repeat=True)
  jax.distributed.shutdown()
