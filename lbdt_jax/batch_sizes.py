"""Global batch sizes and the learning rate from per-device settings: `resolve(config, device_count)`.

A config is data: it cannot know how many devices a run will get. `config.train.per_device_batch_size` and
`config.eval.per_device_batch_size` (0 = use the global `batch_size` as written) say what each device computes at
once; the run turns them into global batch sizes for the devices it has, and scales the learning rate with the
global batch where `config.optimizer.lr_batch_scaling` asks for it. Pure: the config passed in is not changed.
"""

import math

import ml_collections

LR_BATCH_SCALINGS = {'none': 0.0, 'sqrt': 0.5, 'linear': 1.0}  # exponent of (global batch / base_batch_size)


def resolve(config: ml_collections.ConfigDict, device_count: int) -> ml_collections.ConfigDict:
  """A copy of `config` with `train.batch_size` = per_device_batch_size x devices x accumulation_steps and
  `eval.batch_size` = per_device_batch_size x devices where the per-device sizes are set (> 0), and the learning
  rate scaled from `optimizer.base_batch_size` to the global batch by `optimizer.lr_batch_scaling`.

  `device_count` is every device of the run (all processes: `jax.device_count()`); the batch is split over all of
  them. Idempotent: the resolved config states its learning rate for its own batch (`base_batch_size` becomes the
  global batch), so resolving it again changes nothing."""
  if isinstance(device_count, bool) or not isinstance(device_count, int) or device_count < 1:
    raise ValueError(f'device_count must be a positive integer, got {device_count!r}')
  resolved = config.copy_and_resolve_references()
  train, optimizer = resolved.train, resolved.optimizer
  per_device = _count(train.per_device_batch_size, 'config.train.per_device_batch_size')
  if per_device:
    accumulation = _count(train.accumulation_steps, 'config.train.accumulation_steps')
    if accumulation < 1:
      raise ValueError(f'config.train.accumulation_steps must be at least 1, got {accumulation}')
    train.batch_size = per_device * device_count * accumulation
  per_device_eval = _count(resolved.eval.per_device_batch_size, 'config.eval.per_device_batch_size')
  if per_device_eval:
    resolved.eval.batch_size = per_device_eval * device_count
  if optimizer.lr_batch_scaling not in LR_BATCH_SCALINGS:
    raise ValueError(f'config.optimizer.lr_batch_scaling must be one of {sorted(LR_BATCH_SCALINGS)}, got '
                     f'{optimizer.lr_batch_scaling!r}')
  base = _count(optimizer.base_batch_size, 'config.optimizer.base_batch_size')
  if base < 1:
    raise ValueError(f'config.optimizer.base_batch_size must be at least 1, got {base}')
  if train.batch_size < 1:
    raise ValueError(f'config.train.batch_size must be at least 1, got {train.batch_size}')
  exponent = LR_BATCH_SCALINGS[optimizer.lr_batch_scaling]
  if exponent:
    optimizer.learning_rate = optimizer.learning_rate * math.pow(train.batch_size / base, exponent)
    optimizer.base_batch_size = train.batch_size
  return resolved


def _count(value, name: str) -> int:
  """A non-negative integer setting, or a ValueError naming its field."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'{name} must be a non-negative integer, got {value!r}')
  return value
