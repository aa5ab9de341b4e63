"""Training: `train_and_evaluate(config, workdir)`.

One jitted `train_step` over a device mesh (lbdt_jax/sharding.py); the whole training state is one pytree
(`TrainState`) saved by orbax with the data iterator's position, so rerunning the same command resumes where the
last checkpoint left off, on the same batches. Pure step functions; everything stateful (data, checkpoints,
writers) lives in the loop.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.sharding import PartitionSpec as P

from data_pipeline import glove, input_pipeline, loader, prepare
from lbdt_jax import (batch_sizes, checkpointing, convert, evaluate, export, model_dir, paths, preemption, prefetch,
                      progress, sharding)
from lbdt_jax.losses import segmentation_loss
from lbdt_jax.models import LBDT, LBDTConfig, embed_words

MODEL_INPUTS = ('frame', 'frame_difference', 'word_ids', 'word_mask', 'mask')


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a NaN/inf loss or gradient."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict  # {'model': LBDT parameters, 'word_vectors': [V, word_dim]}
  batch_stats: dict
  opt_state: optax.OptState
  nonfinite_in_row: jax.Array  # updates skipped in a row because of NaN/inf
  nonfinite_total: jax.Array


def model_config(config: ml_collections.ConfigDict) -> LBDTConfig:
  return LBDTConfig.from_dict(config.model)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step decay: the rate is multiplied by `decay_factor` at each of `decay_epochs` (reference: 0.5 at 10, 12, 14)."""
  optimizer = config.optimizer
  boundaries = {int(epoch * steps_per_epoch): optimizer.decay_factor for epoch in optimizer.decay_epochs}
  return optax.piecewise_constant_schedule(optimizer.learning_rate, boundaries)


def make_optimizer(config: ml_collections.ConfigDict, train_word_vectors: bool) -> optax.GradientTransformation:
  """AdamW as the reference code (decoupled decay), or Adam as the paper's text (decay added to the gradient,
  like torch.optim.Adam's weight_decay), at learning rate 1: `train_step` scales the updates by the schedule at
  the state's step, so skipped (non-finite) steps do not delay the decay. GloVe vectors stay fixed; learned word
  vectors train with the model."""
  optimizer = config.optimizer
  if optimizer.name == 'adamw':
    base = optax.adamw(1.0, b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps,
                       weight_decay=optimizer.weight_decay)
  elif optimizer.name == 'adam':
    base = optax.chain(optax.add_decayed_weights(optimizer.weight_decay),
                       optax.adam(1.0, b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps))
  else:
    raise ValueError(f"config.optimizer.name must be 'adamw' or 'adam', got {optimizer.name!r}")
  if optimizer.grad_clip_norm > 0:
    base = optax.chain(optax.clip_by_global_norm(optimizer.grad_clip_norm), base)
  labels = {'model': 'train', 'word_vectors': 'train' if train_word_vectors else 'frozen'}
  return optax.multi_transform({'train': base, 'frozen': optax.set_to_zero()}, labels)


def _tree_all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _forward_loss(model: LBDT, params, batch_stats, batch, key):
  """(loss, (new batch_stats, loss terms)) of one (micro)batch."""
  words = embed_words(params['word_vectors'], batch['word_ids'])
  logits, updates = model.apply({'params': params['model'], 'batch_stats': batch_stats}, batch['frame'],
                                batch['frame_difference'], words, batch['word_mask'], train=True,
                                rngs={'dropout': key}, mutable=['batch_stats'])
  loss, terms = segmentation_loss(logits.astype(jnp.float32), batch['mask'])
  return loss, (updates['batch_stats'], terms)


def _per_device_forward_loss(model: LBDT, mesh: jax.sharding.Mesh):
  """The loss with BatchNorm statistics of each device's own examples, like PyTorch DDP without SyncBN; the
  running statistics are averaged over devices (DDP keeps rank 0's), the loss and gradients over the batch."""
  def local(params, batch_stats, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(sharding.BATCH_AXES))
    loss, (batch_stats, terms) = _forward_loss(model, params, batch_stats, batch, key)
    mean = functools.partial(jax.lax.pmean, axis_name=sharding.BATCH_AXES)
    return mean(loss), (jax.tree.map(mean, batch_stats), jax.tree.map(mean, terms))
  # check_vma=False: the model's scans start from constant carries, which the varying-axis check rejects.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(sharding.BATCH_AXES), P()),
                       out_specs=(P(), (P(), P())), axis_names=set(sharding.BATCH_AXES), check_vma=False)


