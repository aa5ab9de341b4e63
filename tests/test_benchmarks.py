"""The benchmarks' machinery (timing method, FLOP convention, memory, the reference comparison's pieces), the
accelerator check, and the language-bridge study's bookkeeping. Timings themselves are never asserted."""

import argparse
import dataclasses
import json
import mmap
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from benchmarks import accelerator_check, compare_reference, flops, harness, throughput
from benchmarks import input_pipeline as input_pipeline_benchmark
from benchmarks import prepared_size
from data_pipeline import store
from data_pipeline.tensorflow_cpu import tf
from experiments import bridge_study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_time_calls_warms_up_cycles_inputs_and_waits_once_per_measurement():
  calls, waits = [], []
  timing = harness.time_calls(lambda i: calls.append(i) or i, repeats=3, calls=4, wait=waits.append)
  assert calls == list(range(13))  # one warm-up, then 3 x 4 calls with increasing indices
  assert waits == [0, 4, 8, 12]  # the warm-up's result, then the last call of each measurement
  assert timing.repeats == 3 and timing.calls == 4
  assert timing.minimum <= timing.median <= timing.maximum and timing.iqr >= 0


@pytest.mark.skipif(sys.platform != 'linux', reason='counts page faults with getrusage')
def test_time_calls_counts_page_faults_of_fresh_memory():
  page = mmap.PAGESIZE

  def touch_a_fresh_mapping(_):
    block = mmap.mmap(-1, 256 * page)
    for offset in range(0, 256 * page, page):
      block[offset] = 1
    block.close()

  timing = harness.time_calls(touch_a_fresh_mapping, repeats=3, wait=lambda _: None)
  assert timing.page_faults >= 256 and timing.system_seconds >= 0


