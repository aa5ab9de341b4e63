"""Side by side with the official PyTorch LBDT: same weights, same inputs, same machine, one process.

  python -m benchmarks.compare_reference --reference PATH/TO/LBDT [--device cpu|cuda] [--layers 4] [--size 320]
      [--inference-batches 1,8] [--train-batch 8] [--repeats 5] [--json OUT.json]

PATH is a checkout of github.com/dzh19990407/LBDT (its `models/` package is imported from there; nothing of it is
part of this repository) and PyTorch must be installed (`pip install -e '.[torch]'`). The official model is built
with its own ResNet-50s, given deterministic weights (the fixtures' rule, `tests/fixtures/reference`), and the
same state dict goes through our converter into our model. Checked first: eval-mode logits, and the training
loss of the first step, agree. Then timed (benchmarks/harness.py method) in each framework's default precision:
inference at each batch size (eval mode, no gradients) and one training step on the same batch: forward, the
reference's loss (0.5 BCE with pos_weight 1.5 + 0.5 dice), backward and AdamW (lr 1e-4, weight decay 5e-4), with
BatchNorm in training mode. Dropout is off in both models so that their losses can be compared. The reference's
two `.cuda()` calls (positional encodings) are redirected to the chosen device while it runs.
"""

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys

import jax
import numpy as np

from benchmarks import harness, throughput
from data_pipeline import glove
from benchmarks import host_memory
from lbdt_jax import convert, metrics, sharding, train
from lbdt_jax.models import LBDT
from lbdt_jax.tools import check_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WEIGHTS = os.path.join(ROOT, 'tests', 'fixtures', 'reference', 'case_lbdt4_eval', 'manifest.json')
REFERENCE_FILES = ('models/LBDT_4.py', 'models/position_encoding.py', 'models/modeling/resnet.py')
LOGITS_TOLERANCE = 1e-4  # relative L2, float32
LOSS_TOLERANCE = 1e-3


def import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise SystemExit('The comparison needs PyTorch: pip install -e ".[torch]" (or any torch >= 2.0)') from error
  return torch


def import_reference(path: str):
  """(LBDT_4 module, resnet module) from a checkout of the official code."""
  missing = [name for name in REFERENCE_FILES if not os.path.isfile(os.path.join(path, name))]
  if missing:
    raise SystemExit(f'{path} is not a checkout of github.com/dzh19990407/LBDT: it lacks {", ".join(missing)}')
  sys.path.insert(0, os.path.abspath(path))
  try:
    return importlib.import_module('models.LBDT_4'), importlib.import_module('models.modeling.resnet')
  except ImportError as error:
    raise SystemExit(f'Could not import the official model from {path}: {error}') from error


@contextlib.contextmanager
def cuda_calls_on(torch, device: str):
  """The reference hard-codes `.cuda()` for its positional encodings: while it runs they go to `device` instead
  (the CPU, or the chosen GPU)."""
  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor.to(device)
  try:
    yield
  finally:
    torch.Tensor.cuda = original


def reference_state_dict(layers: int, manifest_path: str) -> dict[str, np.ndarray]:
  with open(manifest_path) as f:
    state_dict = check_reference.regenerate_state_dict(json.load(f))
  keep = lambda name: not any(f'.layers.{i}.' in name for i in range(layers, 4))
  return {name: value for name, value in state_dict.items() if keep(name)}


def build_reference(torch, lbdt_module, resnet_module, layers: int, state_dict: dict, device: str):
  model = lbdt_module.JointModel(image_encoder=resnet_module.resnet50(), flow_encoder=resnet_module.resnet50(),
                                 num_layers=1)
  for stage in model.transformer.values():  # LBDT-1: the first layer of each stage
    stage.layers = stage.layers[:layers]
    stage.num_layers = layers
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  for module in model.modules():  # no dropout, so that the training losses can be compared
    if isinstance(module, torch.nn.Dropout):
      module.p = 0.0
    elif isinstance(module, torch.nn.MultiheadAttention):
      module.dropout = 0.0
  return model.to(device)


def torch_inputs(torch, inputs: dict, device: str) -> tuple:
  """The reference's call signature: NCHW images, phrase vectors and mask, an all-ones stage-5 image mask."""
  frame = torch.from_numpy(inputs['frame'].transpose(0, 3, 1, 2).copy())
  difference = torch.from_numpy(inputs['frame_difference'].transpose(0, 3, 1, 2).copy())
  batch, _, height, width = frame.shape
  image_mask = torch.ones(batch, (height // 32) * (width // 32), dtype=torch.long)
  values = (frame, difference, torch.from_numpy(inputs['words']),
            torch.from_numpy(inputs['word_mask'].astype(np.int64)), image_mask)
  return tuple(v.to(device) for v in values)


def reference_loss(torch, logits, target):
  """train.py of the reference: 0.5 BCE-with-logits (pos_weight 1.5) + 0.5 dice (probabilities clamped)."""
  bce = torch.nn.functional.binary_cross_entropy_with_logits(
      logits, target, pos_weight=torch.tensor([1.5], device=logits.device))
  probabilities = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4).flatten(1)
  target = target.flatten(1)
  dice = 1 - (2 * (probabilities * target).sum(1) + 1) / (probabilities.sum(1) + target.sum(1) + 1)
  return 0.5 * bce + 0.5 * dice.mean()


def relative_l2(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64).reshape(np.shape(ours))
  return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-30))


