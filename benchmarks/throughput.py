"""Inference frames/s and training samples/s of LBDT against batch size, in float32 and bfloat16.

  python -m benchmarks.throughput [--layers 4] [--size 320] [--batch-sizes 1,2,4] [--dtypes float32,bfloat16]
      [--modes inference,train] [--repeats 5] [--remat] [--json OUT.json] [--plot OUT.png]

Inference is the jitted `LBDT.apply` in eval mode on word vectors; training is the trainer's own jitted
`train_step` (forward, loss, backward, AdamW, BatchNorm statistics; state donated), built by
`lbdt_jax.train.create_state_and_step` from `configs/default.py`. Compile time is reported apart from step time
(see benchmarks/harness.py for the timing method). Memory: XLA's accounting of one compiled call (arguments +
outputs + temporaries), and the allocator's peak where the backend reports one (GPU/TPU). Model FLOPs utilisation
(MFU) is against the vendor's dense peak on known GPUs and, on CPUs, against this machine's fastest measured
matmul. Defaults: batch sizes 1, 2, 4 on CPU and 1 to 256 on accelerators.
"""

import argparse
import dataclasses

import jax
import numpy as np

from benchmarks import flops, harness
from configs import default
from data_pipeline import glove
from benchmarks import host_memory
from lbdt_jax import metrics, sharding, train
from lbdt_jax.models import LBDT

VOCABULARY = 1000  # word table rows for the training step (frozen vectors, as with GloVe)
# Dense peak TFLOP/s by device kind, for model-FLOPs utilisation: (float32 as TF32, bfloat16). Vendor figures.
PEAK_TFLOPS = {'H100': (494.7, 989.4), 'H200': (494.7, 989.4), 'A100': (156.0, 312.0)}
TRAINING_FLOPS_PER_FORWARD = 3  # backward ~ 2x forward (gradients of activations and of weights)


def inference_benchmark(config, batch: int, repeats: int) -> dict:
  model = LBDT(train.model_config(config))
  sets = harness.input_sets(lambda seed: harness.model_inputs(batch, config.input_height, seed=seed))
  variables = jax.jit(lambda key, x: model.init(key, *harness.model_arguments(x)))(jax.random.key(0), sets[0])
  timing, compile_seconds, compiled = harness.time_inference(model, variables, sets, repeats=repeats,
                                                             calls=_calls_per_measurement(batch))
  return {'compile_seconds': compile_seconds, 'timing': timing.as_dict(),
          'items_per_second': batch / timing.median, 'memory_bytes': harness.compiled_memory_bytes(compiled)}


def training_config(layers: int, size: int, batch: int, dtype: str, remat: bool = False):
  config = default.get_config(f'lbdt{layers}')
  config.input_height = config.input_width = size
  config.model.update(dtype=dtype, remat=remat)
  config.train.batch_size = batch
  return config


def training_batch(batch: int, size: int, seed: int) -> dict[str, np.ndarray]:
  inputs = harness.model_inputs(batch, size, seed=seed)
  word_ids = np.random.default_rng(seed).integers(2, VOCABULARY, inputs['word_mask'].shape) * inputs['word_mask']
  return {'frame': inputs['frame'], 'frame_difference': inputs['frame_difference'],
          'word_ids': word_ids.astype(np.int32), 'word_mask': inputs['word_mask'],
          'mask': harness.ground_truth(batch, size, seed)}


def benchmark_table() -> glove.WordTable:
  words = ('', glove.UNKNOWN_TOKEN) + tuple(f'word{i}' for i in range(2, VOCABULARY))
  vectors = np.random.default_rng(0).standard_normal((VOCABULARY, glove.GLOVE_DIM)).astype(np.float32)
  vectors[0] = 0
  return glove.WordTable(words, vectors, trainable=False)


def training_benchmark(config, batch: int, repeats: int) -> dict:
  mesh = sharding.make_mesh()
  model = LBDT(train.model_config(config))
  state, _, step_fn, _ = train.create_state_and_step(config, model, mesh, benchmark_table(), steps_per_epoch=1000)
  batches = [sharding.global_batch(b, mesh) for b in harness.input_sets(
      lambda seed: training_batch(batch, config.input_height, seed))]
  timing, compile_seconds, compiled, _ = harness.time_train_steps(step_fn, state, batches, repeats=repeats,
                                                                  calls=_calls_per_measurement(batch))
  return {'compile_seconds': compile_seconds, 'timing': timing.as_dict(), 'items_per_second': batch / timing.median,
          'memory_bytes': harness.compiled_memory_bytes(compiled), 'peak_bytes': harness.peak_device_memory_bytes()}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  for name, (tf32, bf16) in PEAK_TFLOPS.items():
    if name in device_kind:
      return 1e12 * (bf16 if dtype == 'bfloat16' else tf32)
  return None


def utilisation_peak(info: dict, dtype: str) -> dict:
  """The FLOP/s that MFU is relative to: the vendor's dense peak for known accelerators, on CPUs this machine's
  fastest measured matmul (harness.matmul_peak_flops)."""
  vendor = peak_flops(info['device'], dtype)
  if vendor:
    return {'flops_per_second': vendor, 'source': f'dense peak of {info["device"]} (vendor)'}
  if info['backend'] == 'cpu':
    return {'flops_per_second': harness.matmul_peak_flops(dtype), 'source': 'fastest measured square matmul'}
  return {'flops_per_second': None, 'source': 'unknown device'}


