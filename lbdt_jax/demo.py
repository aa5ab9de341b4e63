"""`--mode=demo`: an end-to-end sanity check of the model on one batch of the config's training data.

Prints the output shapes and the parameter count, then fits the batch for a few AdamW steps with the training
loss and reports pixel accuracy and IoU before and after: a model that does not learn here is broken.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data_pipeline import input_pipeline, prepare
from lbdt_jax.losses import segmentation_loss
from lbdt_jax.models import LBDT, LBDTConfig


def parameter_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def pixel_scores(logits, mask) -> dict[str, float]:
  prediction = np.asarray(logits) > 0
  mask = np.asarray(mask).astype(bool)
  union = np.logical_or(prediction, mask).sum()
  return {'pixel_accuracy': float((prediction == mask).mean()),
          'iou': float(np.logical_and(prediction, mask).sum() / union) if union else 1.0}


def run_demo(config, workdir: str) -> dict:
  model_config = LBDTConfig.from_dict(config.model.to_dict())
  model = LBDT(model_config)
  prepared = prepare.prepare(config)  # builds the synthetic set on first use
  table = prepare.word_table(prepared)
  name, split = prepare.parse_dataset_split(config.data.train)
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), table, config.max_words)
  batch = next(input_pipeline.TrainIterator(prepared[name], split, sentences,
                                            input_pipeline.Preprocessing.from_config(config),
                                            global_batch_size=config.demo.batch_size, seed=config.seed))
  batch['words'] = table.vectors[batch['word_ids']]  # fixed vectors here; the trainer learns them if asked
  inputs = (batch['frame'], batch['frame_difference'], batch['words'], batch['word_mask'])
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  variables = jax.jit(model.init)(init_key, *inputs)
  params, batch_stats = variables['params'], variables['batch_stats']
  optimizer = optax.adamw(config.demo.learning_rate, weight_decay=5e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def predict(params, batch_stats):
    return model.apply({'params': params, 'batch_stats': batch_stats}, *inputs, train=False)

  @jax.jit
  def step(params, batch_stats, opt_state, key):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, *inputs, train=True,
                                    rngs={'dropout': key}, mutable=['batch_stats'])
      loss, _ = segmentation_loss(logits, jnp.asarray(batch['mask']))
      return loss, updates['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  logits = predict(params, batch_stats)
  before = pixel_scores(logits, batch['mask'])
  print(f'inputs: frame {batch["frame"].shape}, frame_difference {batch["frame_difference"].shape}, '
        f'words {batch["words"].shape}, word_mask {batch["word_mask"].shape}')
  print(f'logits: {logits.shape} {logits.dtype}; parameters: {parameter_count(params):,}')
  start = time.time()
  losses = []
  for index in range(config.demo.steps):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                jax.random.fold_in(dropout_key, index))
    losses.append(float(loss))
    done = index + 1
    if done == 1:  # the first step includes compilation; the ETA counts from the second
      compiled_at = time.time()
      print(f'compiled the train step in {compiled_at - start:.1f}s')
    eta = (f'{(time.time() - compiled_at) / (done - 1) * (config.demo.steps - done):.0f}s' if done > 1
           else '?')
    print(f'\rstep {done}/{config.demo.steps}  loss {losses[-1]:.4f}  ETA {eta}', end='', flush=True)
  print()
  after = pixel_scores(predict(params, batch_stats), batch['mask'])
  summary = {'logits_shape': list(logits.shape), 'parameters': parameter_count(params),
             'loss_first': losses[0] if losses else None, 'loss_last': losses[-1] if losses else None,
             'before': before, 'after': after, 'seconds': time.time() - start}
  print(f'pixel accuracy {before["pixel_accuracy"]:.3f} -> {after["pixel_accuracy"]:.3f}, '
        f'IoU {before["iou"]:.3f} -> {after["iou"]:.3f} after {config.demo.steps} steps on one batch')
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'demo.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  logging.info('Wrote %s', os.path.join(workdir, 'demo.json'))
  return summary
