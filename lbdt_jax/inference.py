"""Inference functions shared by evaluation, prediction and serving: probabilities, the words' attention maps, and
the probabilities function exported with `jax.export` for the serving artefact (`lbdt_jax.serving`)."""

import jax
import jax.numpy as jnp
import numpy as np

from lbdt_jax.models import LBDT, LBDTConfig, embed_words

MODEL_INPUTS = ('frame', 'frame_difference', 'word_ids', 'word_mask')
# What the serving artefact is lowered for (multi-platform export works on a CPU-only machine).
SERVING_PLATFORMS = ('cpu', 'cuda', 'tpu')


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


def flat_variables(variables) -> dict:
  """{'params/backbone/.../kernel': leaf, 'batch_stats/...': leaf}: the model's variables as one flat dict (flax
  module and parameter names hold no '/')."""
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def nested_variables(flat: dict) -> dict:
  """The inverse of `flat_variables`."""
  nested = {'params': {}, 'batch_stats': {}}
  for key, leaf in flat.items():
    *parents, name = key.split('/')
    node = nested
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return nested


def export_probabilities(config: LBDTConfig, variables, input_size: tuple[int, int], max_words: int,
                         platforms: tuple[str, ...] = SERVING_PLATFORMS) -> jax.export.Exported:
  """`probabilities` (evaluation mode: no dropout) exported with `jax.export` for `platforms`, with a symbolic batch
  size `b` and a symbolic vocabulary size `v`:

    exported.call(variables, word_vectors, frames, frame_differences, word_ids, word_mask) → [b, H, W] float32

  variables: {key: [...]} as `flat_variables` gives them; word_vectors [v, word_dim] float32; frames and
  frame_differences [b, H, W, 3] float32 (normalised, H, W = input_size); word_ids and word_mask [b, max_words]
  int32. The parameters are arguments, not constants of the program. Only the shapes and dtypes of `variables` are
  read: arrays or `jax.ShapeDtypeStruct`s (e.g. `model_dir.abstract_variables`) both do.
  """
  model = LBDT(config)
  flat = flat_variables(variables)

  def serve(variables, word_vectors, frames, frame_differences, word_ids, word_mask):
    nested = nested_variables(variables)
    params = {'model': nested['params'], 'word_vectors': word_vectors}
    batch = {'frame': frames, 'frame_difference': frame_differences, 'word_ids': word_ids, 'word_mask': word_mask}
    return probabilities(model, params, nested['batch_stats'], batch)

  batch, vocabulary = jax.export.symbolic_shape('b, v')
  height, width = input_size
  shape = jax.ShapeDtypeStruct
  frames = shape((batch, height, width, 3), jnp.float32)
  words = shape((batch, max_words), jnp.int32)
  arguments = ({key: shape(np.shape(leaf), leaf.dtype) for key, leaf in flat.items()},
               shape((vocabulary, config.word_dim), jnp.float32), frames, frames, words, words)
  return jax.export.export(jax.jit(serve), platforms=tuple(platforms))(*arguments)