def train_step(state: TrainState, batch: dict, *, loss_fn: Callable, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, dropout_key: jax.Array, accumulation_steps: int):
  """One optimizer step on a global batch (split into `accumulation_steps` microbatches). An update whose loss or
  gradients are not finite is skipped: parameters, statistics and optimizer state stay as they were."""
  key = jax.random.fold_in(dropout_key, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  if accumulation_steps == 1:
    (loss, (batch_stats, terms)), grads = grad_fn(state.params, state.batch_stats, batch, key)
  else:
    # Microbatch k takes every accumulation_steps-th example, so each microbatch stays spread over the devices
    # (a split into consecutive blocks would put each on a few devices and gather the batch everywhere).
    micro = jax.tree.map(lambda x: x.reshape(-1, accumulation_steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, inputs):
      grads, batch_stats, index = carry
      (loss, (batch_stats, terms)), step_grads = grad_fn(state.params, batch_stats, inputs,
                                                         jax.random.fold_in(key, index))
      return (jax.tree.map(jnp.add, grads, step_grads), batch_stats, index + 1), (loss, terms)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats, _), (losses, terms) = jax.lax.scan(accumulate, (zeros, state.batch_stats, 0), micro)
    grads = jax.tree.map(lambda g: g / accumulation_steps, grads)
    loss, terms = losses.mean(), jax.tree.map(jnp.mean, terms)

  finite = jnp.isfinite(loss) & _tree_all_finite(grads)

  learning_rate = schedule(state.step)

  def apply_update(_):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * learning_rate.astype(u.dtype), updates)
    return optax.apply_updates(state.params, updates), batch_stats, opt_state

  def skip_update(_):
    return state.params, state.batch_stats, state.opt_state

  # lax.cond rather than a select per leaf: XLA compiles the latter several times slower.
  params, batch_stats, opt_state = jax.lax.cond(finite, apply_update, skip_update, None)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      nonfinite_in_row=jnp.where(finite, 0, state.nonfinite_in_row + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  metrics = {'loss': loss, **terms, 'grad_norm': optax.tree.norm(grads), 'learning_rate': learning_rate,
             'skipped_update': (~finite).astype(jnp.float32), 'nonfinite_in_row': new_state.nonfinite_in_row}
  return new_state, metrics


def init_state(config, model: LBDT, optimizer, table: glove.WordTable, key, local_batch: dict) -> TrainState:
  """A fresh state (pure: used under jax.eval_shape and jit)."""
  words = jnp.zeros((*local_batch['word_ids'].shape, table.dim), jnp.float32)
  variables = model.init(key, local_batch['frame'], local_batch['frame_difference'], words,
                         local_batch['word_mask'])
  # The table's values are put in by build_trainer (kept out of the compiled init as a constant).
  params = {'model': variables['params'], 'word_vectors': jnp.zeros(table.vectors.shape, jnp.float32)}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                    opt_state=optimizer.init(params), nonfinite_in_row=jnp.zeros((), jnp.int32),
                    nonfinite_total=jnp.zeros((), jnp.int32))


def _initial_weights(config, state: TrainState, optimizer, lbdt_config: LBDTConfig,
                     table: glove.WordTable) -> TrainState:
  """ImageNet encoders (torchvision weights) or a whole model (a converted official checkpoint or an export)."""
  init = config.init
  if init.checkpoint:
    start = model_dir.read(init.checkpoint, word_table=False)
    model_dir.check_same_architecture(start.model_config, lbdt_config, start.path)
    variables = start.variables
    logging.info('Initialised the model from %s', start.path)
  elif init.imagenet:
    variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
    variables = convert.load_imagenet_backbone(variables, convert.load_state_dict(init.imagenet), lbdt_config)
    logging.info('Initialised the encoders from ImageNet weights %s', init.imagenet)
  else:
    return state
  params = {**state.params, 'model': variables['params']}
  if init.checkpoint and start.table is not None:
    if start.table.trainable and table.trainable:
      params['word_vectors'] = _carry_over_word_vectors(start.table, table, np.asarray(params['word_vectors']))
    elif start.table.trainable != table.trainable:
      logging.warning('%s was trained with %s word vectors, this run uses %s ones: the words start from vectors '
                      'the model has not seen', start.path, 'learned' if start.table.trainable else 'GloVe',
                      'learned' if table.trainable else 'GloVe')
  return state.replace(params=params, batch_stats=variables['batch_stats'], opt_state=optimizer.init(params))


