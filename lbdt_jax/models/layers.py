"""Building blocks shared by the encoders, LBDT and the decoder, numerically matching PyTorch."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torch.nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# torchvision's ResNet convolution initialisation.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def stats_dtype(dtype) -> jnp.dtype:
  """Normalisations, softmaxes, the LSTM and residual streams run in at least float32 (bfloat16 policy)."""
  return jnp.promote_types(dtype, jnp.float32)


def convolution(x, kernel, stride: int, padding: int):
  """NHWC x HWIO convolution with symmetric zero padding (PyTorch's)."""
  if kernel.shape[:2] == (1, 1) and padding == 0:
    # A matmul over channels: XLA:CPU ran 1x1 convolutions 1.2-5x slower than the same dot (docs/performance.md).
    return jnp.einsum('bhwc,co->bhwo', x[:, ::stride, ::stride], kernel[0, 0])
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """A square convolution with PyTorch's symmetric `padding=kernel // 2` (parameters named as `nn.Conv`'s).

  Flax's 'SAME' pads the extra row at the bottom/right when a stride-2 conv meets an even size; PyTorch pads both
  sides equally, so the padding is always explicit.
  """
  features: int
  kernel: int
  stride: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = kaiming_fan_out

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.features),
                        jnp.float32)
    y = convolution(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.kernel // 2)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def Dense(features: int, *, dtype: Any, name: str | None = None, kernel_init=torch_linear_init):
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def LayerNorm(*, dtype: Any, name: str | None = None) -> nn.LayerNorm:
  """torch.nn.LayerNorm: eps 1e-5, two-pass variance; output in at least float32 (the residual stream)."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=stats_dtype(dtype), param_dtype=jnp.float32,
                      name=name)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d on NHWC inputs.

  Flax's BatchNorm updates the running variance with the biased batch variance; PyTorch uses the unbiased one
  (normalisation uses the biased one in both). Keeping PyTorch's rule makes converted checkpoints train on
  identically. Under `jax.jit` with a batch sharded over devices the statistics cover the global batch.
  The output stays in at least float32: with bfloat16 compute, the residual streams between convolutions keep
  float32 precision while the convolutions themselves run in bfloat16.
  """
  momentum: float = 0.1  # PyTorch convention: new = (1 - momentum) * old + momentum * batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    channels = x.shape[-1]
    compute = stats_dtype(x.dtype)
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    x = x.astype(compute)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = x.mean(axes)
      var = jnp.square(x - mean).mean(axes)
      count = x.size // channels
      if not self.is_initializing():
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = ((1 - self.momentum) * running_mean.value + self.momentum * mean
                             ).astype(running_mean.value.dtype)
        running_var.value = ((1 - self.momentum) * running_var.value + self.momentum * unbiased
                            ).astype(running_var.value.dtype)
    else:
      mean, var = running_mean.value.astype(compute), running_var.value.astype(compute)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(compute)) + bias.astype(compute)
    return y


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> optional ReLU, the unit of the decoder and the LBDT projections."""
  features: int
  kernel: int
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv(self.features, self.kernel, dtype=self.dtype, name='conv')(x)
    x = BatchNorm(dtype=self.dtype, name='bn')(x, train)
    return nn.relu(x) if self.relu else x


@functools.lru_cache(maxsize=None)
def aligned_bilinear_matrix(size: int, factor: int) -> np.ndarray:
  """[factor * size, size] float64 matrix of the 1-D `aligned_bilinear` resampling.

  The reference pads right by one (replicate), resizes bilinearly with align_corners to factor * size + 1, pads
  left by factor // 2 (replicate) and crops; in closed form output i samples the input at
  clamp((i - factor // 2) / factor, 0, size - 1).
  """
  out = np.arange(factor * size)
  source = np.clip((out - factor // 2) / factor, 0, size - 1)
  low = np.floor(source).astype(np.int64)
  high = np.minimum(low + 1, size - 1)
  frac = source - low
  matrix = np.zeros((factor * size, size))
  np.add.at(matrix, (out, low), 1 - frac)
  np.add.at(matrix, (out, high), frac)
  return matrix


def aligned_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """Upsamples NHWC `x` by an integer factor exactly as the reference's `aligned_bilinear`.

  Implemented as two small matmuls with separable interpolation matrices (exact, and fast on every backend).
  """
  if factor == 1:
    return x
  rows = jnp.asarray(aligned_bilinear_matrix(x.shape[1], factor), x.dtype)
  cols = jnp.asarray(aligned_bilinear_matrix(x.shape[2], factor), x.dtype)
  x = jnp.einsum('Hh,bhwc->bHwc', rows, x)
  return jnp.einsum('Ww,bhwc->bhWc', cols, x)


class MultiHeadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch-major): q, k, v and output projections with bias.

  As in PyTorch, the query is scaled by 1/sqrt(head_dim) before q.k, masked keys get an additive -inf, and
  dropout acts on the attention weights. `key_mask` is [B, S] with True for keys that may be attended.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, key_mask=None, *, deterministic: bool):
    dim = query.shape[-1]
    head_dim = dim // self.num_heads
    xavier = nn.initializers.xavier_uniform()

    def project(x, name):
      y = Dense(dim, dtype=self.dtype, kernel_init=xavier, name=name)(x)
      return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

    q = project(query, 'query') * jnp.asarray(head_dim**-0.5, self.dtype)
    k, v = project(key, 'key'), project(value, 'value')
    mask = None if key_mask is None else key_mask[:, None, None, :]
    weights_used = self.is_mutable_collection('intermediates') or (not deterministic and self.dropout_rate > 0)
    if weights_used or jnp.dtype(self.dtype) == jnp.float64:
      # The explicit form: its weights can be sown (attention maps) and dropped out as torch does; float64 runs
      # need it too (jax.nn.dot_product_attention's softmax is float32).
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(stats_dtype(self.dtype))
      if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      self.sow('intermediates', 'attention_weights', weights)  # [B, heads, queries, keys]
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    else:  # the fused kernel of the backend (cuDNN on GPUs where it applies); q is already scaled
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0)
    out = out.reshape(*query.shape[:-1], dim)
    return Dense(dim, dtype=self.dtype, name='out')(out)
