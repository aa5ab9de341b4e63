"""Training step time with a slow input stage, with and without prefetching (lbdt_jax/prefetch.py).

  python -m benchmarks.input_overlap [--input-ms 0,150,300] [--steps 20] [--repeats 3] [--json OUT]

The main job's model, train step and batch (configs/synthetic.py) on random batches. The input stage is simulated by a sleep per batch
(I/O or a decoder on other cores: it leaves this process's cores to the step), either the same for every batch
(`steady`) or alternating between none and twice the figure (`uneven`, the same mean: some batches are slow to
read). Each measurement runs --steps steps after a warm-up the way the training loop does (dispatch a step, then
wait for the previous step's result) and reports the median time per step over --repeats, with min and max:

  without   read and transfer the next batch, then dispatch its step (asynchronous dispatch alone overlaps
            reading batch k+1 with step k)
  prefetch  the same loop fed by `Prefetcher` (a thread reads and transfers up to 2 batches ahead)
"""

import argparse
import functools
import itertools
import statistics
import time

import jax
import numpy as np
from absl import logging

from benchmarks import harness, throughput
from configs import synthetic
from lbdt_jax import metrics, prefetch, sharding, train
from lbdt_jax.models import LBDT

PREFETCH = 2


class SlowInput:
  """Host batches after a sleep per batch (the input stage), with the position interface of the train iterator."""

  def __init__(self, batches: list[dict], delays_s: list[float]):
    self._batches, self._delays, self._index = batches, delays_s, 0

  def __next__(self) -> dict:
    time.sleep(self._delays[self._index % len(self._delays)])
    batch = self._batches[self._index % len(self._batches)]
    self._index += 1
    return batch

  def get_state(self) -> dict:
    return {'batch': self._index}

  def set_state(self, state: dict) -> None:
    self._index = state['batch']


def host_batches(config, count: int) -> list[dict]:
  size, batch = (config.input_height, config.input_width), config.train.batch_size
  rng = np.random.default_rng(0)
  return [{'frame': rng.standard_normal((batch, *size, 3)).astype(np.float32),
           'frame_difference': np.abs(rng.standard_normal((batch, *size, 3))).astype(np.float32),
           'word_ids': rng.integers(2, throughput.VOCABULARY, (batch, config.max_words)).astype(np.int32),
           'word_mask': np.ones((batch, config.max_words), np.int32),
           'mask': rng.integers(0, 2, (batch, *size)).astype(np.uint8)} for _ in range(count)]


def seconds_per_step(step_fn, state, batches, steps: int):
  """The training loop's pattern: dispatch step k, then wait for step k-1's result. Returns (s/step, state)."""
  state, metrics_ = step_fn(state, next(batches))  # warm-up
  jax.block_until_ready(metrics_)
  previous = None
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics_ = step_fn(state, next(batches))
    if previous is not None:
      jax.block_until_ready(previous)
    previous = metrics_
  jax.block_until_ready(previous)
  return (time.perf_counter() - start) / steps, state


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--input-ms', default='0,150,300', help='comma-separated mean input times per batch')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  config = synthetic.get_config()
  mesh = sharding.make_mesh()
  state, _, step_fn, _ = train.create_state_and_step(config, LBDT(train.model_config(config)), mesh,
                                                     throughput.benchmark_table(), steps_per_epoch=1000)
  to_global = functools.partial(train.model_inputs, mesh=mesh)
  batches = host_batches(config, 4)

  compute_s, state = seconds_per_step(step_fn, state, (to_global(b) for b in itertools.cycle(batches)), args.steps)
  rows = []
  for input_ms in (float(v) for v in args.input_ms.split(',')):
    for pattern, delays in (('steady', [input_ms / 1e3]), ('uneven', [0.0, 2 * input_ms / 1e3])):
      if input_ms == 0 and pattern == 'uneven':
        continue
      row = {'input_ms': input_ms, 'pattern': pattern}
      for mode in ('without', 'prefetch'):
        times = []
        for _ in range(args.repeats):
          source = SlowInput(batches, delays)
          if mode == 'prefetch':
            with prefetch.Prefetcher(source, to_global, size=PREFETCH) as fed:
              seconds, state = seconds_per_step(step_fn, state, fed, args.steps)
          else:
            seconds, state = seconds_per_step(step_fn, state, map(to_global, iter(source.__next__, None)),
                                              args.steps)
          times.append(1e3 * seconds)
        row[mode] = {'median_ms': statistics.median(times), 'min_ms': min(times), 'max_ms': max(times)}
      rows.append(row)

  info = harness.machine()
  print(f'{harness.describe(info)}; the main job\'s model, batch {config.train.batch_size}; the step alone: '
        f'{1e3 * compute_s:.0f} ms')
  print(metrics.markdown_table(
      ['input ms/batch', 'pattern', 'without prefetch, ms/step', 'with prefetch, ms/step'],
      [[f'{r["input_ms"]:.0f}', r['pattern'],
        *(f'{r[m]["median_ms"]:.0f} ({r[m]["min_ms"]:.0f}-{r[m]["max_ms"]:.0f})' for m in ('without', 'prefetch'))]
       for r in rows]))
  harness.write_json(args.json, {'machine': info, 'config': 'configs/synthetic.py', 'batch': config.train.batch_size,
                                 'step_alone_ms': 1e3 * compute_s, 'prefetch': PREFETCH, 'rows': rows})


if __name__ == '__main__':
  main()