def _carry_over_word_vectors(source: glove.WordTable, target: glove.WordTable, vectors: np.ndarray) -> np.ndarray:
  """Learned vectors of the words both tables know, copied from the model we start from."""
  vectors = vectors.copy()
  rows = {word: i for i, word in enumerate(source.words)}
  for i, word in enumerate(target.words):
    if word in rows and source.dim == vectors.shape[1]:
      vectors[i] = source.vectors[rows[word]]
  return vectors


@dataclasses.dataclass
class Trainer:
  """Everything a run binds together; built by `build_trainer`, used by the loop and by tests."""
  config: ml_collections.ConfigDict
  model: LBDT
  mesh: jax.sharding.Mesh
  table: glove.WordTable
  prepared: dict
  train_iterator: loader.TrainIterator
  state: TrainState
  state_shardings: object
  step_fn: Callable
  total_steps: int


def prepare_data(config: ml_collections.ConfigDict) -> dict:
  """The config's data sets, prepared once: process 0 first (shared directories), then the others (their own)."""
  return sharding.process_zero_first(lambda: prepare.prepare(config), 'data prepared')


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Clear errors for training settings that would otherwise fail deep inside a step or silently misbehave."""
  train = config.train
  for name in ('batch_size', 'accumulation_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
               'max_nonfinite_in_row'):
    if train[name] < 1:
      raise ValueError(f'config.train.{name} must be at least 1, got {train[name]}')
  if train.batch_size % train.accumulation_steps:
    raise ValueError(f'config.train.batch_size ({train.batch_size}) must be a multiple of '
                     f'config.train.accumulation_steps ({train.accumulation_steps})')
  microbatch = train.batch_size // train.accumulation_steps
  if microbatch % mesh.size:
    raise ValueError(f'Each microbatch (config.train.batch_size / accumulation_steps = {microbatch}) must divide '
                     f'over the {mesh.size} devices')
  sharding.local_batch_size(config.eval.batch_size, mesh, 'config.eval.batch_size')
  if not (config.init.imagenet or config.init.checkpoint) and not config.data.train.startswith('synthetic_rvos'):
    logging.warning('Training from random weights: the paper starts from ImageNet encoders '
                    '(--config.init.imagenet=resnet50.pth) or, for Ref-DAVIS17, from the YouTube-VOS model '
                    '(--config.init.checkpoint=...)')


def build_trainer(config: ml_collections.ConfigDict) -> Trainer:
  config = batch_sizes.resolve(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh.fsdp)
  check_config(config, mesh)
  lbdt_config = model_config(config)
  if config.init.checkpoint:  # before anything is prepared or compiled: a model of another architecture is refused
    model_dir.check_same_architecture(model_dir.read_model_config(config.init.checkpoint), lbdt_config,
                                      paths.path(config.init.checkpoint))
  prepared = prepare_data(config)
  table = prepare.word_table(prepared)
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), table, config.max_words)
  name, split = prepare.parse_dataset_split(config.data.train)
  train_iterator = loader.TrainIterator(
      prepared[name].split(split), sentences, input_pipeline.Preprocessing.from_config(config),
      delta=config.data.delta, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), num_threads=config.data.num_threads)
  steps_per_epoch = train_iterator.batches_per_epoch
  total_steps = config.train.num_steps if config.train.num_steps > 0 else config.train.num_epochs * steps_per_epoch

  model = LBDT(lbdt_config)
  state, state_shardings, step_fn, optimizer = create_state_and_step(config, model, mesh, table, steps_per_epoch)
  if config.init.checkpoint or config.init.imagenet:
    state = sharding.put(_initial_weights(config, sharding.to_host(state), optimizer, lbdt_config, table),
                         state_shardings)
  sharding.compile_together(step_fn, state, _batch_spec(config, mesh), name='train step')
  return Trainer(config, model, mesh, table, prepared, train_iterator, state, state_shardings, step_fn,
                 total_steps)


def create_state_and_step(config: ml_collections.ConfigDict, model: LBDT, mesh: jax.sharding.Mesh,
                          table: glove.WordTable, steps_per_epoch: int):
  """The freshly initialised, sharded train state and the jitted `train_step` bound to the config (no data, no
  checkpoints): `build_trainer` and the benchmarks share it. Returns (state, state shardings, step, optimizer).
  Calls with the same settings share their jitted functions (`_programs`), so that a process that builds several
  trainers (tests, notebooks) traces and compiles them once."""
  settings = ml_collections.FrozenConfigDict({
      'seed': config.seed, 'input_height': config.input_height, 'input_width': config.input_width,
      'max_words': config.max_words, 'optimizer': config.optimizer,
      'train': {'batch_norm': config.train.batch_norm, 'accumulation_steps': config.train.accumulation_steps}})
  init, state_shardings, step_fn, optimizer = _programs(settings, model, mesh, table, steps_per_epoch)
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  state = init(init_key)
  word_vectors = sharding.put(table.vectors, state_shardings.params['word_vectors'])
  state = state.replace(params={**state.params, 'word_vectors': word_vectors})
  return state, state_shardings, step_fn, optimizer


_PROGRAMS = {}


def _programs(settings: ml_collections.FrozenConfigDict, model: LBDT, mesh: jax.sharding.Mesh,
              table: glove.WordTable, steps_per_epoch: int):
  """(jitted init, state shardings, jitted step, optimizer), from `settings` (the only config fields they
  depend on) and the word table's kind and shape (its values are put in after the init)."""
  key = (settings, model, mesh, table.trainable, table.vectors.shape, steps_per_epoch)
  if key in _PROGRAMS:
    return _PROGRAMS[key]
  config = settings
  schedule = learning_rate_schedule(config, steps_per_epoch)
  optimizer = make_optimizer(config, table.trainable)
  example = {name: np.zeros((1, *shape[1:]), dtype) for name, (shape, dtype) in _input_shapes(config).items()}
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(init_state, config, model, optimizer, table, local_batch=example)
  abstract_state = jax.eval_shape(init_fn, init_key)
  state_shardings = sharding.state_shardings(mesh, abstract_state)
  if config.train.batch_norm == 'per_device':
    loss_fn = _per_device_forward_loss(model, mesh)
  elif config.train.batch_norm == 'global':
    loss_fn = functools.partial(_forward_loss, model)
  else:
    raise ValueError(f"config.train.batch_norm must be 'global' or 'per_device', got {config.train.batch_norm!r}")
  step = functools.partial(train_step, loss_fn=sharding.gather_parameters(loss_fn, mesh), optimizer=optimizer,
                           schedule=schedule, dropout_key=dropout_key,
                           accumulation_steps=config.train.accumulation_steps)
  batch_shardings = {name: sharding.batch_sharding(mesh) for name in MODEL_INPUTS}
  step_fn = jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                    out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  if len(_PROGRAMS) >= 8:
    _PROGRAMS.clear()
  _PROGRAMS[key] = (jax.jit(init_fn, out_shardings=state_shardings), state_shardings, step_fn, optimizer)
  return _PROGRAMS[key]