def test_input_sets_exceed_caches_within_bounds():
  assert harness.number_of_input_sets(1) == harness.MAX_INPUT_SETS
  assert harness.number_of_input_sets(harness.CACHE_BUSTING_BYTES) == 2
  assert harness.number_of_input_sets(-(-harness.CACHE_BUSTING_BYTES // 3)) == 3


def test_model_inputs_are_float32_with_zero_padding_words():
  inputs = harness.model_inputs(3, 64)
  assert {k: v.dtype for k, v in inputs.items()} == {'frame': np.float32, 'frame_difference': np.float32,
                                                     'words': np.float32, 'word_mask': np.int32}
  assert np.all(inputs['words'][inputs['word_mask'] == 0] == 0)
  assert np.all(inputs['frame_difference'] >= 0)
  masks = harness.ground_truth(3, 64)
  assert masks.shape == (3, 64, 64) and 0 < masks.mean() < 1


def test_xla_counts_a_multiply_add_as_two_flops():
  """The convention behind the README's FLOP table (MACs = FLOPs / 2)."""
  a, b = jax.ShapeDtypeStruct((3, 40), jnp.float32), jax.ShapeDtypeStruct((40, 7), jnp.float32)
  assert flops.cpu_flops(jnp.matmul, a, b) == 2 * 3 * 40 * 7


def test_compiled_memory_counts_arguments_outputs_and_temporaries():
  x = jnp.zeros((256, 256), jnp.float32)
  compiled = jax.jit(lambda x: jnp.sin(x) @ x).lower(x).compile()
  assert harness.compiled_memory_bytes(compiled) >= 2 * x.nbytes


def test_throughput_inference_reports_rates_and_writes_json_and_plot(tmp_path, monkeypatch):
  monkeypatch.setattr(throughput, 'training_config', lambda layers, size, batch, dtype, remat: _tiny_benchmark_config(
      size, batch, dtype))
  measure_peak = harness.matmul_peak_flops  # small matrices: the peak's arithmetic, not this machine's ceiling
  monkeypatch.setattr(harness, 'matmul_peak_flops', lambda dtype: measure_peak(dtype, sizes=(64, 128), repeats=2))
  throughput.main(['--size', '64', '--batch-sizes', '1,2', '--dtypes', 'float32', '--modes', 'inference',
                   '--repeats', '2', '--json', str(tmp_path / 'out.json'), '--plot', str(tmp_path / 'out.png')])
  result = json.loads((tmp_path / 'out.json').read_text())
  assert [r['batch'] for r in result['results']] == [1, 2]
  assert all(r['items_per_second'] > 0 and r['memory_bytes'] > 0 for r in result['results'])
  # Model FLOP rate = items/s x the forward FLOPs of the benchmarked (tiny) model.
  assert result['forward_flops'] > 0
  # On CPU, utilisation is relative to the fastest measured matmul.
  peak = result['peaks']['float32']
  assert peak['source'] == 'fastest measured square matmul' and peak['flops_per_second'] > 0
  for r in result['results']:
    assert r['model_tflops_per_second'] == pytest.approx(r['items_per_second'] * result['forward_flops'] / 1e12)
    assert r['model_flops_utilisation'] == pytest.approx(r['model_tflops_per_second'] * 1e12 /
                                                         peak['flops_per_second'])
  assert (tmp_path / 'out.png').stat().st_size > 0


def test_matmul_peak_is_the_fastest_call_over_sizes(monkeypatch):
  """The peak is 2 n^3 / (fastest call) at whichever size gives the highest rate, not a median."""
  fastest_seconds = {64: 1e-3, 128: 2e-3}  # 128: 4x the FLOPs in 2x the time, the higher rate
  sizes = []
  real_compile = harness.timed_compile

  def recording_compile(jitted, matrix, other):
    sizes.append(matrix.shape[0])
    return real_compile(jitted, matrix, other)

  def fixed_timing(call, *, repeats, calls=1):
    call(0)
    return harness.Timing(median=1.0, minimum=fastest_seconds[sizes[-1]], maximum=1.0, iqr=0.0, repeats=repeats,
                          calls=calls)

  monkeypatch.setattr(harness, 'timed_compile', recording_compile)
  monkeypatch.setattr(harness, 'time_calls', fixed_timing)
  assert harness.matmul_peak_flops('float32', sizes=(64, 128), repeats=2) == pytest.approx(2 * 128**3 / 2e-3)
  assert sizes == [64, 128]


def _tiny_benchmark_config(size, batch, dtype):
  from conftest import tiny_model_config  # pylint: disable=import-outside-toplevel
  config = throughput.default.get_config('lbdt1')
  config.model.update({**tiny_model_config().to_dict(), 'word_dim': 300, 'dtype': dtype})
  config.input_height = config.input_width = size
  config.train.batch_size = batch
  return config


def test_reference_comparison_explains_a_missing_checkout(tmp_path):
  (tmp_path / 'models').mkdir()
  (tmp_path / 'models' / 'LBDT_4.py').write_text('')
  with pytest.raises(SystemExit, match='lacks models/position_encoding.py, models/modeling/resnet.py'):
    compare_reference.import_reference(str(tmp_path))


def test_reference_loss_in_torch_equals_our_training_loss():
  torch = pytest.importorskip('torch')
  from lbdt_jax.losses import segmentation_loss  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 16, 16)).astype(np.float32) * 3
  target = (rng.random((2, 16, 16)) > 0.7).astype(np.float32)
  theirs = float(compare_reference.reference_loss(torch, torch.from_numpy(logits), torch.from_numpy(target)))
  ours = float(segmentation_loss(jnp.asarray(logits), jnp.asarray(target))[0])
  assert ours == pytest.approx(theirs, rel=1e-6)


def test_reference_inputs_are_nchw_with_a_stage5_image_mask():
  torch = pytest.importorskip('torch')
  inputs = harness.model_inputs(2, 64)
  frame, difference, words, word_mask, image_mask = compare_reference.torch_inputs(torch, inputs, 'cpu')
  np.testing.assert_array_equal(frame.numpy(), inputs['frame'].transpose(0, 3, 1, 2))
  assert difference.shape == (2, 3, 64, 64) and words.dtype == torch.float32
  assert word_mask.dtype == torch.int64 and image_mask.shape == (2, 4) and bool(image_mask.all())


