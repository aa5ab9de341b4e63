"""The parity tool: its report logic on small arrays, and one float32 and one float64 run of the full model per
fixture case of the official model (tests/fixtures/reference/)."""

import json

import jax
import numpy as np
import pytest

from conftest import REFERENCE
from lbdt_jax.models.positional_encoding import sinusoid_1d, sinusoid_2d
from lbdt_jax.tools import check_reference as tool

CASES = ['case_lbdt4_eval', 'case_lbdt4_train_loss']


# The report logic, on small arrays.

def test_relative_error_is_the_l2_norm_of_the_difference_over_the_reference_norm():
  assert tool.relative_error([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1 / 5)  # |(0, 1)| / |(3, 4)|
  assert tool.relative_error([[1.0, 2.0], [2.0, 4.0]], [[1.0, 2.0], [2.0, 4.0]]) == 0.0
  assert tool.relative_error([0.5, 0.0], [0.0, 0.0]) == 0.5  # a zero reference: the absolute error


def test_singleton_axes_squeezed_by_the_reference_are_matched():
  """At B=1 the reference squeezes pred to [H, W]; it keeps sent's singleton axis ([B, 1, C])."""
  reference = np.array([[1.0, 2.0], [3.0, 4.0]])
  assert tool.relative_error(reference[None] + [[[0.0, 0.0], [0.0, 1.0]]], reference) == pytest.approx(
      1 / np.sqrt(30))
  assert tool.relative_error(np.array([[1.0, 2.0]]), np.array([[[1.0, 2.0]]])) == 0.0
  with pytest.raises(ValueError, match=r'shape \(2, 3\) != reference \(3, 2\)'):
    tool.relative_error(np.zeros((2, 3)), np.ones((3, 2)))


def test_strided_subsets_and_statistics_are_compared_with_the_full_tensor():
  full = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
  assert tool.compare('x__ch2', full[:, ::2], full) == 0.0  # every 2nd channel (axis 1)
  assert tool.compare('x__rows3', full[::3], full) == 0.0  # every 3rd row (axis 0)
  np.testing.assert_array_equal(tool.full_statistics([[1.0, -2.0], [3.0, 0.0]]), [2.0, 14.0, 6.0, -2.0, 3.0])
  stats = np.array([2.0, 14.0, 6.0, -2.0, 3.0])  # sum, sum of squares, sum of |x|, min, max
  assert tool.compare('x__stats', stats, np.array([[1.0, -2.0], [3.0, 0.0]])) == 0.0
  shifted = np.array([[1.0, -2.0], [3.0, 1.0]])  # statistics (3, 15, 7, -2, 3): difference (1, 1, 1, 0, 0)
  assert tool.compare('x__stats', stats, shifted) == pytest.approx(np.sqrt(3) / np.linalg.norm(stats))
  assert tool.compare('x__ch2', full[:, ::2] * 1.5, full) == pytest.approx(1 / 3)


def test_tolerances_per_mode_and_dtype():
  errors = dict.fromkeys(['pred', 'pred_f32', 'f_text', 'loss', 'bce', 'dice', 'loss_f32', 'grad/w__rows16',
                          'bn_after/bn1.running_var'], 0.0)
  assert tool.tolerances(errors, 'train', 'float64', injected=True) == dict.fromkeys(errors, 1e-9)
  assert tool.tolerances(errors, 'eval', 'float64', injected=False) == dict.fromkeys(errors, 1e-6)
  assert tool.tolerances(errors, 'eval', 'float32', injected=False) == {'pred': 1e-4, 'pred_f32': 1e-4}
  assert tool.tolerances(errors, 'train', 'float32', injected=False) == {
      'pred': 1e-4, 'pred_f32': 1e-4, 'loss': 1e-3, 'bce': 1e-3, 'dice': 1e-3, 'loss_f32': 1e-3,
      'grad/w__rows16': 2e-2}
  assert tool.tolerances(errors, 'train', 'bfloat16', injected=False) == {'pred': 2e-2, 'pred_f32': 2e-2}


def small_case():
  """Stored outputs of a made-up train case and our tensors for them."""
  rng = np.random.default_rng(0)
  ours = {'pred': rng.standard_normal((2, 4, 4)), 'loss': np.float64(0.75), 'grad/w': rng.standard_normal((4, 3)),
          'f_text': rng.standard_normal((2, 3, 5))}
  outputs = {'pred': ours['pred'].copy(), 'pred_f32': ours['pred'] * (1 + 1e-7), 'loss': np.float64(0.75),
             'grad/w__rows2': ours['grad/w'][::2] * (1 + 1e-3), 'f_text__stats': tool.full_statistics(ours['f_text']),
             'bn_after/bn1.num_batches_tracked': np.int64(1), 'r9_1': np.zeros(3)}

  def value_of(base):
    if base.endswith('.num_batches_tracked'):
      return 'Flax BatchNorm keeps no step counter'
    return ours.get(base.replace('_f32', ''), 'no counterpart in this configuration')
  return outputs, value_of


def test_report_checks_every_tensor_in_float64_and_skips_what_has_no_counterpart():
  outputs, value_of = small_case()
  report = tool.build_report(outputs, value_of, case='c', mode='train', dtype='float64',
                             inject_positional_encodings=True)
  assert report['tensors'] == pytest.approx({'pred': 0.0, 'loss': 0.0, 'grad/w__rows2': 1e-3 / (1 + 1e-3),
                                             'f_text__stats': 0.0})
  assert set(report['skipped']) == {'pred_f32', 'bn_after/bn1.num_batches_tracked', 'r9_1'}
  assert 'float32 run' in report['skipped']['pred_f32'] and 'step counter' in report['skipped'][
      'bn_after/bn1.num_batches_tracked']
  assert report['failures'] == {'grad/w__rows2': report['tensors']['grad/w__rows2']} and not report['passed']
  assert report['max'] == report['max_checked'] == report['tensors']['grad/w__rows2']

  float32 = tool.build_report(outputs, value_of, case='c', mode='train', dtype='float32',
                              inject_positional_encodings=False)
  assert float32['passed'] and float32['tensors']['pred_f32'] == pytest.approx(1e-7)  # the f32 reference too
  assert float32['tolerances']['grad/w__rows2'] == 2e-2 and 'f_text__stats' not in float32['tolerances']


def test_a_wrong_reference_fails_the_report_and_the_exit_status(monkeypatch, capsys, tmp_path):
  outputs, value_of = small_case()
  run = lambda **kwargs: tool.build_report(outputs, value_of, case='c', mode='train', **kwargs)
  monkeypatch.setattr(tool, 'run_case', lambda case_dir, *, x64, inject_positional_encodings, dtype: run(
      dtype='float64' if x64 else dtype or 'float32', inject_positional_encodings=inject_positional_encodings))
  assert tool.main(['case', '--json', str(tmp_path / 'report.json')]) == 0
  assert capsys.readouterr().out.splitlines()[-1].endswith('-> PASS')
  assert json.loads((tmp_path / 'report.json').read_text())['passed']

  outputs['pred'] = outputs['pred'] * 1.001  # a perturbed reference output
  assert tool.main(['case']) == 1
  lines = capsys.readouterr().out.splitlines()
  assert any(line.startswith('pred ') and 'FAIL (> 0.0001)' in line for line in lines)
  assert lines[-1].startswith('float32: max 9.990e-04') and lines[-1].endswith('-> FAIL: pred')
  with pytest.raises(SystemExit) as exit_status:
    tool.main(['case', '--x64', '--dtype', 'bfloat16'])
  assert exit_status.value.code == 2


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='manifest.json'):
    tool.main([str(tmp_path)])


