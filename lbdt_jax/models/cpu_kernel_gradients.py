"""Opt-in kernel gradients of convolutions as matmuls, for training on CPU (`LBDTConfig.cpu_kernel_gradients`).

XLA:CPU computes a convolution's kernel gradient as a convolution whose window is the whole feature map, after
transposing the activations to [C, H, W, B]. On the CPU configs (small maps, few channels) one matmul per kernel
offset was markedly faster (figures in docs/performance.md). The values equal XLA's gradients (tests); the forward
pass and the input gradient are XLA's own, and on other platforms the kernel gradient is XLA's too.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

# Up to this many output positions, slicing the input per kernel offset is cheapest on CPU.
MATMUL_MAX_POSITIONS = 32 * 32
# Strided convolutions with fewer input channels than this (image stems) take the space-to-depth form.
SPACE_TO_DEPTH_MAX_IN_CHANNELS = 16


def _sum_of_products_per_offset(operands, kernel_shape, dtype):
  """The kernel gradient [k, k, C_in, C_out] from `operands(i, j)` -> ([positions, C_in], [positions, C_out]) per
  kernel offset: one matmul each over the positions, accumulated in at least float32."""
  kernel_height, kernel_width = kernel_shape[:2]
  accumulation = jnp.promote_types(dtype, jnp.float32)
  products = [jax.lax.dot_general(*operands(i, j), (((0,), (0,)), ((), ())), preferred_element_type=accumulation)
              for i in range(kernel_height) for j in range(kernel_width)]
  return jnp.stack(products).reshape(kernel_shape).astype(dtype)


def by_input_windows(x, output_gradient, kernel_shape, stride: int, padding: int):
  """One [positions, C_in]^T x [positions, C_out] matmul per kernel offset over strided windows of the input:
  1x1 kernels, small maps and the strided 3x3 convolutions of the encoders."""
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


def by_output_gradient_windows(x, output_gradient, kernel_shape, stride: int, padding: int):
  """Stride 1 on large maps: one matmul per kernel offset, shifting the zero-padded output gradient instead of the
  input, since sum_p x_padded[p + (i, j)] g[p] = sum_q x[q] g_padded[q + (k - 1 - i, k - 1 - j)] with g padded by
  k - 1 - padding. The input is read whole, so its producers are not recomputed per window."""
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


def by_space_to_depth(x, output_gradient, kernel_shape, stride: int, padding: int):
  """Strided convolutions with few input channels (the 7x7/2 stems): each stride x stride block of the padded input
  becomes one position with stride^2 * C_in channels, so the kernel gradient is that of a stride-1 convolution
  with ceil(k / stride)^2 taps (`by_input_windows`), of which taps beyond k are dropped."""
  kernel_height, kernel_width, in_channels, out_channels = kernel_shape
  batch, out_height, out_width, _ = output_gradient.shape
  taps_high, taps_wide = -(-kernel_height // stride), -(-kernel_width // stride)
  rows, columns = stride * (out_height + taps_high - 1), stride * (out_width + taps_wide - 1)
  # Trailing rows and columns that no window reads are cropped (negative padding).
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, rows - x.shape[1] - padding, 0),
                                                   (padding, columns - x.shape[2] - padding, 0), (0, 0, 0)))
  blocks = padded.reshape(batch, rows // stride, stride, columns // stride, stride, in_channels)
  blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows // stride, columns // stride, -1)
  block_gradient = by_input_windows(
      blocks, output_gradient, (taps_high, taps_wide, stride * stride * in_channels, out_channels), 1, 0)
  gradient = block_gradient.reshape(taps_high, taps_wide, stride, stride, in_channels, out_channels)
  gradient = gradient.transpose(0, 2, 1, 3, 4, 5).reshape(taps_high * stride, taps_wide * stride, in_channels,
                                                          out_channels)
  return gradient[:kernel_height, :kernel_width]


def form_for(kernel_shape, stride: int, positions: int, dtype) -> Callable | None:
  """The fastest form measured on CPU for this convolution, or None where XLA's own was (strided float64 maps)."""
  if kernel_shape[0] == 1 or positions <= MATMUL_MAX_POSITIONS:
    return by_input_windows
  if stride == 1:
    return by_output_gradient_windows
  if dtype == jnp.float64:
    return None
  if kernel_shape[2] < SPACE_TO_DEPTH_MAX_IN_CHANNELS:
    return by_space_to_depth
  return by_input_windows


def with_cpu_kernel_gradients(convolution: Callable) -> Callable:
  """`convolution(x, kernel, stride, padding)` with the same values and input gradient, whose kernel gradient on
  CPU is computed by `form_for`'s matmuls."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def convolve(x, kernel, stride: int, padding: int):
    return convolution(x, kernel, stride, padding)

  def forward(x, kernel, stride, padding):
    return convolution(x, kernel, stride, padding), (x, kernel)

  def backward(stride, padding, residuals, output_gradient):
    x, kernel = residuals
    _, pullback = jax.vjp(lambda x, kernel: convolution(x, kernel, stride, padding), x, kernel)
    xla_gradients = functools.partial(pullback, output_gradient)
    form = form_for(kernel.shape, stride, output_gradient.shape[1] * output_gradient.shape[2], x.dtype)
    if form is None:
      return xla_gradients()

    def cpu_gradients():
      input_gradient = jax.vjp(lambda x: convolution(x, kernel, stride, padding), x)[1](output_gradient)[0]
      return input_gradient, form(x, output_gradient, kernel.shape, stride, padding)

    return jax.lax.platform_dependent(default=xla_gradients, cpu=cpu_gradients)

  convolve.defvjp(forward, backward)
  return convolve
