"""Checkpoints (orbax): the train state and the data iterator's position, saved together; params-only export.

  workdir/checkpoints/<step>/{state, data}   resumable training checkpoints (CheckpointManager, async saves)
  workdir/export/                            variables + model_config.json + word_table.npz + config.json

Restoring takes the target shardings from the caller, so a checkpoint restores onto any number of devices or
processes.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from data_pipeline import glove
from lbdt_jax import convert, sharding
from lbdt_jax.models import LBDTConfig


def manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Keeps the latest `keep_checkpoints` checkpoints (plus every `keep_every_steps`-th, if set)."""
  policies = [ocp.checkpoint_managers.LatestN(config.train.keep_checkpoints)]
  if config.train.keep_every_steps:
    policies.append(ocp.checkpoint_managers.EveryNSteps(config.train.keep_every_steps))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies), enable_async_checkpointing=True,
      cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), options=options, item_names=('state', 'data'))


def save(checkpoints: ocp.CheckpointManager, step: int, state, iterator) -> None:
  checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(iterator.get_state())))


def abstract_like(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_latest(checkpoints: ocp.CheckpointManager, state, shardings, iterator=None):
  """(state, step) from the latest checkpoint, placed with `shardings`; (state, None) when there is none."""
  step = checkpoints.latest_step()
  if step is None:
    return state, None
  args = {'state': ocp.args.StandardRestore(abstract_like(state, shardings))}
  if iterator is not None:
    args['data'] = ocp.args.JsonRestore()
  restored = checkpoints.restore(step, args=ocp.args.Composite(**args))
  if iterator is not None:
    iterator.set_state(restored['data'])
  return restored['state'], step


def export(directory: str, config: ml_collections.ConfigDict, model_config: LBDTConfig, state,
           table: glove.WordTable) -> None:
  """Inference-only copy: model variables, model config, the word table (trained vectors if learned), config."""
  variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
  convert.save_converted(directory, model_config, variables)
  if jax.process_index() == 0:
    vectors = sharding.to_host(state.params['word_vectors'])
    glove.WordTable(table.words, np.asarray(vectors, np.float32), table.trainable).save(
        os.path.join(directory, 'word_table.npz'))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