def test_a_wrong_weight_rule_or_checksum_is_refused():
  manifest = json.loads((REFERENCE / 'case_lbdt4_eval' / 'manifest.json').read_text())
  entries = [next(e for e in manifest['entries'] if e['name'] == name)
             for name in ('conv1_1.weight', 'bn1_1.num_batches_tracked')]
  state_dict = tool.regenerate_state_dict({**manifest, 'entries': entries})
  assert state_dict['conv1_1.weight'].dtype == np.float32 and not state_dict['bn1_1.num_batches_tracked'].any()
  with pytest.raises(ValueError, match='Unknown weight rule'):
    tool.regenerate_state_dict({**manifest, 'rule': 'another-rule'})
  bad = [{**entries[0], 'checksum_numpy_sum_float64': entries[0]['checksum_numpy_sum_float64'] + 1e-3}]
  with pytest.raises(ValueError, match=r'checksums: \[.conv1_1.weight.\]'):
    tool.regenerate_state_dict({**manifest, 'entries': bad})


@pytest.mark.parametrize('case', CASES)
def test_our_positional_encodings_match_the_stored_ones(case):
  """What the float64 runs below inject: ours differ from the reference's float32 values by rounding only."""
  with np.load(REFERENCE / case / 'outputs.npz') as outputs:
    assert tool.relative_error(sinusoid_1d(*outputs['pos_txt'].shape), outputs['pos_txt']) <= tool.TOLERANCE_X64
    for stage in (4, 5):
      stored = outputs[f'pos_img_stage{stage}']
      ours = np.transpose(sinusoid_2d(stored.shape[1], stored.shape[2], stored.shape[0]), (2, 0, 1))
      assert tool.relative_error(ours, stored) <= tool.TOLERANCE_X64


# The full model against the official one: one float64 and one float32 run per case.

@pytest.mark.heavy(90)
@pytest.mark.optimized  # float64 arithmetic dominates: LLVM's passes pay for themselves
@pytest.mark.parametrize('case', CASES)
def test_float64_parity(case):
  with jax.enable_x64(True):
    report = tool.run_case(str(REFERENCE / case), x64=True, inject_positional_encodings=True)
  assert report['passed'] and report['max'] <= tool.TOLERANCE_X64_INJECTED
  assert 'pred' in report['tensors'] and 'f_text' in report['tensors'] and 'r5_1_trans' in report['tensors']
  assert set(report['tolerances']) == set(report['tensors'])  # every stored tensor is checked in float64
  assert 'pred_f32' in report['skipped']
  if 'train' in case:
    assert {'loss', 'bce', 'dice', 'bn_after/bn1_1.running_var',
            'grad/transformer.stage5.layers.0.cross_attn_img.in_proj_weight__rows16'} <= set(report['tensors'])


@pytest.mark.heavy(60)
@pytest.mark.parametrize('case', CASES)
def test_float32_parity(case):
  report = tool.run_case(str(REFERENCE / case))
  assert report['passed'] and report['dtype'] == 'float32'
  assert report['tensors']['pred'] <= 1e-4
  assert report['tensors']['pred_f32'] <= 1e-4
  if 'train' in case:
    assert report['tensors']['loss'] <= 1e-3
    assert all(report['tensors'][k] <= 2e-2 for k in report['tensors'] if k.startswith('grad/'))