def _calls_per_measurement(batch: int) -> int:
  """Back-to-back calls per measurement: enough to keep an accelerator's queue full, one on the CPU."""
  return 1 if jax.default_backend() == 'cpu' else max(2, 64 // batch)


def plot(results: list[dict], path: str, caption: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(6.4, 4.2))
  for mode, marker in (('inference', 'o'), ('train', 's')):
    for dtype, style in (('float32', '-'), ('bfloat16', '--')):
      points = sorted((r['batch'], r['items_per_second']) for r in results if r['mode'] == mode and r['dtype'] == dtype)
      if points:
        label = f'{"inference (frames/s)" if mode == "inference" else "training (samples/s)"}, {dtype}'
        axis.plot(*zip(*points), style, marker=marker, label=label)
  axis.set_xscale('log', base=2)
  axis.set_yscale('log')
  axis.set_xlabel('batch size')
  axis.set_ylabel('items per second')
  axis.set_title(caption, fontsize=9)
  axis.grid(True, which='both', alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  print(f'Wrote {path}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--layers', type=int, default=4, choices=(1, 4))
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--batch-sizes', help='comma-separated; default 1,2,4 on CPU, 1..256 on accelerators')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--modes', default='inference,train')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--remat', action='store_true', help='recompute encoder activations in the backward pass')
  parser.add_argument('--json')
  parser.add_argument('--plot')
  args = parser.parse_args(argv)
  info = harness.machine()
  default_batches = '1,2,4' if info['backend'] == 'cpu' else '1,8,32,64,128,256'
  batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(',')]
  dtypes = args.dtypes.split(',')
  modes = args.modes.split(',')
  unknown = set(dtypes) - {'float32', 'bfloat16'} | set(modes) - {'inference', 'train'}
  if unknown:
    parser.error(f'unknown dtypes/modes: {sorted(unknown)}')
  peaks = {dtype: utilisation_peak(info, dtype) for dtype in dtypes}
  forward_flops = None
  results = []
  for mode in modes:
    for dtype in dtypes:
      for batch in batch_sizes:
        config = training_config(args.layers, args.size, batch, dtype, args.remat)
        if forward_flops is None:  # counted once, in float32 (benchmarks.flops)
          counted = dataclasses.replace(train.model_config(config), dtype='float32', remat=False)
          forward_flops = flops.model_flops(counted, args.size, harness.NUM_WORDS)
        run = inference_benchmark if mode == 'inference' else training_benchmark
        result = {'mode': mode, 'dtype': dtype, 'batch': batch, **run(config, batch, args.repeats)}
        per_item = forward_flops * (TRAINING_FLOPS_PER_FORWARD if mode == 'train' else 1)
        result['model_tflops_per_second'] = result['items_per_second'] * per_item / 1e12
        peak = peaks[dtype]['flops_per_second']
        result['model_flops_utilisation'] = result['model_tflops_per_second'] * 1e12 / peak if peak else None
        results.append(result)
        timing = result['timing']
        print(f'{mode} {dtype} batch {batch}: {result["items_per_second"]:.2f}/s (median {timing["median"]:.4f} s, '
              f'IQR {timing["iqr"]:.4f} s, compile {result["compile_seconds"]:.1f} s)', flush=True)
  print(f'\nLBDT-{args.layers}, {args.size}x{args.size}, {harness.describe(info)}')
  rows = []
  for r in results:
    t = r['timing']
    memory = r['memory_bytes']
    rows.append([r['mode'], r['dtype'], r['batch'], f'{r["items_per_second"]:.2f}', f'{t["median"] * 1e3:.1f}',
                 f'{t["minimum"] * 1e3:.1f}–{t["maximum"] * 1e3:.1f}', f'{r["compile_seconds"]:.1f}',
                 f'{memory / r["batch"] / 2**20:.0f}' if memory else '—', f'{r["model_tflops_per_second"]:.2f}',
                 f'{100 * r["model_flops_utilisation"]:.0f}%' if r['model_flops_utilisation'] else '—',
                 f'{t["page_faults"] / 1e3:.1f}' if t['page_faults'] is not None else '—',
                 f'{t["system_seconds"]:.2f}' if t['system_seconds'] is not None else '—'])
  print(metrics.markdown_table(['mode', 'dtype', 'batch', 'items/s', 'median ms', 'min–max ms', 'compile s',
                                'memory MiB/sample', 'model TFLOP/s', 'MFU', 'page faults/call (k)',
                                'kernel CPU s/call'], rows))
  print(f'Model FLOPs: {forward_flops / 1e9:.1f} GFLOPs per frame forward (benchmarks.flops), x'
        f'{TRAINING_FLOPS_PER_FORWARD} per training sample; memory: XLA\'s accounting of one call / batch')
  for dtype, peak in peaks.items():
    rate = f'{peak["flops_per_second"] / 1e12:.3f} TFLOP/s' if peak['flops_per_second'] else 'no peak'
    print(f'MFU {dtype}: against {rate}, {peak["source"]}')
  harness.write_json(args.json, {'machine': info, 'layers': args.layers, 'size': args.size, 'remat': args.remat,
                                 'forward_flops': forward_flops, 'peaks': peaks, 'results': results})
  if args.plot:
    plot(results, args.plot, f'LBDT-{args.layers}, {args.size}×{args.size}; {harness.describe(info)}')


if __name__ == '__main__':
  host_memory.use_huge_pages()
  main()
