"""Inference time of one LBDT forward pass (default: LBDT-4, ResNet-50, 320x320, batch 1, float32).

  python -m benchmarks.forward [--layers 4] [--size 320] [--batch 1] [--dtype float32] [--repeats 10]

Compile time is reported apart; the step time is the median over `repeats` runs after a warm-up, with inputs
already on the device and `block_until_ready` after each call. Prints a table and writes JSON (--json).
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from lbdt_jax.models import LBDT, LBDTConfig


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--json')
  args = parser.parse_args()
  config = LBDTConfig(num_lbdt_layers=args.layers, dtype=args.dtype)
  model = LBDT(config)
  rng = np.random.default_rng(0)
  frame = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
  words = rng.standard_normal((args.batch, 25, 300)).astype(np.float32)
  inputs = jax.device_put((frame, np.abs(frame), words, np.ones((args.batch, 25), np.int32)))
  variables = jax.jit(model.init)(jax.random.key(0), *inputs)
  apply = jax.jit(model.apply)
  start = time.perf_counter()
  compiled = apply.lower(variables, *inputs).compile()
  compile_seconds = time.perf_counter() - start
  compiled(variables, *inputs).block_until_ready()  # warm-up
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    compiled(variables, *inputs).block_until_ready()
    times.append(time.perf_counter() - start)
  result = {'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind),
            'layers': args.layers, 'size': args.size, 'batch': args.batch, 'dtype': args.dtype,
            'compile_seconds': compile_seconds, 'median_seconds': statistics.median(times),
            'min_seconds': min(times), 'max_seconds': max(times), 'repeats': args.repeats}
  print('| backend | model | input | dtype | compile s | median s | min s | max s |')
  print('|---|---|---|---|---|---|---|---|')
  print(f'| {result["backend"]} ({result["device"]}) | LBDT-{args.layers} | {args.batch}x{args.size}x{args.size} | '
        f'{args.dtype} | {compile_seconds:.1f} | {result["median_seconds"]:.3f} | {result["min_seconds"]:.3f} | '
        f'{result["max_seconds"]:.3f} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
