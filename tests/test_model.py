"""Model behaviour: parameter counts, gradients, ablation switches, input sizes, padding-only sentences."""

import dataclasses
import functools
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REFERENCE, random_inputs, random_like, random_variables, tiny_model_config
from lbdt_jax.model_dir import abstract_variables
from lbdt_jax.models import LBDT, LBDTConfig


def reference_used_parameter_count(num_layers):
  """Parameters the official forward pass uses: its state dict less buffers, the unused spa_tower, tem_tower and
  mask_head, and transformer layers beyond `num_layers`."""
  manifest = json.loads((REFERENCE / 'case_lbdt4_eval' / 'manifest.json').read_text())
  total = 0
  for entry in manifest['entries']:
    name = entry['name']
    if re.search(r'running_mean|running_var|num_batches_tracked', name):
      continue
    if re.match(r'decoder\.(spa_tower|tem_tower|mask_head)\.', name):
      continue
    layer = re.match(r'transformer\.stage\d\.layers\.(\d+)\.', name)
    if layer and int(layer.group(1)) >= num_layers:
      continue
    total += int(np.prod(entry['shape']))
  return total


@pytest.mark.parametrize('num_layers', [1, 4])
def test_parameter_count_equals_reference(num_layers):
  params = abstract_variables(LBDTConfig(num_lbdt_layers=num_layers))['params']
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert ours == reference_used_parameter_count(num_layers)


def op_by_op(test):
  """Tests that run the tiny model op by op share one xdist worker: each operation is compiled once there and
  reused by every variant (a jitted program per variant would compile all of them again)."""
  return pytest.mark.xdist_group('tiny_model_op_by_op')(test)


def gradients(config, variables, inputs):
  model = LBDT(config)

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, *inputs, train=True,
                            rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
    return jnp.mean(jax.nn.softplus(-logits) * (logits > 0) + logits**2)

  return jax.grad(loss)(variables['params'])


@pytest.mark.heavy(150)  # with the rest of its xdist group
@op_by_op
@pytest.mark.parametrize('overrides', [{}, {'share_direction_weights': False}, {'bridge': 'direct'},
                                       {'temporal_encoder': False}])
def test_gradient_reaches_every_parameter_in_train_mode(overrides):
  config = tiny_model_config(**overrides)
  grads = gradients(config, random_variables(config), random_inputs(config))
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g) != 0)]
  assert not dead


SWITCHES = {
    'no T->L->S (Tab. 5)': {'transfer_temporal_to_spatial': False},
    'no S->L->T (Tab. 5)': {'transfer_spatial_to_temporal': False},
    'no language denoiser (Tab. 5)': {'language_denoiser': False},
    'no consistency activator (Tab. 5)': {'consistency_activator': False},
    'direct bridge (Tab. 5 row 1)': {'bridge': 'direct'},
    'stages 3-5 (Tab. 7)': {'lbdt_stages': (3, 4, 5)},
    'stage 5 only (Tab. 7)': {'lbdt_stages': (5,)},
    'two layers': {'num_lbdt_layers': 2},
    'separate weights per direction (paper form)': {'share_direction_weights': False},
    'single stream': {'temporal_encoder': False},
    'no LBDT': {'lbdt_stages': ()},
}


@pytest.fixture(scope='module')
def tiny_output(tiny_variables):
  """The tiny model's output on `random_inputs` (run op by op)."""
  return LBDT(tiny_model_config()).apply(tiny_variables, *random_inputs(tiny_model_config()))


@op_by_op
@pytest.mark.parametrize('name', SWITCHES)
def test_each_switch_changes_the_computation(name, tiny_config, tiny_variables, tiny_output):
  """The variant reuses every default variable it shares (same path and shape), so a different output comes
  from a different computation, not merely from other weights."""
  inputs, reference = random_inputs(tiny_config), tiny_output
  variant = dataclasses.replace(tiny_config, **SWITCHES[name])
  output = LBDT(variant).apply(random_variables(variant, seed=1, like=tiny_variables), *inputs)
  assert output.shape == reference.shape and np.all(np.isfinite(output))
  assert not np.allclose(output, reference, atol=1e-5)


@op_by_op
def test_dropout_is_active_in_training_and_off_in_eval(tiny_config, tiny_variables):
  inputs = random_inputs(tiny_config)
  model = LBDT(tiny_config)
  run = lambda key: model.apply(tiny_variables, *inputs, train=True, rngs={'dropout': key},
                                mutable=['batch_stats'])[0]
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  np.testing.assert_array_equal(model.apply(tiny_variables, *inputs), model.apply(tiny_variables, *inputs))


def test_non_square_inputs_and_no_retrace_for_repeated_shapes(tiny_config, tiny_variables):
  model = LBDT(tiny_config)

  @jax.jit
  @chex.assert_max_traces(n=2)
  def apply(variables, *inputs):
    return model.apply(variables, *inputs)

  for height, width in ((64, 96), (64, 96), (96, 32), (96, 32), (64, 96)):
    inputs = random_inputs(tiny_config, height=height, width=width)
    assert apply(tiny_variables, *inputs).shape == (2, height, width)


