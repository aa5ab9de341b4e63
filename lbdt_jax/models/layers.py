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


def _convolution(x, kernel, stride: int, padding: int):
  if kernel.shape[:2] == (1, 1) and padding == 0:
    # A matmul over channels: XLA:CPU ran 1x1 convolutions 1.2-5x slower than the same dot (README, Performance).
    return jnp.einsum('bhwc,co->bhwo', x[:, ::stride, ::stride], kernel[0, 0])
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _sum_of_products_per_offset(operands, kernel_shape, dtype):
  """The kernel gradient [k, k, C_in, C_out] from `operands(i, j)` -> ([positions, C_in], [positions, C_out]) per
  kernel offset: one matmul each over the positions, accumulated in at least float32."""
  kernel_height, kernel_width = kernel_shape[:2]
  products = [jax.lax.dot_general(*operands(i, j), (((0,), (0,)), ((), ())), preferred_element_type=stats_dtype(dtype))
              for i in range(kernel_height) for j in range(kernel_width)]
  return jnp.stack(products).reshape(kernel_shape).astype(dtype)


def _kernel_gradient_by_matmuls(x, output_gradient, kernel_shape, stride: int, padding: int):
  """dL/dkernel of `_convolution` as one [positions, C_in]^T x [positions, C_out] matmul per kernel offset.

  XLA:CPU computes this gradient as a convolution whose window is the whole feature map, after transposing the
  activations to [C, H, W, B] (batch innermost). For 1x1 kernels and small maps the matmuls over strided windows
  of the input were 2-5x faster on a 2-core CPU (README, Performance).
  """
  _, _, in_channels, out_channels = kernel_shape
  batch, out_height, out_width, _ = output_gradient.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  gradient = output_gradient.reshape(-1, out_channels)

  def operands(i, j):
    window = jax.lax.slice(
        padded, (0, i, j, 0), (batch, i + (out_height - 1) * stride + 1, j + (out_width - 1) * stride + 1,
                               in_channels), (1, stride, stride, 1))
    return window.reshape(-1, in_channels), gradient

  return _sum_of_products_per_offset(operands, kernel_shape, x.dtype)


def _kernel_gradient_by_shifted_gradients(x, output_gradient, kernel_shape, stride: int, padding: int):
  """dL/dkernel of a stride-1 `_convolution` as one [positions, C_in]^T x [positions, C_out] matmul per kernel
  offset, shifting the (zero-padded) output gradient instead of the input.

  For offset (i, j), sum_p x_padded[p + (i, j)] g[p] = sum_q x[q] g_padded[q + (k - 1 - i, k - 1 - j)], with g padded
  by k - 1 - padding on every side. The input is read whole: on large maps XLA:CPU otherwise recomputes the
  producers of every window (or of its [C, H, W, B] transpose) from the residual stream.
  """
  assert stride == 1, stride
  kernel_height, kernel_width, in_channels, out_channels = kernel_shape
  batch, height, width, _ = x.shape
  rows, columns = kernel_height - 1 - padding, kernel_width - 1 - padding
  padded = jnp.pad(output_gradient, ((0, 0), (rows, rows), (columns, columns), (0, 0)))
  inputs = x.reshape(-1, in_channels)

  def operands(i, j):
    top, left = kernel_height - 1 - i, kernel_width - 1 - j
    window = jax.lax.slice(padded, (0, top, left, 0), (batch, top + height, left + width, out_channels))
    return inputs, window.reshape(-1, out_channels)

  return _sum_of_products_per_offset(operands, kernel_shape, x.dtype)


