"""Pieces checked against direct formulas: aligned_bilinear, padding, attention masks, LSTM gates, BatchNorm,
positional encodings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REFERENCE, init_model, random_inputs, tiny_model_config
from lbdt_jax.models import layers
from lbdt_jax.models.positional_encoding import sinusoid_1d, sinusoid_2d
from lbdt_jax.models.text_encoder import TextEncoder


def bilinear_at(image, y, x):
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  y1, x1 = min(y0 + 1, image.shape[0] - 1), min(x0 + 1, image.shape[1] - 1)
  fy, fx = y - y0, x - x0
  return ((1 - fy) * (1 - fx) * image[y0, x0] + (1 - fy) * fx * image[y0, x1]
          + fy * (1 - fx) * image[y1, x0] + fy * fx * image[y1, x1])


def aligned_bilinear_by_steps(x, factor):
  """The reference's procedure on one [h, w] map: replicate-pad right/bottom, align_corners resize to
  factor*h+1, replicate-pad left/top by factor//2, crop."""
  h, w = x.shape
  padded = np.pad(x, ((0, 1), (0, 1)), mode='edge')
  out_h, out_w = factor * h + 1, factor * w + 1
  resized = np.array([[bilinear_at(padded, i * h / (out_h - 1), j * w / (out_w - 1)) for j in range(out_w)]
                      for i in range(out_h)])
  resized = np.pad(resized, ((factor // 2, 0), (factor // 2, 0)), mode='edge')
  return resized[:out_h - 1, :out_w - 1]


@pytest.mark.parametrize('factor, shape', [(2, (3, 5)), (4, (4, 4)), (8, (2, 3)), (3, (3, 2))])
def test_aligned_bilinear_matches_direct_formula_and_reference_procedure(factor, shape):
  rng = np.random.default_rng(factor)
  x = rng.standard_normal((2, *shape, 3))
  with jax.enable_x64(True):
    ours = np.asarray(layers.aligned_bilinear(jnp.asarray(x), factor))
  h, w = shape
  for b in range(2):
    for c in range(3):
      direct = np.array([[bilinear_at(x[b, :, :, c], np.clip((i - factor // 2) / factor, 0, h - 1),
                                      np.clip((j - factor // 2) / factor, 0, w - 1))
                          for j in range(factor * w)] for i in range(factor * h)])
      np.testing.assert_allclose(ours[b, :, :, c], direct, atol=1e-12)
      np.testing.assert_allclose(ours[b, :, :, c], aligned_bilinear_by_steps(x[b, :, :, c], factor), atol=1e-12)


def naive_conv(x, kernel, stride, pad):
  """PyTorch Conv2d semantics on NHWC / HWIO, symmetric zero padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = np.einsum('bhwc,hwco->bo', patch, kernel)
  return out


@pytest.mark.parametrize('size', [8, 9, 10, 11])
@pytest.mark.parametrize('kernel, stride', [(7, 2), (3, 2), (3, 1), (1, 2)])
def test_conv_padding_matches_pytorch_on_even_and_odd_sizes(size, kernel, stride):
  rng = np.random.default_rng(size)
  x = rng.standard_normal((1, size, size, 2)).astype(np.float32)
  conv = layers.Conv(3, kernel, stride, dtype=jnp.float32)
  params = conv.init(jax.random.key(0), x)
  ours = conv.apply(params, x)
  expected = naive_conv(x, np.asarray(params['params']['kernel']), stride, kernel // 2)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize('size', [8, 9])
def test_max_pool_pads_with_minus_infinity(size):
  """The stage-2 max-pool of the encoders: PyTorch pads with -inf, so all-negative inputs stay negative."""
  import flax.linen as nn
  x = -np.abs(np.random.default_rng(0).standard_normal((1, size, size, 1))).astype(np.float32) - 1
  pooled = jax.lax.reduce_window(jnp.asarray(x), -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
  ours = nn.max_pool(jnp.asarray(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(ours, pooled)
  assert ours.shape[1] == (size + 2 - 3) // 2 + 1
  assert float(ours.max()) < 0  # zero padding would have produced 0


def test_attention_ignores_masked_keys_and_matches_softmax_formula():
  rng = np.random.default_rng(0)
  attention = layers.MultiHeadAttention(num_heads=2)
  query = rng.standard_normal((2, 3, 8)).astype(np.float32)
  keys = rng.standard_normal((2, 5, 8)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  params = attention.init(jax.random.key(0), query, keys, keys, mask, deterministic=True)
  out = attention.apply(params, query, keys, keys, mask, deterministic=True)
  changed = keys.copy()
  changed[~mask] = 100.0  # masked keys and values must not matter
  np.testing.assert_allclose(attention.apply(params, query, changed, changed, mask, deterministic=True), out,
                             atol=1e-6)
  p = jax.tree.map(np.asarray, params['params'])
  proj = lambda x, n: (x @ p[n]['kernel'] + p[n]['bias']).reshape(*x.shape[:-1], 2, 4)
  logits = np.einsum('bqhd,bkhd->bhqk', proj(query, 'query') / 2.0, proj(keys, 'key'))
  logits = np.where(mask[:, None, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, proj(keys, 'value')).reshape(2, 3, 8)
  expected = expected @ p['out']['kernel'] + p['out']['bias']
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_lstm_gate_mapping_matches_pytorch_formula():
  """torch.nn.LSTM: gates [i|f|g|o] = W_ih x + b_ih + W_hh h + b_hh; c = f c + i g; h = o tanh(c)."""
  from lbdt_jax import convert
  rng = np.random.default_rng(0)
  hidden, dim = 6, 5
  torch_weights = {'text_encoder.lstm.weight_ih_l0': rng.standard_normal((4 * hidden, dim)),
                   'text_encoder.lstm.weight_hh_l0': rng.standard_normal((4 * hidden, hidden)),
                   'text_encoder.lstm.bias_ih_l0': rng.standard_normal(4 * hidden),
                   'text_encoder.lstm.bias_hh_l0': rng.standard_normal(4 * hidden)}
  words = rng.standard_normal((2, 4, dim))
  rules = [r for r in convert.official_rules(convert.LBDTConfig()) if r.torch_names[0].startswith('text_')]
  params = {}
  for rule in rules:
    for path, value in zip(rule.paths, rule.to_ours([torch_weights[n] for n in rule.torch_names])):
      params[path[-1]] = value
  with jax.enable_x64(True):
    ours = np.asarray(TextEncoder(hidden, jnp.float64).apply(
        {'params': jax.tree.map(jnp.asarray, params)}, jnp.asarray(words)))
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  h = np.zeros((2, hidden))
  c = np.zeros((2, hidden))
  for t in range(4):
    z = (words[:, t] @ torch_weights['text_encoder.lstm.weight_ih_l0'].T + torch_weights['text_encoder.lstm.bias_ih_l0']
         + h @ torch_weights['text_encoder.lstm.weight_hh_l0'].T + torch_weights['text_encoder.lstm.bias_hh_l0'])
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    np.testing.assert_allclose(ours[:, t], h, atol=1e-12)


def test_batch_norm_updates_running_variance_like_pytorch():
  x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32) * 3 + 1
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = x.reshape(-1, 4).astype(np.float64)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(y.reshape(-1, 4), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), atol=1e-5)


def test_positional_encodings_match_the_reference_float32_values():
  with np.load(REFERENCE / 'case_lbdt4_eval' / 'outputs.npz') as outputs:
    np.testing.assert_allclose(sinusoid_1d(25, 512), outputs['pos_txt'], atol=2e-6)
    np.testing.assert_allclose(np.transpose(sinusoid_2d(10, 10, 512), (2, 0, 1)), outputs['pos_img_stage4'],
                               atol=2e-6)
  non_square = sinusoid_2d(2, 3, 8)
  np.testing.assert_allclose(non_square[1, 2, 0], np.sin(2.0), atol=1e-7)  # channel 0: sin(x)
  np.testing.assert_allclose(non_square[1, 2, 4], np.sin(1.0), atol=1e-7)  # channel dim/2: sin(y)
  with pytest.raises(ValueError, match='divisible by 4'):
    sinusoid_2d(2, 2, 6)


def xla_convolution(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('kernel, stride, pad', [(3, 2, 1), (3, 1, 1), (7, 2, 3), (1, 2, 0), (1, 1, 0)])
def test_convolution_values_and_derivatives_equal_xla_convolution(kernel, stride, pad):
  """`layers.convolution` (1x1 kernels as a dot) has XLA's values, forward-mode and reverse-mode derivatives."""
  rng = np.random.default_rng(kernel * 10 + stride)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)))
    weights = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 4)))
    tangent = jnp.asarray(rng.standard_normal(x.shape))
    value, derivative = jax.jvp(lambda x: layers.convolution(x, weights, stride, pad), (x,), (tangent,))
    np.testing.assert_allclose(value, xla_convolution(x, weights, stride, pad), rtol=1e-12, atol=1e-12)
    # Linear in x: the directional derivative is the convolution of the tangent.
    np.testing.assert_allclose(derivative, xla_convolution(tangent, weights, stride, pad), rtol=1e-12, atol=1e-12)

    def loss(convolve, x, weights):
      return jnp.sum(jnp.sin(convolve(x, weights, stride, pad)))

    ours = jax.grad(functools.partial(loss, layers.convolution), (0, 1))(x, weights)
    xla = jax.grad(functools.partial(loss, xla_convolution), (0, 1))(x, weights)
    for a, b in zip(ours, xla):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_forward_mode_through_the_model_matches_a_finite_difference():
  """jax.jvp through the whole model equals a central difference along a random direction of the frame and the
  reverse-mode derivative along it, in float64."""
  config = tiny_model_config(dtype='float64')
  with jax.enable_x64(True):
    inputs = [jnp.asarray(a, jnp.float64 if a.dtype == np.float32 else a.dtype) for a in random_inputs(config)]
    model, variables = init_model(config, inputs)
    logits = jax.jit(lambda frame: model.apply(variables, frame, *inputs[1:]))
    rng = np.random.default_rng(1)
    direction = jnp.asarray(rng.standard_normal(inputs[0].shape))
    _, derivative = jax.jit(lambda x, t: jax.jvp(logits, (x,), (t,)))(inputs[0], direction)
    step = 1e-5
    finite_difference = (logits(inputs[0] + step * direction) - logits(inputs[0] - step * direction)) / (2 * step)
    assert float(jnp.max(jnp.abs(derivative))) > 1.0
    np.testing.assert_allclose(np.asarray(derivative), np.asarray(finite_difference), rtol=1e-6, atol=1e-7)
    weights = jnp.asarray(rng.standard_normal(derivative.shape))
    reverse = jax.grad(lambda x: jnp.sum(logits(x) * weights))(inputs[0])
    np.testing.assert_allclose(float(jnp.sum(derivative * weights)), float(jnp.sum(reverse * direction)), rtol=1e-10)


@pytest.mark.parametrize('dtype, tolerance', [('float32', 1e-6), ('bfloat16', 2e-2)])
def test_fused_attention_equals_the_explicit_form(dtype, tolerance):
  """Without captured weights or dropout the layer calls jax.nn.dot_product_attention; capturing the weights
  (attention maps) takes the explicit torch-like form. Both give the same output, masked keys included."""
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.standard_normal((2, 7, 16)), jnp.float32)
  keys = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  key_mask = jnp.asarray([[True] * 5, [True, True, False, False, False]])
  layer = layers.MultiHeadAttention(num_heads=4, dtype=jnp.dtype(dtype))
  variables = layer.init(jax.random.key(0), query, keys, keys, key_mask, deterministic=True)
  fused = layer.apply(variables, query, keys, keys, key_mask, deterministic=True)
  explicit, state = layer.apply(variables, query, keys, keys, key_mask, deterministic=True,
                                mutable=['intermediates'])
  assert state['intermediates']['attention_weights'][0].shape == (2, 4, 7, 5)
  np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(explicit, np.float32), rtol=tolerance,
                             atol=tolerance)
  # A masked key has no influence on the fused output.
  changed = keys.at[1, 3].set(100.0)
  np.testing.assert_allclose(np.asarray(layer.apply(variables, query, changed, changed, key_mask,
                                                    deterministic=True)[1], np.float32),
                             np.asarray(fused[1], np.float32), rtol=tolerance, atol=tolerance)
