"""Metrics: the paper's protocol against the reference fixture, original-resolution aggregates, COCO mask AP and the
DAVIS J / F measures on hand-counted masks."""

import json

import numpy as np
import pytest

from conftest import REFERENCE
from lbdt_jax import metrics


@pytest.fixture(scope='module')
def reference():
  return json.loads((REFERENCE / 'metrics.json').read_text())


def square(top, left, size, shape=(40, 40)):
  mask = np.zeros(shape, bool)
  mask[top:top + size, left:left + size] = True
  return mask


# ---------------------------------------------------------------------------------------------------------------------
# The paper's protocol (compatible mode) against metrics.json.


def test_every_reference_item_is_reproduced(reference):
  assert reference['thresh'] == 0.5 and len(reference['items']) == 40
  for index, item in enumerate(reference['items']):
    expected = item['ref']
    scores = metrics.compatible_sample_scores(item['pred'], item['gt'], item['orig_size'], reference['thresh'])
    assert scores['IArea'] == expected['IArea'] and scores['OArea'] == expected['OArea'], index
    assert scores['IoU'] == pytest.approx(expected['IoU'], rel=1e-12, abs=0), index
    assert scores['Contour'] == pytest.approx(expected['Contour_numpy2'], rel=1e-12, abs=0), index
    numpy1 = metrics.compatible_sample_scores(item['pred'], item['gt'], item['orig_size'], numpy1_contour=True)
    assert numpy1['Contour'] == pytest.approx(expected['Contour'], rel=1e-12, abs=0), index


def test_reference_aggregates_are_reproduced(reference):
  accumulator = metrics.ReferringAccumulator()
  numpy1 = metrics.ReferringAccumulator()
  for item in reference['items']:
    accumulator.add_compatible(item['pred'], item['gt'], item['orig_size'])
    numpy1.add_compatible(item['pred'], item['gt'], item['orig_size'], numpy1_contour=True)
  expected = reference['aggregate']
  result = accumulator.result()
  for t in metrics.PRECISION_THRESHOLDS:
    assert result[f'P@{t}'] == expected[f'P@{t}']
  for t, value in expected['mAP_per_threshold'].items():
    assert accumulator.precision_at(float(t)) == value
  assert result['mAP'] == pytest.approx(expected['mAP_0_5_to_0_95'], rel=1e-12)
  assert result['overall_IoU'] == pytest.approx(expected['overall_IoU'], rel=1e-12)
  assert result['mean_IoU'] == pytest.approx(expected['mean_IoU'], rel=1e-12)
  assert result['a2d_score'] == pytest.approx(expected['a2d_val_score_overall_plus_mean_over_2'], rel=1e-12)
  assert result['a2d_score'] == pytest.approx(reference['checks']['eval_evaluate_return_value'], rel=1e-12)
  assert result['mean_F'] == pytest.approx(expected['mean_F_contour_numpy2'], rel=1e-12)
  assert numpy1.result()['mean_F'] == pytest.approx(expected['mean_F_contour'], rel=1e-12)
  assert result['num_samples'] == 40


def test_threshold_is_strict_and_applied_in_float32():
  gt = np.ones((2, 2))
  at_threshold = metrics.compatible_sample_scores(np.full((2, 2), 0.5), gt, (2, 2))
  assert at_threshold['IArea'] == 0 and at_threshold['OArea'] == 4
  # 0.5 + 1e-12 is 0.5 in float32, like the model output the reference thresholds.
  assert metrics.compatible_sample_scores(np.full((2, 2), 0.5 + 1e-12), gt, (2, 2))['IArea'] == 0
  assert metrics.compatible_sample_scores(np.full((2, 2), 0.500001), gt, (4, 6))['IArea'] == 24


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch legacy nearest resize.