@pytest.mark.heavy(40)
def test_accelerator_check_runs_end_to_end_and_reports_a_failing_step(tmp_path):
  """--quick on the CPU, as a user runs it: one JSON with the device, the versions, every step and the targets.
  The training step is stopped at a 1-second limit: it is reported failed with the reason, the check carries on to
  the last step, and exits with status 1."""
  output = tmp_path / 'check.json'
  result = subprocess.run([sys.executable, '-m', 'benchmarks.accelerator_check', '--platform', 'cpu', '--quick',
                           '--limit', 'training=1', '--json', str(output)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
  report = json.loads(output.read_text())
  assert report['device']['backend'] == 'cpu' and report['device']['device_count'] == 1
  assert report['versions']['jax'] == jax.__version__ and report['quick']
  steps = report['steps']
  assert {name: step['status'] for name, step in steps.items()} == {
      'device': 'passed', 'parity_float32': 'skipped', 'parity_bfloat16': 'skipped', 'inference': 'passed',
      'training': 'failed', 'compare_reference': 'skipped'}
  assert list(steps) == list(accelerator_check.STEPS)
  assert 'time limit of 1 s' in steps['training']['error'] and steps['training']['seconds'] < 10
  assert 'full LBDT-4' in steps['parity_float32']['reason'] and 'no --reference' in steps['compare_reference']['reason']
  inference = steps['inference']['result']
  assert inference['dtype'] == 'bfloat16' and [r['batch'] for r in inference['results']] == [2]
  assert inference['results'][0]['items_per_second'] > 0 and inference['results'][0]['model_flops_utilisation'] > 0
  assert [t['name'] for t in report['targets']] == ['inference_frames_per_second', 'training_mfu',
                                                    'speedup_inference', 'speedup_training']
  assert all(t['passed'] is None for t in report['targets']) and not report['passed']
  assert 'FAILED: training' in result.stdout


def _accelerator_steps(device: str) -> dict:
  """Step records as an H100 run writes them (only the fields the targets read)."""
  vendor = f'dense peak of {device} (vendor)'
  return {
      'device': {'status': 'passed', 'result': {'device': device, 'backend': 'gpu'}},
      'inference': {'status': 'passed', 'result': {'results': [
          {'batch': 8, 'items_per_second': 800.0, 'model_flops_utilisation': 0.06},
          {'batch': 256, 'items_per_second': 4200.0, 'model_flops_utilisation': 0.32}]}},
      'training': {'status': 'passed', 'result': {'peak': {'source': vendor}, 'results': [
          {'batch': 8, 'items_per_second': 300.0, 'model_flops_utilisation': 0.2},
          {'batch': 32, 'items_per_second': 600.0, 'model_flops_utilisation': 0.35}]}},
      # The reference: 400 frames/s at batch 8 (ours in float32 twice that), 80 samples/s in training.
      'compare_reference': {'status': 'passed', 'result': {
          'machine': {'torch_device': 'cuda'},
          'inference': {'8': {'reference': {'median': 0.02}, 'ours': {'median': 0.01}}},
          'training': {'reference': {'median': 0.1}, 'ours': {'median': 0.05}}}}}


def test_accelerator_targets_are_judged_where_they_apply():
  rows = {row['name']: row for row in accelerator_check.targets(
      _accelerator_steps('NVIDIA H100 80GB HBM3'), accelerator_check.FULL, quick=False)}
  assert rows['inference_frames_per_second']['value'] == 4200 and rows['inference_frames_per_second']['passed']
  assert rows['training_mfu']['value'] == 0.35 and rows['training_mfu']['passed'] is False
  # Ours in bfloat16 at the comparison's batch (8) against the reference: 800 / 400 and 300 / 80.
  assert rows['speedup_inference']['value'] == pytest.approx(2.0) and rows['speedup_inference']['passed'] is False
  assert rows['speedup_inference']['float32_speedup'] == pytest.approx(2.0)
  assert rows['speedup_training']['value'] == pytest.approx(3.75) and rows['speedup_training']['passed']
  # The frame rate's target is for H100/H200; a quick run judges nothing.
  steps = _accelerator_steps('NVIDIA A100-SXM4-80GB')
  rows = {row['name']: row for row in accelerator_check.targets(steps, accelerator_check.FULL, quick=False)}
  assert rows['inference_frames_per_second']['passed'] is None and 'H100' in rows['inference_frames_per_second']['note']
  assert rows['training_mfu']['passed'] is False
  assert all(row['passed'] is None for row in accelerator_check.targets(steps, accelerator_check.QUICK, quick=True))
  # Without a comparison on CUDA the speed-ups are not judged.
  steps['compare_reference'] = {'status': 'skipped', 'result': None}
  rows = {row['name']: row for row in accelerator_check.targets(steps, accelerator_check.FULL, quick=False)}
  assert rows['speedup_training']['value'] is None and rows['speedup_training']['passed'] is None


def test_accelerator_parity_step_keeps_every_case_and_fails_beyond_tolerance(monkeypatch):
  from lbdt_jax.tools import check_reference  # pylint: disable=import-outside-toplevel

  def run_case(case_dir, dtype=None):
    error = 3e-2 if case_dir.endswith('train_loss') else 1e-2
    return check_reference.build_report({'pred': np.ones(4)}, lambda base: np.full(4, 1 + error), case=case_dir,
                                        mode='eval', dtype=dtype, inject_positional_encodings=False)

  monkeypatch.setattr(check_reference, 'run_case', run_case)
  plan = dataclasses.replace(accelerator_check.FULL,
                             parity_cases={'bfloat16': ('case_lbdt4_eval', 'case_lbdt4_train_loss')})
  saved = []
  with pytest.raises(accelerator_check.CheckFailed,
                     match=r'bfloat16 parity missed its tolerances: case_lbdt4_train_loss: pred 3\.00e-02 > 0\.02'):
    accelerator_check.parity_step(plan, 'bfloat16', saved.append)
  cases = saved[-1]['cases']
  assert cases['case_lbdt4_eval']['passed'] and cases['case_lbdt4_eval']['tensors']['pred'] == pytest.approx(1e-2)
  assert not cases['case_lbdt4_train_loss']['passed']


def test_accelerator_comparison_is_skipped_without_a_checkout_and_fails_on_a_wrong_one(tmp_path):
  args = argparse.Namespace(reference=None, platform='cpu', out=str(tmp_path / 'step.json'))
  assert accelerator_check.run_step('compare_reference', accelerator_check.QUICK, args) == 0
  assert 'no --reference' in json.loads((tmp_path / 'step.json').read_text())['skipped']
  pytest.importorskip('torch')
  args.reference = str(tmp_path)
  assert accelerator_check.run_step('compare_reference', accelerator_check.QUICK, args) == 1
  assert 'lacks models/LBDT_4.py' in json.loads((tmp_path / 'step.json').read_text())['error']


def test_accelerator_check_refuses_an_unknown_step_limit():
  with pytest.raises(SystemExit):
    accelerator_check.main(['--limit', 'warmup=10'])


def _files_bytes(root) -> int:
  return sum(os.path.getsize(os.path.join(directory, name)) for directory, _, names in os.walk(root) for name in names)


def test_prepared_size_adds_up_to_the_files_of_release_and_store(tmp_path, monkeypatch):
  """Two tiny sizes, the first larger than the generator renders (as 1280x720 is): enlarged to the asked size."""
  monkeypatch.setattr(prepared_size, 'GENERATOR_MAX_SIDE', 64)
  result = prepared_size.main(['--sizes', '96x64,48x48', '--videos', '2', '--frames', '4', '--work-dir',
                               str(tmp_path), '--json', str(tmp_path / 'sizes.json')])
  assert json.loads((tmp_path / 'sizes.json').read_text()) == result
  enlarged, small = result['results']
  assert enlarged['rendered_at'] == [64, 43] and small['rendered_at'] == [48, 48]
  release = tmp_path / 'release_96x64_2x4'
  assert cv2.imread(str(next(release.glob('train/JPEGImages/*/*.jpg')))).shape == (64, 96, 3)
  with Image.open(next(release.glob('train/Annotations/*/*.png'))) as annotation:
    assert annotation.mode == 'P' and annotation.size == (96, 64)
  for row in result['results']:
    name = f'{row["width"]}x{row["height"]}_2x4'
    sizes, stored, previous = row['release'], row['store'], row['previous_layout']
    assert sizes['bytes'] == _files_bytes(tmp_path / f'release_{name}') - os.path.getsize(
        tmp_path / f'release_{name}' / 'synthetic_rvos.json')
    assert sizes['bytes'] == sizes['frames_bytes'] + sizes['annotations_bytes'] + sizes['metadata_bytes']
    assert stored['bytes'] == _files_bytes(tmp_path / f'store_{name}')
    assert stored['bytes'] == stored['frames_bytes'] + stored['masks_bytes'] + stored['index_bytes']
    assert 0 < stored['frames_bytes'] <= sizes['frames_bytes'] and stored['masks_bytes'] > 0
    assert previous['bytes'] == previous['frames_bytes'] + previous['previous_frames_bytes'] + previous['masks_bytes']
    assert previous['masks_bytes'] >= stored['masks_bytes']  # every stored mask is some sample's
    assert row['release_frames'] == 8 and 0 < row['stored_frames'] <= 8 and row['samples'] > 0
    assert row['store_ratio'] == pytest.approx(stored['bytes'] / sizes['bytes'])
    assert row['previous_layout_ratio'] == pytest.approx(previous['bytes'] / sizes['bytes'])
  assert result['passed'] == all(row['store_ratio'] <= prepared_size.TARGET_RATIO for row in result['results'])


def test_input_pipeline_benchmark_measures_both_layouts_and_the_first_batch(tmp_path):
  result = input_pipeline_benchmark.main(
      ['--source-size', '64x48', '--size', '32', '--videos', '2', '--frames', '4', '--batch', '2', '--batches', '2',
       '--repeats', '2', '--threads', '1,2', '--work-dir', str(tmp_path), '--json', str(tmp_path / 'input.json')])
  assert json.loads((tmp_path / 'input.json').read_text()) == result
  assert min(result['load_average'].values()) >= 0
  assert [(row['pipeline'], row['threads']) for row in result['rows']] == [
      ('store', 1), ('previous', 1), ('store', 2), ('previous', 2)]
  for row in result['rows']:
    assert len(row['runs']) == 2
    for key in ('samples_per_second', 'cpu_seconds_per_sample'):
      values = [run[key] for run in row['runs']]
      assert min(values) > 0 and row[key] == {'median': np.median(values), 'min': min(values), 'max': max(values)}
  for target in result['cores_per_accelerator']:
    for pipeline in input_pipeline_benchmark.PIPELINES:
      cpu = np.median([run['cpu_seconds_per_sample'] for row in result['rows'] if row['pipeline'] == pipeline
                       for run in row['runs']])
      assert target['cores'][pipeline] == pytest.approx(target['samples_per_second'] * cpu)
  for kind in ('start', 'resume'):
    for run in result['first_batch'][kind]['runs']:
      assert min(run.values()) > 0
      assert run['total_seconds'] == pytest.approx(run['open_seconds'] + run['iterator_seconds']
                                                   + run['first_batch_seconds'])
  # The previous layout's file holds every sample, each with its frames and mask as the store gives them.
  source = store.open_store(tmp_path / 'store_64x48_2x4').split('train')
  records = list(tf.data.TFRecordDataset(str(tmp_path / 'previous_64x48_2x4_delta6.tfrecord')).as_numpy_iterator())
  assert len(records) == len(source) == result['samples']
  features = tf.train.Example.FromString(records[-1]).features.feature
  example = source.example(len(source) - 1, 6)
  for key in ('frame', 'prev_frame', 'mask'):
    assert features[key].bytes_list.value[0] == example[key]
  assert features['sentence'].bytes_list.value[0].decode() == example['sentence']


def _fake_results(value: float) -> dict:
  split = {'mean_IoU': value, 'P@0.5': value / 2,
           'per_cue': {cue: {'mean_IoU': value + k / 10, 'P@0.5': value / 2} for k, cue in
                       enumerate(bridge_study.CUES)}}
  return {'synthetic_rvos:test': split, 'synthetic_rvos:test_compositional': split, 'pictures': ['a.png']}


def _finish_fake_run(directory: str, value: float, step: int = 50) -> None:
  os.makedirs(os.path.join(directory, 'eval', f'step_{step}'))
  os.makedirs(os.path.join(directory, 'export'))
  with open(os.path.join(directory, 'export', 'manifest.json'), 'w') as f:
    f.write('{}')
  with open(os.path.join(directory, 'eval', f'step_{step}', 'results.json'), 'w') as f:
    json.dump(_fake_results(value), f)


def test_study_reuses_finished_runs_and_reports_mean_and_std(tmp_path, monkeypatch):
  workdir, output = tmp_path / 'runs', tmp_path / 'docs'
  values = {('full', 0): 0.5, ('full', 1): 0.7, ('direct', 0): 0.2, ('direct', 1): 0.4}
  for (name, seed), value in values.items():
    _finish_fake_run(bridge_study.run_directory(str(workdir), bridge_study.VARIANTS_BY_NAME[name], seed), value)
  monkeypatch.setattr(bridge_study, 'prepare_data', lambda args: None)
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: pytest.fail('a finished run was trained again'))
  bridge_study.main(['--variants', 'full,direct', '--seeds', '0,1', '--workers', '2', '--workdir', str(workdir),
                     '--output', str(output)])
  report = (output / 'results.md').read_text()
  # full: mean IoU 60 ± 14.1 (sample std of 50 and 70); motion adds 0.1 -> 70.0 mean.
  assert '| full | 60.0 ± 14.1 | 60.0 ± 14.1 | 70.0 ± 14.1 | 80.0 ± 14.1 |' in report
  assert '| direct | 30.0 ± 14.1 |' in report
  assert ('| variant | test all | test appearance | test motion | test both | test_compositional all |'
          in report)
  assert '\n|---|' + '---:|' * 8 + '\n| full |' in report  # numbers right-aligned
  assert ('| variant | options | what it is | paper (A2D, LBDT-1: overall / mean IoU) |\n|---|---|---|---|\n'
          '| full | `lbdt1` |') in report
  assert 'Tab. 5 row 1' in report and 'python -m experiments.bridge_study --variants full,direct' in report
  runs = json.loads((output / 'runs.json').read_text())['runs']
  assert [(r['variant'], r['seed']) for r in runs] == [('full', 0), ('full', 1), ('direct', 0), ('direct', 1)]
  assert (output / 'bridge_study.png').stat().st_size > 0


def test_study_stops_on_a_failed_run_naming_its_log(tmp_path, monkeypatch):
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(a, 1))
  args = type('Args', (), {'workdir': str(tmp_path), 'config': 'configs/study.py', 'data_dir': '', 'set': []})
  with pytest.raises(RuntimeError, match=r'Run direct seed 3 failed \(exit code 1\); see .*direct/seed3/log.txt'):
    bridge_study.train_one(bridge_study.VARIANTS_BY_NAME['direct'], 3, args)


def test_study_rejects_unknown_variants():
  with pytest.raises(SystemExit):
    bridge_study.main(['--variants', 'full,nonsense'])
