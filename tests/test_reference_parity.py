"""The parity tool against the official model's fixtures, in float64 and float32 (and bfloat16 logits)."""

import json
import subprocess
import sys

import pytest

from conftest import REFERENCE, ROOT

CASES = ['case_lbdt4_eval', 'case_lbdt4_train_loss']


def run_tool(case, *flags, tmp_path):
  report_path = tmp_path / 'report.json'
  result = subprocess.run(
      [sys.executable, '-m', 'lbdt_jax.tools.check_reference', str(REFERENCE / case), *flags,
       '--json', str(report_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads(report_path.read_text())


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('flags, bound', [
    (('--x64', '--inject-positional-encodings'), 1e-9),
    (('--x64',), 1e-6),
])
def test_float64_parity(case, flags, bound, tmp_path):
  report = run_tool(case, *flags, tmp_path=tmp_path)
  assert report['passed']
  assert report['max'] <= bound
  assert 'pred' in report['tensors'] and 'f_text' in report['tensors'] and 'r5_1_trans' in report['tensors']
  assert set(report['tolerances']) == set(report['tensors'])  # every stored tensor is checked in float64
  if 'train' in case:
    assert {'loss', 'bce', 'dice', 'bn_after/bn1_1.running_var',
            'grad/transformer.stage5.layers.0.cross_attn_img.in_proj_weight__rows16'} <= set(report['tensors'])


@pytest.mark.parametrize('case', CASES)
def test_float32_parity(case, tmp_path):
  report = run_tool(case, tmp_path=tmp_path)
  assert report['passed']
  assert report['tensors']['pred'] <= 1e-4
  assert report['tensors']['pred_f32'] <= 1e-4
  if 'train' in case:
    assert report['tensors']['loss'] <= 1e-3
    assert all(report['tensors'][k] <= 2e-2 for k in report['tensors'] if k.startswith('grad/'))


def test_bfloat16_logits_within_2e_2(tmp_path):
  report = run_tool('case_lbdt4_eval', '--dtype', 'bfloat16', tmp_path=tmp_path)
  assert report['dtype'] == 'bfloat16'
  assert report['tensors']['pred'] <= 2e-2


def test_tool_fails_on_wrong_reference(tmp_path):
  """A perturbed reference output must make the tool exit non-zero."""
  import numpy as np
  import shutil
  case = tmp_path / 'case'
  shutil.copytree(REFERENCE / 'case_lbdt4_eval', case)
  with np.load(case / 'outputs.npz') as data:
    outputs = {k: data[k] for k in data.files}
  outputs['pred'] = outputs['pred'] * 1.001
  np.savez(case / 'outputs.npz', **outputs)
  result = subprocess.run([sys.executable, '-m', 'lbdt_jax.tools.check_reference', str(case), '--x64'],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 1
  assert 'FAIL' in result.stdout and 'pred' in result.stdout.splitlines()[-1]


def test_tool_reports_missing_files(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'lbdt_jax.tools.check_reference', str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and 'manifest.json' in result.stderr


def test_tool_handles_a_batch_of_one(tmp_path):
  """A B=1 case (the reference squeezes pred to [H, W]) derived from sample 0 of the eval case."""
  import numpy as np
  import shutil
  case = tmp_path / 'case_b1'
  case.mkdir()
  manifest = json.loads((REFERENCE / 'case_lbdt4_eval' / 'manifest.json').read_text())
  manifest['model']['batch'] = 1
  (case / 'manifest.json').write_text(json.dumps(manifest))
  with np.load(REFERENCE / 'case_lbdt4_eval' / 'inputs.npz') as data:
    np.savez(case / 'inputs.npz', **{k: data[k][:1] for k in data.files})
  with np.load(REFERENCE / 'case_lbdt4_eval' / 'outputs.npz') as data:
    outputs = {k: (data[k] if k.startswith('pos_') else data[k][:1]) for k in data.files
               if not k.endswith('__stats')}
  outputs['pred'] = outputs['pred'][0]
  np.savez(case / 'outputs.npz', **outputs)
  report = run_tool(case, '--x64', '--inject-positional-encodings', tmp_path=tmp_path)
  assert report['passed'] and report['max'] <= 1e-9 and 'pred' in report['tensors']
  shutil.rmtree(case)