def exact_indices(in_size, out_size):
  return np.minimum(np.arange(out_size) * in_size // out_size, in_size - 1)


def test_nearest_indices_shortcuts_and_float32_rounding():
  np.testing.assert_array_equal(metrics.torch_nearest_indices(7, 7), np.arange(7))
  np.testing.assert_array_equal(metrics.torch_nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(metrics.torch_nearest_indices(3, 2), [0, 1])
  np.testing.assert_array_equal(metrics.torch_nearest_indices(1, 4), [0, 0, 0, 0])
  # 37 * 24 / 74 is exactly 12, but float32(24 / 74) rounds down, so torch reads row 11.
  assert metrics.torch_nearest_indices(24, 74)[37] == 11 and exact_indices(24, 74)[37] == 12
  with pytest.raises(ValueError):
    metrics.torch_nearest_indices(0, 3)


def test_nearest_resize_on_the_fixture_sizes(reference):
  in_height, in_width = reference['map_shape']
  differing = 0
  for item in reference['items']:
    height, width = item['orig_size']
    rows, cols = metrics.torch_nearest_indices(in_height, height), metrics.torch_nearest_indices(in_width, width)
    differing += not (np.array_equal(rows, exact_indices(in_height, height))
                      and np.array_equal(cols, exact_indices(in_width, width)))
    resized = metrics.torch_nearest_resize(np.asarray(item['gt']), (height, width))
    assert resized.shape == (height, width)
    np.testing.assert_array_equal(resized, np.asarray(item['gt'])[rows][:, cols])
  assert differing == reference['checks']['items_where_exact_rational_nearest_index_differs_from_torch']
  # Leading axes are carried along.
  stack = np.arange(2 * 24 * 32).reshape(2, 24, 32)
  np.testing.assert_array_equal(metrics.torch_nearest_resize(stack, (74, 82))[1],
                                metrics.torch_nearest_resize(stack[1], (74, 82)))


def test_nearest_resize_matches_torch(reference):
  torch = pytest.importorskip('torch')
  functional = torch.nn.functional
  sizes = [tuple(item['orig_size']) for item in reference['items']] + [(1080, 1919), (5, 7), (2000, 1)]
  source = torch.arange(24 * 32, dtype=torch.float32).reshape(1, 1, 24, 32)
  for size in sizes:
    expected = functional.interpolate(source, size=size, mode='nearest')[0, 0].numpy()
    np.testing.assert_array_equal(metrics.torch_nearest_resize(source[0, 0].numpy(), size), expected)


# ---------------------------------------------------------------------------------------------------------------------
# Original-resolution aggregates.


def test_sample_scores_by_hand():
  pred, gt = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
  pred[:2, :2] = True  # 4 pixels
  gt[:2, :3] = True  # 6 pixels, 4 shared
  scores = metrics.sample_scores(pred, gt)
  assert scores['IArea'] == 4 and scores['OArea'] == 6
  assert scores['IoU'] == pytest.approx(4 / 6, rel=1e-6)
  assert scores['Contour'] == pytest.approx(2 * 1 * (4 / 6) / (1 + 4 / 6), rel=1e-6)
  empty = np.zeros((4, 4), bool)
  assert metrics.sample_scores(empty, empty) == {'IArea': 0, 'OArea': 0, 'IoU': 1.0, 'Contour': 1.0}
  assert metrics.sample_scores(empty, gt)['IoU'] == pytest.approx(1e-6 / 6, rel=1e-6)
  assert metrics.sample_scores(pred, empty)['IoU'] < 1e-6


def test_original_resolution_accumulator_by_hand():
  accumulator = metrics.ReferringAccumulator()
  gt = square(0, 0, 10)  # 100 pixels
  accumulator.add_masks(gt, gt)  # IoU 1
  accumulator.add_masks(square(0, 0, 10) & (np.arange(40) < 7)[None], gt)  # 70 / 100
  accumulator.add_masks(square(0, 0, 10) & (np.arange(40) < 5)[None], gt)  # 50 / 100
  accumulator.add_masks(np.zeros((40, 40), bool), np.zeros((40, 40), bool))  # both empty: IoU 1, no area
  result = accumulator.result()
  assert len(accumulator) == 4 and result['num_samples'] == 4
  assert result['overall_IoU'] == pytest.approx(220 / 300)
  assert result['mean_IoU'] == pytest.approx((1 + 0.7 + 0.5 + 1) / 4, rel=1e-6)
  assert (result['P@0.5'], result['P@0.6'], result['P@0.7'], result['P@0.8'], result['P@0.9']) == (
      1.0, 0.75, 0.75, 0.5, 0.5)
  # P@t over 0.50:0.05:0.95 counts 4, 3, 3, 3, 3, 2, 2, 2, 2, 2 samples.
  assert result['mAP'] == pytest.approx(26 / 40)
  assert result['a2d_score'] == pytest.approx((result['overall_IoU'] + result['mean_IoU']) / 2)


def test_accumulator_accepts_either_source_and_edge_cases():
  accumulator = metrics.ReferringAccumulator()
  with pytest.raises(ValueError, match='no samples'):
    accumulator.result()
  probabilities = np.zeros((4, 4), np.float32)
  probabilities[:2, :2] = 0.9
  gt_model = probabilities > 0.5
  compatible = accumulator.add_compatible(probabilities, gt_model, (8, 8))
  assert compatible['IArea'] == 16 and compatible['IoU'] == 1.0
  original = accumulator.add_masks(metrics.torch_nearest_resize(gt_model, (8, 8)), np.zeros((8, 8), bool))
  assert original['IArea'] == 0 and original['OArea'] == 16
  assert accumulator.result()['overall_IoU'] == 0.5
  empty = metrics.ReferringAccumulator()
  empty.add(metrics.sample_scores(np.zeros((3, 3)), np.zeros((3, 3))))
  assert empty.result()['overall_IoU'] == 1.0 and empty.result()['mean_IoU'] == 1.0


def test_shapes_are_validated():
  with pytest.raises(ValueError, match=r'\(4, 4\).*\(4, 5\)'):
    metrics.sample_scores(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match=r'\(4, 4\).*\(4, 5\)'):
    metrics.jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match=r'\(4, 4\).*\(4, 5\)'):
    metrics.boundary_f(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match=r'\(1, 4, 4\)'):
    metrics.jaccard(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
  with pytest.raises(ValueError, match=r'\(24, 32\).*\(24, 31\)'):
    metrics.compatible_sample_scores(np.zeros((24, 32)), np.zeros((24, 31)), (48, 64))


# ---------------------------------------------------------------------------------------------------------------------
# COCO mask AP.


def test_coco_perfect_predictions():
  masks = [square(5, 5, 40, (64, 64)), square(0, 0, 4, (16, 16)), square(0, 0, 100, (128, 128))]
  result = metrics.coco_mask_ap(masks, masks)
  assert set(result) == set(metrics.COCO_STAT_NAMES)
  for name in ('mAP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR@1', 'AR@100'):
    assert result[name] == pytest.approx(1.0), name


def test_coco_partial_overlap_and_area_ranges():
  gt = square(10, 10, 40, (64, 64))  # 1600 pixels: a medium object
  pred = gt & (np.arange(64) < 34)[None]  # 40 x 24 inside it: IoU 0.6
  assert metrics.jaccard(pred, gt) == pytest.approx(0.6)
  result = metrics.coco_mask_ap([pred], [gt])
  # Matched at IoU thresholds 0.50, 0.55 and 0.60 only: 3 of 10.
  assert result['mAP'] == pytest.approx(0.3)
  assert result['AP50'] == pytest.approx(1.0) and result['AP75'] == 0.0
  assert result['AP_medium'] == pytest.approx(0.3) and result['AR@100'] == pytest.approx(0.3)
  assert result['AP_small'] == -1.0 and result['AP_large'] == -1.0


def test_coco_scores_rank_detections_across_images():
  gt = square(10, 10, 40, (64, 64))
  false_positive = square(0, 0, 30, (64, 64))  # 900 pixels, on a frame without the object
  empty = np.zeros((64, 64), bool)
  # The false positive ranked first halves precision at full recall; ranked last it costs nothing.
  assert metrics.coco_mask_ap([false_positive, gt], [empty, gt], [0.9, 0.1])['mAP'] == pytest.approx(0.5)
  last = metrics.coco_mask_ap([false_positive, gt], [empty, gt], [0.1, 0.9])
  assert last['mAP'] == pytest.approx(1.0)
  with pytest.raises(ValueError):
    metrics.coco_mask_ap([gt], [gt], [0.5, 0.5])


def test_coco_empty_predictions(capsys):
  gts = [square(10, 10, 40, (64, 64)), square(0, 0, 5, (64, 64))]
  result = metrics.coco_mask_ap([np.zeros((64, 64), bool)] * 2, gts)
  assert result['mAP'] == 0.0 and result['AR@100'] == 0.0
  # One of two found: recall 1/2 at precision 1, i.e. 51 of COCO's 101 recall points (0, 0.01, ..., 0.5).
  half = metrics.coco_mask_ap([gts[0], np.zeros((64, 64), bool)], gts)
  assert half['AR@100'] == pytest.approx(0.5) and half['mAP'] == pytest.approx(51 / 101)
  assert capsys.readouterr().out == ''


def test_coco_from_probabilities_uses_mean_foreground_probability():
  probabilities = np.array([[0.2, 0.6], [0.8, 0.5]], np.float32)
  assert metrics.mask_score(probabilities) == pytest.approx(0.7)
  assert metrics.mask_score(np.zeros((2, 2))) == 0.0
  # A confident false positive on a frame without the object outranks a less confident hit: AP 1/2; swap the
  # confidences and the false positive costs nothing.
  for hit, miss, expected in ((0.6, 0.9, 0.5), (0.9, 0.6, 1.0)):
    accumulator = metrics.CocoMaskAccumulator()
    for confidence, gt in ((hit, square(4, 4, 8, (16, 16))), (miss, np.zeros((16, 16), bool))):
      probabilities = np.zeros((8, 8), np.float32)
      probabilities[2:6, 2:6] = confidence  # upsampled 2x onto the 16x16 frame: the 8x8 square at (4, 4)
      accumulator.add_probabilities(probabilities, gt, (16, 16))
    assert len(accumulator) == 2 and accumulator.result()['mAP'] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------------------
# DAVIS J and F.


def test_identical_and_empty_masks():
  mask = square(10, 10, 10)
  empty = np.zeros((40, 40), bool)
  assert metrics.jaccard(mask, mask) == 1.0 and metrics.boundary_f(mask, mask) == 1.0
  assert metrics.jaccard(empty, empty) == 1.0 and metrics.boundary_f(empty, empty) == 1.0
  # No predicted boundary: precision 1, recall 0; no ground-truth boundary: precision 0, recall 1. F = 0 either way.
  assert metrics.jaccard(empty, mask) == 0.0 and metrics.boundary_f(empty, mask) == 0.0
  assert metrics.jaccard(mask, empty) == 0.0 and metrics.boundary_f(mask, empty) == 0.0
  assert isinstance(metrics.jaccard(mask, mask), float) and isinstance(metrics.boundary_f(mask, empty), float)


def test_boundary_map_of_a_square():
  # Boundary pixels are the top-left corners of mixed 2x2 blocks: (n + 1)^2 - (n - 1)^2 = 4n of them.
  boundary = metrics.boundary_map(square(10, 10, 10))
  assert boundary.sum() == 40
  assert boundary[9, 9:20].all() and boundary[19, 9:20].all() and boundary[10:19, 9].all() and boundary[10:19, 19].all()
  # A full mask has no boundary at all in the toolkit's scheme (the image border is not a boundary).
  full = np.ones((6, 7), bool)
  assert metrics.boundary_map(full).sum() == 0
  assert metrics.boundary_f(full, np.zeros_like(full)) == 1.0 and metrics.jaccard(full, np.zeros_like(full)) == 0.0
  # Single-row masks: the last row only compares with the right neighbour.
  np.testing.assert_array_equal(metrics.boundary_map(np.array([[0, 1, 1, 0]])), [[1, 0, 1, 0]])


def test_one_pixel_shift():
  gt, pred = square(10, 10, 10), square(10, 11, 10)
  assert metrics.jaccard(pred, gt) == pytest.approx(90 / 110)
  # Within 1 pixel every boundary pixel has a partner.
  assert metrics.boundary_f(pred, gt, bound_th=1) == 1.0
  assert metrics.boundary_f(pred, gt) == 1.0  # default 0.008 * 56.6 -> ceil -> 1 pixel
  # Exact matching (bound_pix 0): only the top and bottom runs overlap, 10 + 10 of 40 on each side.
  assert metrics.boundary_f(pred, gt, bound_th=0) == pytest.approx(0.5)


def test_two_pixel_shift_counted_by_hand():
  gt, pred = square(10, 10, 10), square(10, 12, 10)
  assert metrics.jaccard(pred, gt) == pytest.approx(80 / 120)
  # bound_pix 1: of the 40 boundary pixels of each square, the top and bottom runs match 10 + 10, and the two side
  # pixels next to the other square's top/bottom run match too: 22 / 40 on both sides.
  assert metrics.boundary_f(pred, gt, bound_th=1) == pytest.approx(22 / 40)
  assert metrics.boundary_f(pred, gt) == pytest.approx(22 / 40)
  # bound_pix 2 covers the 2-pixel shift entirely.
  assert metrics.boundary_f(pred, gt, bound_th=2) == 1.0


def test_bound_th_units():
  assert metrics.boundary_pixels((480, 854), 0.008) == 8.0  # ceil(0.008 * 979.6)
  assert metrics.boundary_pixels((40, 40), 0.008) == 1.0
  assert metrics.boundary_pixels((40, 40), 3) == 3
  assert metrics.boundary_pixels((40, 40), 0) == 0.0
  np.testing.assert_array_equal(metrics.disk(0), [[1]])
  np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
  assert metrics.disk(2).sum() == 13
  # 0.05 of a 40x40 diagonal is 2.83 -> 3 pixels, enough for the 2-pixel shift.
  assert metrics.boundary_f(square(10, 12, 10), square(10, 10, 10), bound_th=0.05) == 1.0


def test_davis_accumulator_averages_sequences_then_sets():
  accumulator = metrics.DavisAccumulator()
  accumulator.add_scores(1.0, 1.0, 'seq1', 'A')
  accumulator.add_scores(0.5, 1.0, 'seq1', 'A')
  accumulator.add_scores(0.5, 0.5, 'seq2', 'A')
  for _ in range(5):  # more frames do not give a sequence more weight
    accumulator.add_scores(0.0, 0.0, 'seq1', 'B')
  sequences = accumulator.sequences()
  assert sequences[('A', 'seq1')] == {'J': 0.75, 'F': 1.0, 'J&F': 0.875, 'frames': 2}
  sets = accumulator.sets()
  assert sets['A']['J'] == 0.625 and sets['A']['F'] == 0.75 and sets['A']['J&F'] == 0.6875
  assert sets['B']['J&F'] == 0.0
  assert accumulator.result() == {'J': 0.3125, 'F': 0.375, 'J&F': 0.34375}
  frames = metrics.DavisAccumulator(bound_th=1)
  assert frames.add(square(10, 12, 10), square(10, 10, 10), 'video') == (pytest.approx(2 / 3), pytest.approx(0.55))
  with pytest.raises(ValueError, match='no frames'):
    metrics.DavisAccumulator().result()


# ---------------------------------------------------------------------------------------------------------------------
# Tables.


def test_markdown_table_writes_header_alignment_and_rows():
  assert metrics.markdown_table(['a', 'b', 'c'], [[1, 'x', 2.5], ['—', 'y', None]]) == (
      '| a | b | c |\n|---|---|---|\n| 1 | x | 2.5 |\n| — | y | None |')
  assert metrics.markdown_table(['name', 'left', 'right', 'centre'], [('n', 1, 2, 3)], align='-lrc') == (
      '| name | left | right | centre |\n|---|:---|---:|:---:|\n| n | 1 | 2 | 3 |')
  assert metrics.markdown_table(['only', 'rest'], [], align='r') == '| only | rest |\n|---:|---|'
  assert metrics.markdown_table(['a|b'], [['x|y']]) == '| a\\|b |\n|---|\n| x\\|y |'
  with pytest.raises(ValueError, match='a row of 1 cells in a table of 2 columns'):
    metrics.markdown_table(['a', 'b'], [['x']])
  with pytest.raises(ValueError, match='align'):
    metrics.markdown_table(['a'], [], align='rr')
  with pytest.raises(ValueError, match='align'):
    metrics.markdown_table(['a'], [], align='x')


def test_format_table_layouts():
  a2d = {'P@0.5': 0.65, 'P@0.6': 0.55, 'P@0.7': 0.5, 'P@0.8': 0.375, 'P@0.9': 0.175, 'overall_IoU': 0.6492,
         'mean_IoU': 0.5847, 'mAP': 0.42}
  table = metrics.format_table({'LBDT-4': a2d, 'partial': {'P@0.5': 0.5}}).splitlines()
  assert table[0] == '| Method | P@0.5 | P@0.6 | P@0.7 | P@0.8 | P@0.9 | Overall IoU | Mean IoU | mAP |'
  assert table[1] == '|---|---:|---:|---:|---:|---:|---:|---:|---:|'
  assert table[2] == '| LBDT-4 | 65.0 | 55.0 | 50.0 | 37.5 | 17.5 | 64.9 | 58.5 | 42.0 |'
  assert table[3] == '| partial | 50.0 | - | - | - | - | - | - | - |'
  davis = metrics.format_table({'ours': {'J': 0.5, 'F': 0.6, 'J&F': 0.55}}, 'davis', percent=False, digits=2)
  assert davis.splitlines()[0] == '| Method | J | F | J&F |'
  assert davis.splitlines()[2] == '| ours | 0.50 | 0.60 | 0.55 |'
  assert metrics.format_table({}, 'davis', label='step 3') == '| step 3 | J | F | J&F |\n|---|---:|---:|---:|'
  with pytest.raises(ValueError):
    metrics.format_table({}, 'refcoco')
