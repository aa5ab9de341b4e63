"""Sinusoidal positional encodings of words (1-D) and feature maps (2-D), as the reference builds them.

They depend on shapes only, so they are numpy constants folded into the compiled program. The reference builds
them in float32 even in a float64 model; so do we (computed in float64, rounded once to float32).
"""

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=None)
def sinusoid_1d(length: int, dim: int) -> np.ndarray:
  """[length, dim]: even channels sin, odd channels cos, frequencies 10000^(-2k/dim)."""
  position = np.arange(length, dtype=np.float64)[:, None]
  frequency = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
  encoding = np.zeros((length, dim))
  encoding[:, 0::2] = np.sin(position * frequency)
  encoding[:, 1::2] = np.cos(position * frequency)
  return encoding.astype(np.float32)


@functools.lru_cache(maxsize=None)
def sinusoid_2d(height: int, width: int, dim: int) -> np.ndarray:
  """[height, width, dim]: channels [0, dim/2) encode x (width), [dim/2, dim) encode y, sin/cos interleaved."""
  if dim % 4:
    raise ValueError(f'2-D sinusoidal encoding needs a channel count divisible by 4, got {dim}')
  half = dim // 2
  frequency = np.exp(np.arange(0, half, 2, dtype=np.float64) * (-math.log(10000.0) / half))
  x = np.arange(width, dtype=np.float64)[:, None] * frequency  # [W, half/2]
  y = np.arange(height, dtype=np.float64)[:, None] * frequency  # [H, half/2]
  encoding = np.zeros((height, width, dim))
  encoding[:, :, 0:half:2] = np.sin(x)[None]
  encoding[:, :, 1:half:2] = np.cos(x)[None]
  encoding[:, :, half::2] = np.sin(y)[:, None]
  encoding[:, :, half + 1::2] = np.cos(y)[:, None]
  return encoding.astype(np.float32)
