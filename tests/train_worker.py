"""A few training steps of the tiny config in a fresh process (simulated devices, or one of several processes).

  python tests/train_worker.py --data-dir D --workdir W --devices 8 [--batch-norm per_device] [--steps 3]
      [--coordinator localhost:PORT --num-processes 2 --process-id 0]

Prints one JSON line: the losses, the step function's compilation count, and parameter checksums; with --workdir
it also saves a checkpoint of the final state there.
"""

import argparse
import faulthandler
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument('--data-dir', required=True)
parser.add_argument('--workdir')
parser.add_argument('--devices', type=int, default=1)
parser.add_argument('--steps', type=int, default=3)
parser.add_argument('--batch-size', type=int, default=8)
parser.add_argument('--batch-norm', default='global')
parser.add_argument('--coordinator')
parser.add_argument('--num-processes', type=int, default=1)
parser.add_argument('--process-id', type=int, default=0)
parser.add_argument('--adam-eps', type=float, default=1e-8)
parser.add_argument('--model-axis', type=int, default=1)
parser.add_argument('--accumulation-steps', type=int, default=1)
parser.add_argument('--dtype', default='float32')
parser.add_argument('--params-out', help='write the parameter updates here (.npz: first/NAME after step 1, all/NAME after all)')
parser.add_argument('--delay', type=float, default=0, help='seconds to sleep before building the trainer')
args = parser.parse_args()
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={args.devices}').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

if args.coordinator:
  jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)

from configs import tiny  # noqa: E402
from data_pipeline import input_pipeline, prepare  # noqa: E402
from lbdt_jax import checkpointing, paths, sharding, train  # noqa: E402

config = tiny.get_config()
config.data.data_dir = args.data_dir
config.train.batch_size = config.eval.batch_size = args.batch_size
config.train.batch_norm = args.batch_norm
config.optimizer.eps = args.adam_eps
config.mesh.model = args.model_axis
config.train.accumulation_steps = args.accumulation_steps
config.model.dtype = args.dtype
time.sleep(args.delay)
trainer = train.build_trainer(config)
# Every process reads the global batches a single process would read and keeps its rows, so that runs with any
# number of processes see the same data.
name, split = prepare.parse_dataset_split(config.data.train)
global_batches = input_pipeline.TrainIterator(
    trainer.prepared[name], split,
    input_pipeline.SentenceTable(prepare.sentences(trainer.prepared), trainer.table, config.max_words),
    input_pipeline.Preprocessing.from_config(config), global_batch_size=args.batch_size, seed=config.seed)
rows = slice(jax.process_index() * args.batch_size // jax.process_count(),
             (jax.process_index() + 1) * args.batch_size // jax.process_count())


def flatten(params):
  return {'/'.join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(sharding.to_host(params))}


state, losses, snapshots = trainer.state, [], []
if args.params_out:
  snapshots.append(flatten(state.params))  # copied now: the state is donated to the step
for step in range(args.steps):
  batch = next(global_batches)
  state, metrics = trainer.step_fn(state, sharding.global_batch({k: batch[k][rows] for k in train.MODEL_INPUTS},
                                                                 trainer.mesh))
  losses.append(float(sharding.to_host(metrics['loss'])))
  if args.params_out and step == 0:
    snapshots.append(flatten(state.params))
if args.workdir:
  manager = checkpointing.manager(paths.path(args.workdir), config)
  checkpointing.save(manager, args.steps, state, trainer.train_iterator)
  manager.wait_until_finished()
  manager.close()
flat = flatten(state.params)
if args.params_out and jax.process_index() == 0:  # the parameter updates of the first step and of all steps
  start, first = snapshots
  np.savez(args.params_out, **{f'first/{name}': first[name] - start[name] for name in flat},
           **{f'all/{name}': flat[name] - start[name] for name in flat})
print(json.dumps({
    'losses': losses,
    'compilations': trainer.step_fn._cache_size(),  # pylint: disable=protected-access
    'devices': jax.device_count(),
    'processes': jax.process_count(),
    'params': {name: float(np.sum(leaf, dtype=np.float64)) for name, leaf in flat.items()},
}))
if args.coordinator:
  # Leave together and now: a process still alive a minute later prints its threads' stacks (a hang at exit
  # would otherwise show only as the other process's shutdown-barrier timeout).
  faulthandler.dump_traceback_later(60, repeat=True)
  jax.distributed.shutdown()
