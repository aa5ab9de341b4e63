"""Evaluation metrics for referring video object segmentation, in numpy (no jax, no tensorflow).

Four families, all working on saved predictions so that evaluation runs anywhere:

* The paper's protocol exactly as the official LBDT code computes it ("compatible mode",
  `compatible_sample_scores`): threshold at model resolution, upsample prediction and ground truth with PyTorch's
  legacy nearest rule, then IoU with +1e-6 smoothing and a region F-score ("Contour").
* The same aggregates at original resolution (`sample_scores`, our default): boolean prediction and ground truth of
  the original size. Both feed `ReferringAccumulator` (P@0.5..0.9, mAP over IoU 0.50:0.05:0.95, overall and mean
  IoU).
* COCO mask AP with pycocotools, as MTTR/ReferFormer report on A2D/J-HMDB Sentences (`CocoMaskAccumulator`).
* DAVIS 2017 region J and boundary F as the davis2017-evaluation toolkit defines them (`jaccard`, `boundary_f`,
  `DavisAccumulator` for the Ref-DAVIS averaging).

`format_table` renders results in the paper's table layout, through `markdown_table`, the one markdown-table
writer of the project (the benchmarks and experiments use it too).
"""

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

# The official code's smoothing constant (utils/metrics.py SMOOTH).
SMOOTH = 1e-6
# P@t columns of the paper's A2D/J-HMDB tables; eval.py compares with >=.
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# eval.py's mAP thresholds are k / 100 for k = 50, 55, ..., 95 (bit-identical to the decimal literals).
MAP_THRESHOLDS = tuple(k / 100.0 for k in range(50, 96, 5))
# Names of COCOeval.stats, in its order.
COCO_STAT_NAMES = ('mAP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR@1', 'AR@10', 'AR@100', 'AR_small',
                   'AR_medium', 'AR_large')


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
  """Both arrays must be 2-D (H, W) and of the same shape."""
  if pred.ndim != 2 or gt.ndim != 2 or pred.shape != gt.shape:
    raise ValueError(f'prediction and ground truth must be 2-D arrays of the same shape, got prediction {pred.shape} '
                     f'and ground truth {gt.shape}')