class Comparison:
  """Both models with the same weights; methods time or check one thing each."""

  def __init__(self, args, torch, lbdt_module, resnet_module):
    self.args, self.torch = args, torch
    self.state_dict = reference_state_dict(args.layers, args.weights)
    self.reference = build_reference(torch, lbdt_module, resnet_module, args.layers, self.state_dict, args.device)
    converted_config, self.variables = convert.convert_official(self.state_dict)
    self.model_config = dataclasses.replace(converted_config, dropout_rate=0.0)
    self.model = LBDT(self.model_config)
    self.variables = jax.device_put(self.variables)
    if args.device.startswith('cuda'):
      self.wait_torch = lambda _: torch.cuda.synchronize()
    else:
      self.wait_torch = lambda _: None

  def input_sets(self, batch: int) -> list[dict]:
    return harness.input_sets(lambda seed: harness.model_inputs(batch, self.args.size, seed=seed))

  def check_logits(self) -> dict:
    inputs = harness.model_inputs(2, self.args.size, seed=100)
    self.reference.eval()
    with self.torch.inference_mode(), cuda_calls_on(self.torch, self.args.device):
      reference = self.reference(*torch_inputs(self.torch, inputs, self.args.device)).float().cpu().numpy()
    with jax.default_matmul_precision('highest'):
      ours = np.asarray(jax.jit(self.model.apply)(self.variables, *harness.model_arguments(inputs)))
    return {'relative_l2': relative_l2(ours, reference), 'max_abs': float(np.max(np.abs(ours - reference.reshape(
        ours.shape)))), 'tolerance': LOGITS_TOLERANCE}

  def time_reference_inference(self, batch: int) -> harness.Timing:
    sets = [torch_inputs(self.torch, inputs, self.args.device) for inputs in self.input_sets(batch)]
    self.reference.eval()
    with self.torch.inference_mode(), cuda_calls_on(self.torch, self.args.device):
      return harness.time_calls(lambda i: self.reference(*sets[i % len(sets)]), repeats=self.args.repeats,
                                wait=self.wait_torch)

  def time_our_inference(self, batch: int) -> tuple[harness.Timing, float]:
    timing, compile_seconds, _ = harness.time_inference(self.model, self.variables, self.input_sets(batch),
                                                        repeats=self.args.repeats)
    return timing, compile_seconds

  def training_batches(self):
    """The same batches for both: word vectors become a frozen table whose ids the trainer looks up."""
    batch, size = self.args.train_batch, self.args.size
    sets = self.input_sets(batch)
    masks = [harness.ground_truth(batch, size, seed) for seed in range(len(sets))]
    words_per_batch = batch * harness.NUM_WORDS
    vectors = [np.zeros((2, glove.GLOVE_DIM), np.float32)] + [
        inputs['words'].reshape(-1, glove.GLOVE_DIM) for inputs in sets]
    table = glove.WordTable(('', glove.UNKNOWN_TOKEN) + tuple(f'w{i}' for i in range(len(sets) * words_per_batch)),
                            np.concatenate(vectors), trainable=False)
    ours = []
    for k, inputs in enumerate(sets):
      ids = 2 + k * words_per_batch + np.arange(words_per_batch).reshape(batch, harness.NUM_WORDS)
      ours.append({'frame': inputs['frame'], 'frame_difference': inputs['frame_difference'],
                   'word_ids': np.where(inputs['word_mask'] > 0, ids, 0).astype(np.int32),
                   'word_mask': inputs['word_mask'], 'mask': masks[k]})
    reference = [(torch_inputs(self.torch, inputs, self.args.device),
                  self.torch.from_numpy(mask.astype(np.float32)).to(self.args.device))
                 for inputs, mask in zip(sets, masks)]
    return table, ours, reference

  def time_training(self) -> dict:
    table, ours, reference = self.training_batches()
    # Ours: the trainer's own step, starting from the converted weights.
    config = throughput.training_config(self.args.layers, self.args.size, self.args.train_batch, 'float32')
    config.model.dropout_rate = 0.0
    mesh = sharding.make_mesh()
    state, shardings, step_fn, optimizer = train.create_state_and_step(config, LBDT(self.model_config), mesh, table,
                                                                       steps_per_epoch=1000)
    params = {**state.params, 'model': self.variables['params']}
    state = jax.device_put(state.replace(params=params, batch_stats=self.variables['batch_stats'],
                                         opt_state=optimizer.init(params)), shardings)
    batches = [sharding.global_batch(batch, mesh) for batch in ours]
    our_timing, compile_seconds, _, our_losses = harness.time_train_steps(step_fn, state, batches,
                                                                         repeats=self.args.repeats)
    # The reference: its model in training mode, AdamW as its train.py.
    torch = self.torch
    self.reference.train()
    optimizer_torch = torch.optim.AdamW(self.reference.parameters(), lr=1e-4, weight_decay=5e-4)
    reference_losses = []

    def reference_step(i):
      inputs, target = reference[i % len(reference)]
      optimizer_torch.zero_grad(set_to_none=True)
      loss = reference_loss(torch, self.reference(*inputs), target)
      loss.backward()
      optimizer_torch.step()
      reference_losses.append(loss.detach())
      return loss

    with cuda_calls_on(torch, self.args.device):
      reference_timing = harness.time_calls(reference_step, repeats=self.args.repeats, wait=self.wait_torch)
    first_ours, first_reference = float(our_losses[0]), float(reference_losses[0])
    return {'ours': our_timing, 'reference': reference_timing, 'compile_seconds': compile_seconds,
            'first_loss': {'ours': first_ours, 'reference': first_reference,
                           'relative_difference': abs(first_ours - first_reference) / abs(first_reference),
                           'tolerance': LOSS_TOLERANCE}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference', required=True, help='checkout of github.com/dzh19990407/LBDT')
  parser.add_argument('--device', help='torch device: cpu or cuda (default: cuda when available)')
  parser.add_argument('--layers', type=int, default=4, choices=(1, 4))
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--inference-batches', default='1,8')
  parser.add_argument('--train-batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--weights', default=DEFAULT_WEIGHTS, help='manifest.json with the weight rule')
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  if args.size % 32:
    parser.error(f'--size must be a multiple of 32, got {args.size}')
  torch = import_torch()
  args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
  if args.device.startswith('cuda') and not torch.cuda.is_available():
    raise SystemExit('--device=cuda, but this PyTorch build sees no CUDA device')
  if args.device.startswith('cuda') != (jax.default_backend() == 'gpu'):
    print(f'Note: PyTorch runs on {args.device}, JAX on {jax.default_backend()}: the comparison is across devices.')
  lbdt_module, resnet_module = import_reference(args.reference)
  comparison = Comparison(args, torch, lbdt_module, resnet_module)
  info = {**harness.machine(), 'torch': torch.__version__, 'torch_device': args.device,
          'torch_threads': torch.get_num_threads()}
  print(f'Comparing LBDT-{args.layers} at {args.size}x{args.size}: {harness.describe(info)}; PyTorch '
        f'{torch.__version__} on {args.device} ({info["torch_threads"]} threads)', flush=True)

  logits = comparison.check_logits()
  print(f'Eval logits: relative L2 {logits["relative_l2"]:.2e}, max |diff| {logits["max_abs"]:.2e}', flush=True)
  rows, results = [], {'machine': info, 'layers': args.layers, 'size': args.size, 'logits': logits,
                       'inference': {}}
  for batch in [int(b) for b in args.inference_batches.split(',')]:
    reference = comparison.time_reference_inference(batch)
    ours, compile_seconds = comparison.time_our_inference(batch)
    results['inference'][batch] = {'reference': reference.as_dict(), 'ours': ours.as_dict(),
                                   'our_compile_seconds': compile_seconds}
    rows.append([f'inference, batch {batch} (frames/s)', f'{batch / reference.median:.2f}', f'{batch / ours.median:.2f}',
                 f'{reference.median / ours.median:.2f}×', f'{compile_seconds:.1f}'])
    print(' | '.join(rows[-1]), flush=True)
  training = comparison.time_training()
  results['training'] = {'reference': training['reference'].as_dict(), 'ours': training['ours'].as_dict(),
                         'our_compile_seconds': training['compile_seconds'], 'first_loss': training['first_loss']}
  batch = args.train_batch
  rows.append([f'training step, batch {batch} (samples/s)', f'{batch / training["reference"].median:.2f}',
               f'{batch / training["ours"].median:.2f}',
               f'{training["reference"].median / training["ours"].median:.2f}×', f'{training["compile_seconds"]:.1f}'])
  loss = training['first_loss']
  print(f'First training loss: ours {loss["ours"]:.6f}, reference {loss["reference"]:.6f} '
        f'(relative difference {loss["relative_difference"]:.1e})')
  print(metrics.markdown_table(['measurement', 'reference (PyTorch)', 'ours (JAX)', 'speed-up', 'our compile s'],
                               rows))
  harness.write_json(args.json, results)
  failures = []
  if logits['relative_l2'] > LOGITS_TOLERANCE:
    failures.append(f'logits differ by {logits["relative_l2"]:.2e} (relative L2 > {LOGITS_TOLERANCE})')
  if loss['relative_difference'] > LOSS_TOLERANCE:
    failures.append(f'first training losses differ by {loss["relative_difference"]:.2e} (> {LOSS_TOLERANCE})')
  if failures:
    raise SystemExit('The models disagree: ' + '; '.join(failures))


if __name__ == '__main__':
  host_memory.use_huge_pages()
  main()