def _kernel_gradient_by_space_to_depth(x, output_gradient, kernel_shape, stride: int, padding: int):
  """dL/dkernel of a strided `_convolution` with few input channels (the 7x7/2 stems) via space-to-depth.

  Each stride x stride block of the padded input becomes one position with stride^2 * C_in channels; the
  convolution is then a stride-1 one with ceil(k / stride)^2 taps, whose kernel gradient is one matmul per tap
  over contiguous channels (`_kernel_gradient_by_matmuls`). Taps beyond k (zero-padded kernel rows and columns)
  are dropped. Strided windows of a 3-channel input are too narrow for either XLA's convolution or the matmuls.
  """
  kernel_height, kernel_width, in_channels, out_channels = kernel_shape
  batch, out_height, out_width, _ = output_gradient.shape
  taps_high, taps_wide = -(-kernel_height // stride), -(-kernel_width // stride)
  rows, columns = stride * (out_height + taps_high - 1), stride * (out_width + taps_wide - 1)
  # Trailing rows and columns that no window reads are cropped (negative padding).
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, rows - x.shape[1] - padding, 0),
                                                   (padding, columns - x.shape[2] - padding, 0), (0, 0, 0)))
  blocks = padded.reshape(batch, rows // stride, stride, columns // stride, stride, in_channels)
  blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows // stride, columns // stride, -1)
  block_gradient = _kernel_gradient_by_matmuls(
      blocks, output_gradient, (taps_high, taps_wide, stride * stride * in_channels, out_channels), 1, 0)
  gradient = block_gradient.reshape(taps_high, taps_wide, stride, stride, in_channels, out_channels)
  gradient = gradient.transpose(0, 2, 1, 3, 4, 5).reshape(taps_high * stride, taps_wide * stride, in_channels,
                                                          out_channels)
  return gradient[:kernel_height, :kernel_width]


def _kernel_gradient_by_convolution(x, output_gradient, kernel_shape, stride: int, padding: int):
  kernel = jnp.zeros(kernel_shape, x.dtype)
  return jax.vjp(lambda k: _convolution(x, k, stride, padding), kernel)[1](output_gradient)[0]


# Up to this many output positions, slicing the input per kernel offset is cheapest on CPU.
MATMUL_KERNEL_GRADIENT_MAX_POSITIONS = 32 * 32
# Strided convolutions with fewer input channels than this (image stems) take the space-to-depth form on CPU.
SPACE_TO_DEPTH_MAX_IN_CHANNELS = 16


def _cpu_kernel_gradient(kernel_shape, stride: int, positions: int, dtype=jnp.float32):
  """The kernel-gradient form that was fastest on XLA:CPU (2-core measurements, README Performance); XLA's own
  convolution form was slower on every CPU layer measured."""
  if kernel_shape[0] == 1 or positions <= MATMUL_KERNEL_GRADIENT_MAX_POSITIONS:
    return _kernel_gradient_by_matmuls
  if stride == 1:
    return _kernel_gradient_by_shifted_gradients
  if dtype == jnp.float64:  # parity runs: Eigen's float64 convolution was the faster one here
    return _kernel_gradient_by_convolution
  if kernel_shape[2] < SPACE_TO_DEPTH_MAX_IN_CHANNELS:
    return _kernel_gradient_by_space_to_depth
  return _kernel_gradient_by_matmuls  # the strided 3x3 convolutions of the encoders


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, stride: int, padding: int):
  """NHWC x HWIO convolution with symmetric zero padding. Same values and gradients as `lax.conv_general_dilated`;
  on CPU the kernel gradient is computed as matmuls where that was faster (`_cpu_kernel_gradient`); GPUs and TPUs
  keep XLA's own."""
  return _convolution(x, kernel, stride, padding)


def _conv2d_forward(x, kernel, stride, padding):
  return _convolution(x, kernel, stride, padding), (x, kernel)


def _conv2d_backward(stride, padding, residuals, output_gradient):
  x, kernel = residuals
  (input_gradient,) = jax.vjp(lambda x: _convolution(x, kernel, stride, padding), x)[1](output_gradient)
  positions = output_gradient.shape[1] * output_gradient.shape[2]
  options = dict(kernel_shape=kernel.shape, stride=stride, padding=padding)
  kernel_gradient = jax.lax.platform_dependent(
      x, output_gradient, default=functools.partial(_kernel_gradient_by_convolution, **options),
      cpu=functools.partial(_cpu_kernel_gradient(kernel.shape, stride, positions, x.dtype), **options))
  return input_gradient, kernel_gradient


conv2d.defvjp(_conv2d_forward, _conv2d_backward)


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
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.kernel // 2)
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
