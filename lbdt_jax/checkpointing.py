"""Training checkpoints (orbax) and the run record of a work directory (local or a bucket).

  workdir/checkpoints/<step>/{state, data}   the train state and the data iterator's position, saved together
  workdir/model_config.json, word_table.npz, config.json
                                             the run record, written when training starts: what the checkpoints
                                             hold, so that evaluation and export read parameters without
                                             building the trainer
  workdir/training.json                      {"total_steps", "finished"}: what an evaluator that follows the run
                                             waits for
  workdir/events.out.tfevents.*, eval/       TensorBoard events of training and of a following evaluator
                                             (elsewhere with config.train.tensorboard_dir)

Saves are asynchronous and atomic: an unfinished save (the process killed mid-way) is never listed, and is
removed by the next run. Restoring takes the target shardings from the caller, so a checkpoint restores onto any
number of devices or processes.
"""

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from data_pipeline import glove
from lbdt_jax import model_dir, paths
from lbdt_jax.models import LBDTConfig

CHECKPOINTS = 'checkpoints'
TRAINING_STATUS_FILE = 'training.json'


class DamagedCheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be restored; the message names it."""


def manager(workdir: epath.Path, config: ml_collections.ConfigDict | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest `keep_checkpoints` checkpoints (plus every `keep_every_steps`-th, if set). `read_only`
  managers (evaluation, export) neither create nor clean up anything."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    policies = [ocp.checkpoint_managers.LatestN(config.train.keep_checkpoints)]
    if config.train.keep_every_steps:
      policies.append(ocp.checkpoint_managers.EveryNSteps(config.train.keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True, cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(workdir / CHECKPOINTS, options=options, item_names=('state', 'data'))


def metric_writer(config: ml_collections.ConfigDict, workdir: epath.Path, subdirectory: str = ''):
  """clu's writer: log lines everywhere, TensorBoard events (through TensorFlow's file system, local or gs://)
  from process 0 into config.train.tensorboard_dir or the work directory."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel  # loads TensorFlow: only when writing
  directory = paths.path(config.train.tensorboard_dir) if config.train.tensorboard_dir else workdir
  if subdirectory:
    directory = directory / subdirectory
  return metric_writers.create_default_writer(os.fspath(directory), just_logging=jax.process_index() > 0)


def finished_steps(workdir: epath.Path) -> list[int]:
  """Steps whose checkpoint was completely written, in increasing order."""
  directory = workdir / CHECKPOINTS
  if not directory.is_dir():
    return []
  return sorted(int(step.name) for step in directory.iterdir()
                if step.name.isdigit() and ocp.utils.is_checkpoint_finalized(step))


def has_checkpoints(workdir: epath.Path) -> bool:
  return bool(finished_steps(workdir))


def save(checkpoints: ocp.CheckpointManager, step: int, state, iterator) -> None:
  checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(iterator.get_state())),
                   force=True)


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _restore_newest(checkpoints: ocp.CheckpointManager, restore_step, restore_previous_if_damaged: bool,
                    set_aside_damaged: bool):
  """(result, step) of the newest step `restore_step(step)` restores; (None, None) when there is no checkpoint.
  A damaged newest checkpoint is an error naming it, or with `restore_previous_if_damaged` a warning and the
  step before (with `set_aside_damaged`, the damaged step directory is renamed `<step>.damaged`)."""
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      return restore_step(step), step
    except Exception as error:  # orbax and tensorstore raise several types for missing or truncated files
      where = f'the checkpoint of step {step} in {checkpoints.directory}'
      reason = f'{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ""}'
      if not restore_previous_if_damaged:
        raise DamagedCheckpointError(
            f'Cannot restore {where} ({reason}). Delete that step directory, or set '
            '--config.train.restore_previous_if_damaged=True to start from the checkpoint before it') from error
      message = f'Cannot restore {where} ({reason}); using the one before'
      if set_aside_damaged:  # so that training can save that step again
        damaged = checkpoints.directory / str(step)
        damaged.rename(damaged.parent / f'{step}.damaged')
        checkpoints.reload()
        message += f'; the damaged one is kept as {damaged.parent / f"{step}.damaged"}'
      logging.warning(message)
      print(f'Warning: {message}', flush=True)
  return None, None


