"""Checkpoints (orbax): the train state and the data iterator's position, saved together; the model directory.

  workdir/checkpoints/<step>/{state, data}   resumable training checkpoints (CheckpointManager, async saves)
  workdir/export/                            a self-contained model directory (see `export`)

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
from lbdt_jax import __version__, convert, sharding
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


MANIFEST_FILE = 'manifest.json'
MANIFEST_FORMAT = 1


def export(directory: str, config: ml_collections.ConfigDict, model_config: LBDTConfig, state,
           table: glove.WordTable, step: int | None = None) -> None:
  """A self-contained model directory: `variables/` (params-only orbax checkpoint), `model_config.json`,
  `word_table.npz` (trained vectors if learned), `config.json` and `manifest.json` (variant, input size, δ,
  words, version). `lbdt_jax.predict.load_model` reads it back."""
  variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
  vectors = sharding.to_host(state.params['word_vectors'])
  write_model_directory(directory, config, model_config, variables, glove.WordTable(
      table.words, np.asarray(vectors, np.float32), table.trainable), step)


def write_model_directory(directory: str, config: ml_collections.ConfigDict, model_config: LBDTConfig, variables,
                          table: glove.WordTable, step: int | None = None) -> None:
  convert.save_converted(directory, model_config, variables)
  if jax.process_index() != 0:
    return
  table.save(os.path.join(directory, 'word_table.npz'))
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
  manifest = {
      'format': MANIFEST_FORMAT, 'lbdt_jax_version': __version__, 'variant': f'LBDT-{model_config.num_lbdt_layers}',
      'lbdt_stages': list(model_config.lbdt_stages), 'input_size': [config.input_height, config.input_width],
      'delta': config.data.delta, 'max_words': config.max_words, 'word_vectors': 'learned' if table.trainable
      else 'glove', 'vocabulary_size': len(table.words), 'step': step, 'trained_on': config.data.train}
  with open(os.path.join(directory, MANIFEST_FILE), 'w') as f:
    json.dump(manifest, f, indent=2)