def _as_masks(pred, gt) -> tuple[np.ndarray, np.ndarray]:
  pred, gt = np.asarray(pred), np.asarray(gt)
  _check_pair(pred, gt)
  return pred.astype(bool), gt.astype(bool)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch legacy nearest resize.


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of each output index under F.interpolate(mode='nearest') (PyTorch's legacy rule).

  src = min(floor(float32(dst) * float32(in / out)), in - 1), all in float32, with torch's shortcuts out == in
  (identity) and out == 2 * in (dst >> 1). This is not the exact rational floor(dst * in / out): float32 rounding of
  the scale moves some indices by one, which the paper's numbers depend on.
  """
  in_size, out_size = int(in_size), int(out_size)
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f'sizes must be positive, got in_size={in_size} and out_size={out_size}')
  if out_size == in_size:
    return np.arange(out_size, dtype=np.int64)
  if out_size == 2 * in_size:
    return np.arange(out_size, dtype=np.int64) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(source, in_size - 1)


def torch_nearest_resize(array, size: Sequence[int]) -> np.ndarray:
  """Resizes the last two axes of `array` to `size` = (height, width) like F.interpolate(mode='nearest')."""
  array = np.asarray(array)
  if array.ndim < 2:
    raise ValueError(f'need an array with at least 2 dimensions, got shape {array.shape}')
  height, width = (int(s) for s in size)
  rows = torch_nearest_indices(array.shape[-2], height)
  cols = torch_nearest_indices(array.shape[-1], width)
  return array[..., rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------------------------------------
# Per-sample IoU / region F (the paper's protocol and the original-resolution one).


def _region_f(precision: float, recall: float) -> float:
  # Same operation order as the reference (2 * Prec * Rec / (Prec + Rec)) so results agree to the bit.
  return 2 * precision * recall / (precision + recall)


def compatible_sample_scores(probabilities, gt, orig_size: Sequence[int], thresh: float = 0.5, *,
                             numpy1_contour: bool = False) -> dict[str, float]:
  """The official utils/metrics.py calculate_JF for one sample: {'IArea', 'OArea', 'IoU', 'Contour'}.

  probabilities: (H, W) foreground probabilities at model resolution (cast to float32 like the model output);
  gt: (H, W) 0/1 mask at model resolution; orig_size: (height, width) to evaluate at. The prediction is p > thresh
  (strict); both maps are upsampled with `torch_nearest_resize`. IoU = (IArea + 1e-6) / (OArea + 1e-6).

  "Contour" is a region F-score 2PR/(P+R) with P = (IArea + 1e-6) / (|pred| + 1e-6) and
  R = (IArea + 1e-6) / (|gt| + 1e-6), not a boundary measure. By default it reproduces what the reference gives under
  numpy >= 2 (NEP 50): |gt| is a float32 sum and |gt| + 1e-6 is rounded to float32, which moves R by up to ~1e-9.
  numpy1_contour=True gives the numpy 1.x (all float64) value of the reference's era instead.
  """
  probabilities = np.asarray(probabilities, dtype=np.float32)
  gt = np.asarray(gt, dtype=np.float32)
  _check_pair(probabilities, gt)
  size = tuple(int(s) for s in orig_size)
  pred = torch_nearest_resize(probabilities > np.float32(thresh), size)
  gt = torch_nearest_resize(gt, size)
  gt_foreground = gt == 1.0
  intersection = float(np.count_nonzero(pred & gt_foreground))
  union = float(np.count_nonzero(pred | gt_foreground))
  iou = (intersection + SMOOTH) / (union + SMOOTH)
  precision = (intersection + SMOOTH) / (float(np.count_nonzero(pred)) + SMOOTH)
  gt_total = gt.sum(dtype=np.float32)  # the reference sums the float32 map itself, not a count
  if numpy1_contour:
    recall_denominator = float(gt_total) + SMOOTH
  else:
    recall_denominator = float(np.float32(gt_total) + np.float32(SMOOTH))
  recall = (intersection + SMOOTH) / recall_denominator
  return {'IArea': intersection, 'OArea': union, 'IoU': iou, 'Contour': _region_f(precision, recall)}


def sample_scores(pred, gt) -> dict[str, float]:
  """IArea, OArea, IoU and region F ('Contour') of a boolean prediction against a boolean ground truth of the same
  (original) size.

  Conventions, chosen to stay comparable with the paper's protocol: IoU carries the same +1e-6 smoothing,
  (IArea + 1e-6) / (OArea + 1e-6), so an empty prediction on an empty ground truth scores IoU 1 and any other case
  with an empty side scores IoU ~0 (1e-6 / (OArea + 1e-6)). Contour uses the same smoothed precision and recall, all
  in float64 (both empty: 1).
  """
  pred, gt = _as_masks(pred, gt)
  intersection = float(np.count_nonzero(pred & gt))
  union = float(np.count_nonzero(pred | gt))
  precision = (intersection + SMOOTH) / (float(np.count_nonzero(pred)) + SMOOTH)
  recall = (intersection + SMOOTH) / (float(np.count_nonzero(gt)) + SMOOTH)
  return {'IArea': intersection, 'OArea': union, 'IoU': (intersection + SMOOTH) / (union + SMOOTH),
          'Contour': _region_f(precision, recall)}


class ReferringAccumulator:
  """Collects per-sample scores and computes the A2D/J-HMDB Sentences aggregates of the official eval.py.

  Accepts either source: `add_compatible` (paper protocol, model resolution + original size), `add_masks` (boolean
  masks at original resolution) or `add` with a dict from `compatible_sample_scores` / `sample_scores`.
  """

  def __init__(self):
    self.intersections: list[float] = []
    self.unions: list[float] = []
    self.ious: list[float] = []
    self.contours: list[float] = []

  def __len__(self) -> int:
    return len(self.ious)

  def add(self, scores: Mapping[str, float]) -> Mapping[str, float]:
    """Adds one sample's {'IArea', 'OArea', 'IoU', 'Contour'} and returns it."""
    self.intersections.append(float(scores['IArea']))
    self.unions.append(float(scores['OArea']))
    self.ious.append(float(scores['IoU']))
    self.contours.append(float(scores['Contour']))
    return scores

  def add_compatible(self, probabilities, gt, orig_size: Sequence[int], thresh: float = 0.5, *,
                     numpy1_contour: bool = False) -> dict[str, float]:
    """Scores one sample with `compatible_sample_scores`, adds and returns it."""
    return self.add(compatible_sample_scores(probabilities, gt, orig_size, thresh, numpy1_contour=numpy1_contour))

  def add_masks(self, pred, gt) -> dict[str, float]:
    """Scores one sample with `sample_scores` (original resolution), adds and returns it."""
    return self.add(sample_scores(pred, gt))

  def precision_at(self, threshold: float) -> float:
    """Fraction of samples with IoU >= threshold."""
    if not self.ious:
      raise ValueError('no samples were added')
    ious = np.asarray(self.ious)
    return float(np.count_nonzero(ious >= threshold) / ious.size)

  def result(self) -> dict[str, float]:
    """P@0.5..P@0.9, mAP (mean of P@t over t = 0.50:0.05:0.95), overall_IoU = ΣIArea / ΣOArea, mean_IoU,
    mean_F (mean Contour), a2d_score = (overall_IoU + mean_IoU) / 2 (what eval.evaluate returns) and num_samples.

    overall_IoU is 1.0 if every sample has an empty union (eval.py would divide by zero there).
    """
    if not self.ious:
      raise ValueError('no samples were added')
    total_intersection = float(np.sum(self.intersections))
    total_union = float(np.sum(self.unions))
    overall = total_intersection / total_union if total_union > 0 else 1.0
    mean_iou = float(np.mean(np.asarray(self.ious)))
    results = {f'P@{t}': self.precision_at(t) for t in PRECISION_THRESHOLDS}
    results['mAP'] = float(np.mean(np.asarray([self.precision_at(t) for t in MAP_THRESHOLDS])))
    results.update(overall_IoU=overall, mean_IoU=mean_iou, mean_F=float(np.mean(np.asarray(self.contours))),
                   a2d_score=(overall + mean_iou) / 2, num_samples=float(len(self.ious)))
    return results


# ---------------------------------------------------------------------------------------------------------------------
# COCO mask AP (MTTR / ReferFormer protocol on A2D and J-HMDB Sentences).


def mask_score(probabilities, thresh: float = 0.5) -> float:
  """Confidence of a single predicted mask: the mean probability over the pixels with p > thresh (0.0 if none).

  Computed at model resolution, before the nearest upsampling to the original size.
  """
  probabilities = np.asarray(probabilities, dtype=np.float32)
  foreground = probabilities[probabilities > np.float32(thresh)]
  return float(foreground.astype(np.float64).mean()) if foreground.size else 0.0


def _encode(mask: np.ndarray) -> dict:
  from pycocotools import mask as mask_utils
  return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


class CocoMaskAccumulator:
  """COCO 'segm' AP/AR over (expression, frame) samples, computed with pycocotools' COCOeval.

  Every sample becomes one COCO image holding one ground-truth instance (category 1, iscrowd 0, area = mask area) and
  at most one detection (the predicted mask with its score). Masks are kept as RLE, so memory stays small.

  Scores: MTTR submits every query's mask scored by its "is referred" probability. LBDT predicts a single mask, so
  there is no such score; `add_probabilities` uses `mask_score` (mean foreground probability inside the predicted
  mask) and `add` takes whatever score is given (default 1.0). Scores order detections across images, so they change
  AP; with equal scores pycocotools keeps insertion order (stable sort).

  Empty masks: an empty prediction is not submitted (it could only be an unmatched detection ranked last, which does
  not change AP, and pycocotools' loadRes fails on an empty list); its ground truth counts as missed. A sample with an
  empty ground truth adds an image without instances, so a non-empty prediction there is a false positive (A2D
  evaluation only lists frames where the referred instance appears, so this does not arise there).
  """

  def __init__(self):
    self._images: list[dict] = []
    self._ground_truths: list[dict] = []
    self._detections: list[dict] = []

  def __len__(self) -> int:
    return len(self._images)

  def add(self, pred, gt, score: float = 1.0) -> None:
    """Adds one sample: boolean (H, W) prediction and ground truth at original resolution."""
    from pycocotools import mask as mask_utils
    pred, gt = _as_masks(pred, gt)
    image_id = len(self._images) + 1
    height, width = gt.shape
    self._images.append({'id': image_id, 'height': height, 'width': width})
    if gt.any():
      rle = _encode(gt)
      self._ground_truths.append({'id': len(self._ground_truths) + 1, 'image_id': image_id, 'category_id': 1,
                                  'segmentation': rle, 'area': float(mask_utils.area(rle)),
                                  'bbox': mask_utils.toBbox(rle).tolist(), 'iscrowd': 0})
    if pred.any():
      self._detections.append({'image_id': image_id, 'category_id': 1, 'segmentation': _encode(pred),
                               'score': float(score)})

  def add_probabilities(self, probabilities, gt, orig_size: Sequence[int] | None = None,
                        thresh: float = 0.5) -> None:
    """Adds a sample from model-resolution probabilities: p > thresh, resized to orig_size (the paper's legacy
    nearest rule; None keeps the size, gt must then match), scored with `mask_score`."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    pred = probabilities > np.float32(thresh)
    if orig_size is not None:
      pred = torch_nearest_resize(pred, orig_size)
    self.add(pred, gt, mask_score(probabilities, thresh))

  def result(self, verbose: bool = False) -> dict[str, float]:
    """pycocotools' 12 summary numbers under COCO_STAT_NAMES: mAP (AP@[.5:.95]), AP50, AP75, AP_small/medium/large,
    AR@1/10/100 (AR@100 is the overall AR) and AR_small/medium/large. -1.0 where pycocotools finds no ground truth
    (e.g. AP_small without small objects). verbose=True lets pycocotools print its usual summary."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not self._images:
      raise ValueError('no samples were added')
    base = {'images': list(self._images), 'categories': [{'id': 1, 'name': 'referred'}]}
    printing = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with printing:
      coco_gt = COCO()
      coco_gt.dataset = {**base, 'annotations': [dict(a) for a in self._ground_truths]}
      coco_gt.createIndex()
      if self._detections:
        # loadRes adds id/area/bbox to the dicts it gets, so hand it copies.
        coco_dt = coco_gt.loadRes([dict(d) for d in self._detections])
      else:
        coco_dt = COCO()
        coco_dt.dataset = {**base, 'annotations': []}
        coco_dt.createIndex()
      evaluator = COCOeval(coco_gt, coco_dt, 'segm')
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def coco_mask_ap(predictions: Iterable, ground_truths: Iterable, scores: Iterable[float] | None = None, *,
                 verbose: bool = False) -> dict[str, float]:
  """COCO mask AP/AR of boolean predictions against boolean ground truths (one instance per sample); see
  `CocoMaskAccumulator`. scores default to 1.0."""
  accumulator = CocoMaskAccumulator()
  predictions, ground_truths = list(predictions), list(ground_truths)
  if len(predictions) != len(ground_truths):
    raise ValueError(f'{len(predictions)} predictions for {len(ground_truths)} ground truths')
  scores = [1.0] * len(predictions) if scores is None else list(scores)
  if len(scores) != len(predictions):
    raise ValueError(f'{len(scores)} scores for {len(predictions)} predictions')
  for pred, gt, score in zip(predictions, ground_truths, scores):
    accumulator.add(pred, gt, score)
  return accumulator.result(verbose)


# ---------------------------------------------------------------------------------------------------------------------
# DAVIS 2017 region similarity J and boundary accuracy F.


def jaccard(pred, gt) -> float:
  """DAVIS region similarity J = |pred ∩ gt| / |pred ∪ gt| of (H, W) masks; 1.0 when both are empty."""
  pred, gt = _as_masks(pred, gt)
  union = np.count_nonzero(pred | gt)
  if union == 0:
    return 1.0
  return float(np.count_nonzero(pred & gt) / union)


def boundary_map(mask) -> np.ndarray:
  """One-pixel boundaries of an (H, W) mask as the toolkit's seg2bmap draws them (at the input size).

  A pixel is on the boundary if it differs from its right, bottom or bottom-right neighbour (outside the image counts
  as background), except that the last row only looks right, the last column only looks down and the bottom-right
  pixel is never a boundary pixel.
  """
  mask = np.asarray(mask).astype(bool)
  if mask.ndim != 2:
    raise ValueError(f'need a 2-D mask, got shape {mask.shape}')
  padded = np.pad(mask, ((0, 1), (0, 1)))
  right, down, diagonal = padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
  boundary = (mask ^ right) | (mask ^ down) | (mask ^ diagonal)
  # The toolkit overwrites the last row, then the last column, then the corner; the order matters for 1-pixel maps.
  boundary[-1, :] = mask[-1, :] ^ right[-1, :]
  boundary[:, -1] = mask[:, -1] ^ down[:, -1]
  boundary[-1, -1] = False
  return boundary


def disk(radius: float) -> np.ndarray:
  """skimage.morphology.disk(radius) as uint8: the grid arange(-r, r + 1) squared, keeping x² + y² <= r²."""
  offsets = np.arange(-radius, radius + 1)
  return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_pixels(shape: Sequence[int], bound_th: float = 0.008) -> float:
  """Tolerance radius of the boundary match: bound_th pixels if bound_th >= 1, else ceil(bound_th * diagonal)."""
  if bound_th >= 1:
    return bound_th
  height, width = shape
  return float(np.ceil(bound_th * math.sqrt(height * height + width * width)))


def boundary_f(pred, gt, bound_th: float = 0.008) -> float:
  """DAVIS boundary accuracy F of (H, W) masks (the toolkit's db_eval_boundary / f_measure).

  Boundaries (`boundary_map`) are matched within `boundary_pixels(shape, bound_th)` pixels (cv2.dilate with `disk`);
  precision = matched prediction boundary / prediction boundary, recall = matched gt boundary / gt boundary. Without
  prediction boundary: precision 1, recall 0; without gt boundary: precision 0, recall 1; without either: both 1.
  F = 2PR / (P + R), or 0 when P + R = 0.
  """
  pred, gt = _as_masks(pred, gt)
  kernel = disk(boundary_pixels(pred.shape, bound_th))
  pred_boundary, gt_boundary = boundary_map(pred), boundary_map(gt)
  pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
  gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
  n_pred, n_gt = np.count_nonzero(pred_boundary), np.count_nonzero(gt_boundary)
  if n_pred == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  elif n_pred == 0:
    precision, recall = 1.0, 0.0
  elif n_gt == 0:
    precision, recall = 0.0, 1.0
  else:
    precision = np.count_nonzero(pred_boundary & gt_dilated) / float(n_pred)
    recall = np.count_nonzero(gt_boundary & pred_dilated) / float(n_gt)
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


class DavisAccumulator:
  """Per-frame J and F of Ref-DAVIS17, averaged the way the DAVIS 2017 toolkit averages object sequences.

  A sequence is one (expression set, video/expression) pair: its J and F are the means over its frames (the toolkit's
  per-object "M"); a set's J and F are the means over its sequences, J&F = (J + F) / 2; the reported numbers are the
  means over the sets (Ref-DAVIS17 reports the average over its four expression sets: two annotators × first-frame /
  full-video expressions). Which frames to score (all of them, or the toolkit's semi-supervised 1:-1 cut) is the
  caller's choice.
  """

  def __init__(self, bound_th: float = 0.008):
    self.bound_th = bound_th
    self._frames: dict[tuple[str, str], list[tuple[float, float]]] = {}

  def add(self, pred, gt, sequence: str, expression_set: str = 'default') -> tuple[float, float]:
    """Scores one frame (boolean (H, W) masks), records and returns (J, F)."""
    j, f = jaccard(pred, gt), boundary_f(pred, gt, self.bound_th)
    return self.add_scores(j, f, sequence, expression_set)

  def add_scores(self, j: float, f: float, sequence: str, expression_set: str = 'default') -> tuple[float, float]:
    """Records an already computed frame score."""
    self._frames.setdefault((expression_set, sequence), []).append((float(j), float(f)))
    return float(j), float(f)

  def sequences(self) -> dict[tuple[str, str], dict[str, float]]:
    """{(expression_set, sequence): {'J', 'F', 'J&F', 'frames'}}, means over frames."""
    results = {}
    for key, frames in self._frames.items():
      j, f = (float(np.mean(v)) for v in zip(*frames))
      results[key] = {'J': j, 'F': f, 'J&F': (j + f) / 2, 'frames': float(len(frames))}
    return results

  def sets(self) -> dict[str, dict[str, float]]:
    """{expression_set: {'J', 'F', 'J&F', 'sequences'}}, means over the set's sequences."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for (expression_set, _), scores in self.sequences().items():
      grouped.setdefault(expression_set, []).append(scores)
    results = {}
    for expression_set, rows in grouped.items():
      j = float(np.mean([r['J'] for r in rows]))
      f = float(np.mean([r['F'] for r in rows]))
      results[expression_set] = {'J': j, 'F': f, 'J&F': (j + f) / 2, 'sequences': float(len(rows))}
    return results

  def result(self) -> dict[str, float]:
    """{'J', 'F', 'J&F'}: means over the expression sets of the per-set numbers."""
    sets = self.sets()
    if not sets:
      raise ValueError('no frames were added')
    j = float(np.mean([s['J'] for s in sets.values()]))
    f = float(np.mean([s['F'] for s in sets.values()]))
    return {'J': j, 'F': f, 'J&F': (j + f) / 2}


# ---------------------------------------------------------------------------------------------------------------------
# Tables.

# (column header, result key) in the paper's layout.
TABLE_LAYOUTS = {
    'a2d': (('P@0.5', 'P@0.5'), ('P@0.6', 'P@0.6'), ('P@0.7', 'P@0.7'), ('P@0.8', 'P@0.8'), ('P@0.9', 'P@0.9'),
            ('Overall IoU', 'overall_IoU'), ('Mean IoU', 'mean_IoU'), ('mAP', 'mAP')),
    'davis': (('J', 'J'), ('F', 'F'), ('J&F', 'J&F')),
}


# Delimiter-row cell per column alignment letter (GitHub-flavoured markdown).
_ALIGNMENT_RULES = {'-': '---', 'l': ':---', 'r': '---:', 'c': ':---:'}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str = '') -> str:
  """A markdown table: the header row, the delimiter row and one line per row, cells written with `str`.

  `align` has one letter per column: 'l' left, 'r' right, 'c' centred, '-' unaligned; columns beyond it are
  unaligned ('-r' = an unaligned first column and a right-aligned second). A '|' inside a cell is escaped.
  """
  if len(align) > len(header) or set(align) - set(_ALIGNMENT_RULES):
    raise ValueError(f'align must have at most one letter of {"".join(_ALIGNMENT_RULES)!r} per column '
                     f'({len(header)}), got {align!r}')

  def line(cells) -> str:
    return '| ' + ' | '.join(str(cell).replace('|', r'\|') for cell in cells) + ' |'

  lines = [line(header), '|' + ''.join(_ALIGNMENT_RULES[a] + '|' for a in align.ljust(len(header), '-'))]
  for row in rows:
    row = list(row)
    if len(row) != len(header):
      raise ValueError(f'a row of {len(row)} cells in a table of {len(header)} columns: {row}')
    lines.append(line(row))
  return '\n'.join(lines)


def format_table(rows: Mapping[str, Mapping[str, float]], layout: str = 'a2d', *, percent: bool = True,
                 digits: int = 1, label: str = 'Method') -> str:
  """Markdown table with one row per entry of `rows` ({row label: result dict}).

  layout 'a2d' (A2D / J-HMDB Sentences): P@0.5 .. P@0.9 | Overall IoU, Mean IoU | mAP, read from the keys of
  `ReferringAccumulator.result` (put a COCO mAP under 'mAP' to show that instead); 'davis': J, F, J&F. Values are
  shown ×100 when percent (as in the paper), right-aligned; missing values as '-'.
  """
  if layout not in TABLE_LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}, expected one of {sorted(TABLE_LAYOUTS)}')
  columns = TABLE_LAYOUTS[layout]

  def cell(value) -> str:
    return '-' if value is None else f'{value * 100 if percent else value:.{digits}f}'

  return markdown_table([label] + [header for header, _ in columns],
                        [[name] + [cell(results.get(key)) for _, key in columns] for name, results in rows.items()],
                        align='-' + 'r' * len(columns))