@pytest.mark.parametrize('height, width', [(64, 80), (50, 64)])
def test_sizes_that_are_not_multiples_of_32_are_rejected(tiny_config, tiny_variables, height, width):
  with pytest.raises(ValueError, match='multiples of 32'):
    jax.eval_shape(LBDT(tiny_config).apply, tiny_variables, *random_inputs(tiny_config, height=height, width=width))


def test_wrong_shapes_are_rejected_with_names(tiny_config, tiny_variables):
  frame, difference, words, mask = random_inputs(tiny_config)
  apply = functools.partial(jax.eval_shape, LBDT(tiny_config).apply, tiny_variables)
  with pytest.raises(ValueError, match='word_mask'):
    apply(frame, difference, words, mask[:, :3])
  with pytest.raises(ValueError, match='words must be'):
    apply(frame, difference, words[..., :10], mask)
  with pytest.raises(ValueError, match='frame_difference'):
    apply(frame, difference[:, :32], words, mask)


@op_by_op
def test_sentence_of_padding_only_is_finite_and_attends_to_all_positions(tiny_config, tiny_variables, tiny_output):
  """The reference gives NaN here; we define it as attending to all N positions."""
  frame, difference, words, mask = random_inputs(tiny_config)
  model = LBDT(tiny_config)
  empty = mask.copy()
  empty[1] = 0
  out = model.apply(tiny_variables, frame, difference, words, empty)
  assert np.all(np.isfinite(out))
  everything = mask.copy()
  everything[1] = 1
  np.testing.assert_allclose(out[1], model.apply(tiny_variables, frame, difference, words, everything)[1],
                             atol=1e-6)
  np.testing.assert_allclose(out[0], tiny_output[0], atol=1e-6)


@op_by_op
def test_bfloat16_computes_in_bfloat16_with_float32_parameters(tiny_config, tiny_variables, tiny_output):
  config = dataclasses.replace(tiny_config, dtype='bfloat16')
  inputs = random_inputs(config)
  lowered = jax.jit(LBDT(config).apply).lower(tiny_variables, *inputs)
  assert 'bf16' in lowered.as_text()
  out16 = lowered.compile()(tiny_variables, *inputs)
  assert out16.dtype == jnp.bfloat16
  out32 = tiny_output
  assert np.linalg.norm(out16 - out32) / np.linalg.norm(out32) < 5e-2


@pytest.mark.parametrize('bad, message', [
    ({'resnet_depth': 42}, 'resnet_depth'), ({'lbdt_stages': (1, 4)}, 'lbdt_stages'),
    ({'bridge': 'words'}, 'bridge'), ({'num_heads': 5}, 'num_heads'), ({'dtype': 'float16'}, 'dtype'),
    ({'transfer_temporal_to_spatial': False, 'transfer_spatial_to_temporal': False}, 'both transfer'),
    ({'dropout_rate': 1.5}, 'dropout_rate'),
])
def test_bad_config_values_are_named(bad, message):
  with pytest.raises(ValueError, match=message):
    LBDTConfig(**bad)
  with pytest.raises(ValueError, match='Unknown model config keys'):
    LBDTConfig.from_dict({'layers': 3})


@pytest.mark.parametrize('depth', [18, 34, 101])
def test_other_resnet_depths_build(depth):
  params = abstract_variables(LBDTConfig(resnet_depth=depth))['params']['spatial_encoder']
  expected_blocks = {18: 2, 34: 3, 101: 3}[depth]
  assert len([k for k in params if k.startswith('layer1_')]) == expected_blocks
  assert len([k for k in params if k.startswith('layer3_')]) == {18: 2, 34: 6, 101: 23}[depth]


def test_remat_recomputes_without_changing_parameters_or_gradients():
  """remat=True checkpoints the encoder blocks: same parameters, same gradients (x64), 'remat' in the program."""
  from lbdt_jax.models.resnet import ResNetEncoder  # pylint: disable=import-outside-toplevel

  def gradients_and_program(remat):
    encoder = ResNetEncoder(tiny_model_config(dtype='float64', remat=remat))
    frame = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)))
    variables = random_like(jax.eval_shape(encoder.init, jax.random.key(0), frame))

    def loss(params):
      outputs, _ = encoder.apply({'params': params, 'batch_stats': variables['batch_stats']}, frame, train=True,
                                 mutable=['batch_stats'])
      return sum(jnp.sum(jnp.sin(x)) for x in outputs)
    return jax.jit(jax.grad(loss))(variables['params']), str(jax.make_jaxpr(jax.grad(loss))(variables['params']))

  with jax.enable_x64(True):
    (plain, plain_program), (remat, remat_program) = gradients_and_program(False), gradients_and_program(True)
  assert 'remat' in remat_program and 'remat' not in plain_program
  assert jax.tree.structure(plain) == jax.tree.structure(remat)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