def restore_latest(checkpoints: ocp.CheckpointManager, state, shardings, iterator=None,
                   restore_previous_if_damaged: bool = False):
  """(state, step) from the newest checkpoint, placed with `shardings`, and the iterator's position;
  (state, None) when there is none."""
  def restore_step(step):
    args = {'state': ocp.args.StandardRestore(abstract_like(state, shardings))}
    if iterator is not None:
      args['data'] = ocp.args.JsonRestore()
    return checkpoints.restore(step, args=ocp.args.Composite(**args))

  restored, step = _restore_newest(checkpoints, restore_step, restore_previous_if_damaged, set_aside_damaged=True)
  if restored is None:
    return state, None
  if iterator is not None:
    iterator.set_state(restored['data'])
  return restored['state'], step


def restore_parameters(workdir: epath.Path, abstract_parameters: dict, step: int | None = None,
                       restore_previous_if_damaged: bool = False):
  """({'params', 'batch_stats'}, step) of a checkpoint (the newest, or `step`), reading nothing else: no
  optimizer state, no data position. `abstract_parameters` gives shapes, dtypes and shardings."""
  checkpoints = manager(workdir, read_only=True)

  def restore_step(step):
    item = ocp.args.PyTreeRestore(item=abstract_parameters, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_parameters))
    return checkpoints.restore(step, args=ocp.args.Composite(state=item))['state']

  try:
    if step is not None:
      if step not in checkpoints.all_steps():
        raise FileNotFoundError(f'{checkpoints.directory} has no checkpoint of step {step} (it has '
                                f'{checkpoints.all_steps()})')
      return restore_step(step), step
    return _restore_newest(checkpoints, restore_step, restore_previous_if_damaged, set_aside_damaged=False)
  finally:
    checkpoints.close()


def read_trained(workdir: epath.Path, config: ml_collections.ConfigDict, model_config: LBDTConfig,
                 step: int | None = None, restore_previous_if_damaged: bool = False
                 ) -> tuple[model_dir.ModelDirectory, int]:
  """A checkpoint of the work directory as a model (parameters, statistics and trained word vectors only)."""
  table = read_run_record(workdir, model_config)
  abstract = model_dir.abstract_variables(model_config)
  wanted = {'params': {'model': abstract['params'],
                       'word_vectors': jax.ShapeDtypeStruct(table.vectors.shape, table.vectors.dtype)},
            'batch_stats': abstract['batch_stats']}
  restored, step = restore_parameters(workdir, wanted, step, restore_previous_if_damaged)
  if restored is None:
    raise FileNotFoundError(f'{workdir / CHECKPOINTS} holds no checkpoint')
  table = glove.WordTable(table.words, np.asarray(restored['params']['word_vectors'], np.float32), table.trainable)
  variables = jax.device_put({'params': restored['params']['model'], 'batch_stats': restored['batch_stats']})
  return model_dir.ModelDirectory(model_config, variables, table,
                                  model_dir.manifest_for(config, model_config, table, step), workdir), step


def write_run_record(workdir: epath.Path, config: ml_collections.ConfigDict, model_config: LBDTConfig,
                     table: glove.WordTable, total_steps: int) -> None:
  """What the checkpoints of this work directory hold (process 0 writes)."""
  if jax.process_index() != 0:
    return
  paths.write_json(workdir / model_dir.MODEL_CONFIG_FILE, model_config.to_dict())
  table.save(workdir / model_dir.WORD_TABLE_FILE)
  (workdir / model_dir.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  write_training_status(workdir, total_steps, finished=False)


def read_run_record(workdir: epath.Path, model_config: LBDTConfig) -> glove.WordTable:
  """The word table of a work directory's run, after checking that its model is `model_config`."""
  stored = model_dir.read_model_config(workdir)
  model_dir.check_same_architecture(stored, model_config, f'The run in {workdir}')
  return glove.WordTable.load(workdir / model_dir.WORD_TABLE_FILE)


def check_resumable(workdir: epath.Path, model_config: LBDTConfig) -> None:
  """Before resuming: the work directory's checkpoints must be of the configured model."""
  if (workdir / model_dir.MODEL_CONFIG_FILE).exists():
    model_dir.check_same_architecture(model_dir.read_model_config(workdir), model_config,
                                      f'The checkpoints in {workdir}')


def write_training_status(workdir: epath.Path, total_steps: int, finished: bool) -> None:
  if jax.process_index() == 0:
    paths.write_json(workdir / TRAINING_STATUS_FILE, {'total_steps': total_steps, 'finished': finished})


def read_training_status(workdir: epath.Path) -> dict | None:
  file = workdir / TRAINING_STATUS_FILE
  return paths.read_json(file, 'Training status') if file.exists() else None
