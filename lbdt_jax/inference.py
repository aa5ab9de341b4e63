"""Inference functions shared by evaluation, prediction and serving: probabilities and the words' attention maps."""

import jax
import jax.numpy as jnp
import numpy as np

from lbdt_jax.models import LBDTConfig, embed_words

MODEL_INPUTS = ('frame', 'frame_difference', 'word_ids', 'word_mask')


def probabilities(model, params, batch_stats, batch, capture: bool = False):
  """Foreground probabilities [B, H, W] at the input size (float32); with `capture`, also the model's
  intermediates (attention weights included). params: {'model': ..., 'word_vectors': [V, E]}."""
  words = embed_words(params['word_vectors'], batch['word_ids'])
  variables = {'params': params['model'], 'batch_stats': batch_stats}
  inputs = (batch['frame'], batch['frame_difference'], words, batch['word_mask'])
  if capture:
    logits, captured = model.apply(variables, *inputs, train=False, mutable=['intermediates'])
    return jax.nn.sigmoid(logits.astype(jnp.float32)), captured['intermediates']
  return jax.nn.sigmoid(model.apply(variables, *inputs, train=False).astype(jnp.float32))


def attention_maps(captured: dict, config: LBDTConfig, stage: int, layer: int) -> dict[str, np.ndarray]:
  """{'frame' | 'difference': [B, words, h*w]}: the head-averaged weights with which the words of one LBDT layer
  aggregate their source stream (eqs. 4-6): the frame (spatial stream) when the layer updates the temporal
  stream, the frame difference (temporal stream) when it updates the spatial one."""
  if config.bridge != 'language':
    raise ValueError('Attention maps show the words\' attention: the model has no language bridge')
  module = captured.get(f'lbdt_stage{stage}')
  if module is None:
    raise ValueError(f'The model has no LBDT module in stage {stage} (it has {list(config.lbdt_stages)})')
  if not 0 <= layer < config.num_lbdt_layers:
    raise ValueError(f'The model has {config.num_lbdt_layers} LBDT layers, not a layer {layer}')
  sources = {'spatial': 'frame', 'temporal': 'difference'}
  targets = config.transfer_targets()
  if config.share_direction_weights:  # one layer called once per direction, in the order of `targets`
    calls = module[f'layer{layer}']['word_source_attention']['attention_weights']
    weights = dict(zip(targets.values(), calls))
  else:
    weights = {source: module[f'layer{layer}_to_{target}']['word_source_attention']['attention_weights'][0]
               for target, source in targets.items()}
  return {sources[source]: np.asarray(w, np.float32).mean(axis=1) for source, w in weights.items()}
