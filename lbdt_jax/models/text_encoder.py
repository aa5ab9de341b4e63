"""Linguistic features (paper §3.1): word vectors -> one-layer LSTM, with PyTorch's parameter layout."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lbdt_jax.models.layers import stats_dtype


class TextEncoder(nn.Module):
  """torch.nn.LSTM(num_layers=1, batch_first=True) over all N positions, padding included (as the reference).

  Kernels keep PyTorch's fused gate order [i | f | g | o] and its two biases, so a state dict maps one to one;
  the input projection of all time steps is one matmul outside the recurrence.
  """
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, words):  # [B, N, E] -> [B, N, hidden]
    hidden = self.hidden_dim
    init = nn.initializers.uniform(2 / hidden**0.5)  # U(-1/sqrt(H), 1/sqrt(H)) after the shift below
    shifted = lambda key, shape, dtype: init(key, shape, dtype) - 1 / hidden**0.5
    input_kernel = self.param('input_kernel', shifted, (words.shape[-1], 4 * hidden), jnp.float32)
    recurrent_kernel = self.param('recurrent_kernel', shifted, (hidden, 4 * hidden), jnp.float32)
    input_bias = self.param('input_bias', shifted, (4 * hidden,), jnp.float32)
    recurrent_bias = self.param('recurrent_bias', shifted, (4 * hidden,), jnp.float32)
    # The recurrence is small and sequential: run it in at least float32 whatever the compute dtype.
    compute = stats_dtype(self.dtype)
    recurrent_kernel = recurrent_kernel.astype(compute)
    gate_inputs = (words.astype(compute) @ input_kernel.astype(compute)
                   + input_bias.astype(compute) + recurrent_bias.astype(compute))

    def step(carry, gates_x):
      h, c = carry
      i, f, g, o = jnp.split(gates_x + h @ recurrent_kernel, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((words.shape[0], hidden), compute)
    _, outputs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(gate_inputs, 0, 1))
    return jnp.swapaxes(outputs, 0, 1)