def _input_shapes(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  h, w, n = config.input_height, config.input_width, config.max_words
  return {'frame': ((1, h, w, 3), np.float32), 'frame_difference': ((1, h, w, 3), np.float32),
          'word_ids': ((1, n), np.int32), 'word_mask': ((1, n), np.int32)}


def _batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global training batch `train_step` takes, as shapes and shardings."""
  shapes = {**_input_shapes(config), 'mask': ((1, config.input_height, config.input_width), np.uint8)}
  return {key: jax.ShapeDtypeStruct((config.train.batch_size, *shape[1:]), dtype,
                                    sharding=sharding.batch_sharding(mesh))
          for key, (shape, dtype) in shapes.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (resuming from workdir's newest checkpoint), evaluates periodically and at the end, exports the
  parameters to workdir/export. Returns the final evaluation results; on SIGTERM or SIGINT, saves a checkpoint
  after the current step and returns {'stopped_at_step': step} instead."""
  workdir = paths.path(workdir)
  paths.check_writable(workdir)
  config = batch_sizes.resolve(config, jax.device_count())  # per-device batch sizes → global ones
  lbdt_config = model_config(config)
  checkpointing.check_resumable(workdir, lbdt_config)
  trainer = build_trainer(config)
  manager = checkpointing.manager(workdir, config)
  state, restored_step = checkpointing.restore_latest(
      manager, trainer.state, trainer.state_shardings, trainer.train_iterator,
      restore_previous_if_damaged=config.train.restore_previous_if_damaged)
  if restored_step is not None:
    logging.info('Resuming from step %d (%s)', restored_step, manager.directory)
    print(f'Resuming from the checkpoint of step {restored_step}', flush=True)
  start_step = int(sharding.to_host(state.step))
  final_step = max(trainer.total_steps, start_step)  # a checkpoint past num_steps is evaluated as it is
  checkpointing.write_run_record(workdir, config, lbdt_config, trainer.table, final_step)
  writer = checkpointing.metric_writer(config, workdir)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  hooks = [periodic_actions.ReportProgress(num_train_steps=trainer.total_steps, writer=writer,
                                           every_steps=config.train.log_every_steps)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=str(workdir), num_profile_steps=5, first_profile=start_step + 10))
  bar = progress.Progress(total=trainer.total_steps, initial=start_step, unit='step', desc='train')
  pending, history = None, []
  results = {}

  def evaluate_now(step, pictures=0):
    return evaluate.run_evaluation(config, trainer.model, trainer.mesh, state.params, state.batch_stats,
                                   trainer.prepared, trainer.table, step, workdir, writer, pictures=pictures)

  batches = prefetch.Prefetcher(trainer.train_iterator, functools.partial(model_inputs, mesh=trainer.mesh),
                                size=config.data.prefetch)
  try:
    with preemption.PreemptionWatcher() as watcher, batches:
      for step in range(start_step + 1, trainer.total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = trainer.step_fn(state, next(batches))
        if pending is not None:  # look at the previous step's result while this one runs
          _check_finite(pending, config, step - 1)
        pending = metrics.pop('nonfinite_in_row')  # the state's own copy is donated to the next step
        history.append(metrics)
        for hook in hooks:
          hook(step)
        bar.update()
        if step % config.train.log_every_steps == 0 or step == trainer.total_steps:
          summary = _summarise(history)
          history = []
          writer.write_scalars(step, summary)
          bar.set_postfix(loss=f'{summary["loss"]:.4f}', lr=f'{summary["learning_rate"]:.2e}', refresh=False)
          bar.log()
        if watcher.reached(step):
          _check_finite(pending, config, step)
          checkpointing.save(manager, step, state, batches)
          manager.wait_until_finished()
          bar.close()
          preemption.log_stop(watcher, step, manager.directory / str(step))
          return {'stopped_at_step': step}
        if step % config.train.checkpoint_every_steps == 0 or step == trainer.total_steps:
          checkpointing.save(manager, step, state, batches)
        if config.train.eval_every_steps and step % config.train.eval_every_steps == 0 and step < trainer.total_steps:
          results = evaluate_now(step)
    _check_finite(pending, config, final_step)
    bar.close()
    results = evaluate_now(final_step, pictures=config.eval.pictures)
    export_dir = export.from_training(workdir / 'export', config, lbdt_config, state.params, state.batch_stats,
                                      trainer.table, final_step)
    manager.wait_until_finished()
    checkpointing.write_training_status(workdir, final_step, finished=True)
    if jax.process_index() == 0:
      print(f'Training finished at step {final_step}. Checkpoints: {manager.directory}; model directory: '
            f'{export_dir}; evaluation: {workdir / "eval" / f"step_{final_step}"}', flush=True)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return results


def model_inputs(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """A host batch of the input pipeline → the global arrays `train_step` takes."""
  return sharding.global_batch({key: batch[key] for key in MODEL_INPUTS}, mesh)


def _check_finite(nonfinite_in_row, config, step: int) -> None:
  if nonfinite_in_row is None:
    return
  in_row = int(sharding.to_host(nonfinite_in_row))
  if in_row:
    logging.warning('Step %d: loss or gradients not finite, update skipped (%d in a row)', step, in_row)
  if in_row >= config.train.max_nonfinite_in_row:
    raise NonFiniteError(f'{in_row} consecutive steps up to step {step} had a NaN/inf loss or gradient; stopping. '
                         'The last checkpoint holds the last good parameters (skipped updates never reach them). '
                         'Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm.')


def _summarise(history: list[dict]) -> dict[str, float]:
  host = sharding.to_host(history)
  summary = {key: float(np.mean([m[key] for m in host])) for key in host[0]}
  summary['skipped_updates'] = float(np.sum([m['skipped_update'] for m in host]))
  del summary['skipped_update']
  return summary
