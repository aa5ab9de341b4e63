"""FLOPs of the LBDT forward pass by XLA's cost analysis, beside the paper's Tab. 8.

  python -m benchmarks.flops [--size 320] [--words 25] [--json OUT.json]

Counts one forward pass (inference, batch 1, a frame and its difference at size x size) of LBDT-1 and LBDT-4, and
of their parts: the two ResNet-50 encoders, the LBDT modules (the model minus the same model without them) and the
rest (text encoder and decoder). XLA counts a multiply-add as 2 FLOPs and skips the taps of a convolution that
fall on zero padding; the single-device CPU lowering is used everywhere (accelerator lowerings may hide library
calls from the count). MACs = FLOPs / 2.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks import harness
from lbdt_jax import metrics
from lbdt_jax.models import LBDT, LBDTConfig
from lbdt_jax.models.resnet import ResNetEncoder

# Tab. 8 of the paper, "GFLOPs" at 2x320x320.
PAPER_GFLOPS = {1: 32.51, 4: 38.03}


def cpu_flops(function, *abstract_args) -> float:
  with jax.default_device(jax.devices('cpu')[0]):
    analysis = jax.jit(function).lower(*abstract_args).compile().cost_analysis()
  return float(analysis['flops'])


def model_flops(config: LBDTConfig, size: int, words: int) -> float:
  model = LBDT(config)
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((1, words, config.word_dim), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, words), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image, image, text, mask)
  return cpu_flops(lambda v, *x: model.apply(v, *x), variables, image, image, text, mask)


def encoder_flops(config: LBDTConfig, size: int) -> float:
  encoder = ResNetEncoder(config)
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(encoder.init, jax.random.key(0), image)
  return cpu_flops(lambda v, x: encoder.apply(v, x), variables, image)


def count(layers: int, size: int, words: int) -> dict[str, float]:
  config = LBDTConfig(num_lbdt_layers=layers)
  total = model_flops(config, size, words)
  without_lbdt = model_flops(LBDTConfig(lbdt_stages=()), size, words)
  encoders = 2 * encoder_flops(config, size)
  return {'total': total, 'encoders': encoders, 'lbdt': total - without_lbdt,
          'text_and_decoder': without_lbdt - encoders}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--words', type=int, default=harness.NUM_WORDS)
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  results = {f'lbdt{layers}': count(layers, args.size, args.words) for layers in (1, 4)}
  rows = []
  for layers in (1, 4):
    parts = results[f'lbdt{layers}']
    paper = PAPER_GFLOPS[layers] if args.size == 320 else None
    rows.append([f'LBDT-{layers}', f'{parts["total"] / 1e9:.2f}', f'{parts["total"] / 2e9:.2f}',
                 f'{paper:.2f}' if paper else '—', f'{parts["encoders"] / 2e9:.2f}', f'{parts["lbdt"] / 2e9:.2f}',
                 f'{parts["text_and_decoder"] / 2e9:.2f}'])
  print(f'Forward pass, batch 1, 2x{args.size}x{args.size}, {args.words} words (XLA cost analysis, CPU lowering)')
  print(metrics.markdown_table(['model', 'GFLOPs (XLA)', 'GMACs', 'paper "GFLOPs" (Tab. 8)', 'GMACs: 2 ResNet-50',
                                'GMACs: LBDT modules', 'GMACs: LSTM + decoder'], rows))
  harness.write_json(args.json, {'size': args.size, 'words': args.words, 'flops': results,
                                 'paper_gflops': PAPER_GFLOPS, 'machine': harness.machine()})


if __name__ == '__main__':
  main()
