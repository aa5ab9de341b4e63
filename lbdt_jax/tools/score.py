"""Scores a folder of predicted masks as a benchmark's official tool does, whichever method made the masks.

  python -m lbdt_jax.tools.score --dataset mevis|ref_youtube_vos --ground-truth SPLIT_DIR --predictions PRED_DIR
      [--json OUT.json] [--workers N]

MeViS (`tools/eval_mevis.py` of github henghuiding/MeViS): SPLIT_DIR holds `meta_expressions.json` and
`mask_dict.json` (valid_u or train); PRED_DIR holds `<video>/<exp_id>/<frame>.png`, any non-zero pixel foreground
(read as cv2 reads them, in grayscale). For each expression, the target of a frame is the union of its objects'
masks (COCO RLE, null where an object is absent); its J and F are the means over the video's frames of the DAVIS
region similarity and boundary accuracy (`lbdt_jax.metrics`: 1 where prediction and target are both empty); an
expression whose video has no prediction folder scores J = F = 0. The overall J and F are the means over
expressions, J&F = (J + F) / 2.

Refer-YouTube-VOS, for local checks on a split with masks (train): SPLIT_DIR is the release's `train/`
(`Annotations/<video>/<frame>.png`, palette PNGs whose values are object ids), with `meta_expressions.json` in it or
at the release's `meta_expressions/train/`; PRED_DIR holds `<video>/<exp_id>/<frame>.png` (the `Annotations/` folder
of a submission). An expression is scored on the frames that have an annotation PNG, its target the pixels of its
object id, with the same J, F and means as above.

Where the official tool would stop with an error (a missing or unreadable PNG, a PNG of another size than the frame),
this one scores that frame as an empty prediction and counts it; missing video folders, missing expression folders,
and files that belong to no expression are counted too. The summary lists every kind of problem with examples; the
exit status is 1 if there was any, 0 otherwise, so a run that scored a damaged folder cannot pass for a clean one.

Output: the J, F and J&F lines, and with --json {"J", "F", "J&F", "per_expression": {"<video>_<exp_id>": [J, F]},
"problems": {kind: [paths]}}.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import io
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import cv2
import ijson
import numpy as np
import PIL.Image
from etils import epath
from pycocotools import mask as coco_mask

from lbdt_jax import metrics
from lbdt_jax.progress import Progress

PROBLEM_KINDS = {
    'missing_videos': 'video folders missing (their expressions score 0, as the official tool scores them)',
    'missing_expressions': 'expression folders missing (every frame scored as an empty prediction)',
    'missing_frames': 'frames missing (scored as empty predictions)',
    'unreadable_frames': 'PNG files that could not be decoded (scored as empty predictions)',
    'wrong_size_frames': 'PNG files of another size than their frame (scored as empty predictions)',
    'extra_files': 'files in the predictions that belong to no expression of the split (ignored)',
    'expressions_without_frames': 'expressions without an annotated frame (scored 0)',
}
EXAMPLES_SHOWN = 5


class ScoreError(ValueError):
  """A ground-truth file is missing or malformed (named in the message)."""


def _load_json(path: epath.Path, what: str):
  if not path.exists():
    raise ScoreError(f'{what} not found: {path}')
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ScoreError(f'{path} is not valid JSON: {error}') from error


def _stream_json_object(path: epath.Path, what: str) -> dict:
  """A JSON object file parsed as a stream (mask_dict.json is GBs for MeViS train): no copy of its text is held."""
  if not path.exists():
    raise ScoreError(f'{what} not found: {path}')
  try:
    with path.open('rb') as f:
      return dict(ijson.kvitems(f, '', use_float=True))
  except ijson.JSONError as error:
    raise ScoreError(f'{path} is not a JSON object: {error}') from error


@dataclasses.dataclass(frozen=True)
class ScoredExpression:
  """One expression to score: the frames scored, and per frame its target (None: no object there) and size."""
  video: str
  exp_id: str
  frames: tuple[str, ...]
  target: Callable[[int], np.ndarray | None]  # the index in `frames` → boolean mask
  size: Callable[[], tuple[int, int] | None]  # (height, width) of the video's frames, if the ground truth tells

  @property
  def key(self) -> str:
    return f'{self.video}_{self.exp_id}'


def _videos(meta, meta_path: epath.Path) -> Mapping:
  videos = meta.get('videos') if isinstance(meta, Mapping) else None
  if not isinstance(videos, Mapping):
    raise ScoreError(f'{meta_path} has no "videos" object')
  return videos


def _decode_rle(rle, where: str) -> np.ndarray:
  try:
    return coco_mask.decode(rle)
  except (TypeError, ValueError, KeyError) as error:
    raise ScoreError(f'{where}: not a COCO RLE ({error})') from error


def _decode_image(path: epath.Path, flags: int) -> np.ndarray | None:
  return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), flags)


def mevis_expressions(ground_truth: epath.Path) -> list[ScoredExpression]:
  """Every (video, expression) of a MeViS split (meta_expressions.json and mask_dict.json), in file order: every frame
  of the video scored, the target the union of the expression's annotations."""
  meta_path, masks_path = ground_truth / 'meta_expressions.json', ground_truth / 'mask_dict.json'
  videos = _videos(_load_json(meta_path, 'MeViS expressions'), meta_path)
  masks = _stream_json_object(masks_path, 'MeViS masks (only train and valid_u have them)')

  def target(anno_ids, frame_index):
    union = None
    for anno_id in anno_ids:
      rle = masks[anno_id][frame_index]
      if rle:
        mask = _decode_rle(rle, f'mask_dict.json: annotation {anno_id!r}, frame {frame_index}').astype(bool)
        union = mask if union is None else union | mask
    return union

  def size(video, anno_ids, frames):  # from any of the expression's RLEs, else from the video's first JPEG
    for anno_id in anno_ids:
      for rle in masks[anno_id]:
        if rle:
          return tuple(int(x) for x in rle['size'])
    first = ground_truth / 'JPEGImages' / video / f'{frames[0]}.jpg'
    image = _decode_image(first, cv2.IMREAD_GRAYSCALE) if first.exists() else None
    return None if image is None else image.shape

  expressions = []
  for video, record in videos.items():
    try:
      frames = tuple(str(frame) for frame in record['frames'])
      items = [(str(exp_id), tuple(str(anno) for anno in e['anno_id'])) for exp_id, e in record['expressions'].items()]
    except (KeyError, TypeError, AttributeError) as error:
      raise ScoreError(f'{meta_path}: video {video!r} lacks "frames" or an expression\'s "anno_id" '
                       f'({type(error).__name__}: {error})') from error
    for exp_id, anno_ids in items:
      for anno_id in anno_ids:  # every annotation with one entry (RLE or null) per frame of the video
        entries = masks.get(anno_id)
        if not isinstance(entries, list):
          raise ScoreError(f'{masks_path} has no masks for annotation {anno_id!r} (video {video!r}, expression '
                           f'{exp_id!r})')
        if len(entries) != len(frames):
          raise ScoreError(f'{masks_path} has {len(entries)} masks for annotation {anno_id!r}; video {video!r} has '
                           f'{len(frames)} frames')
      expressions.append(ScoredExpression(video, exp_id, frames, functools.partial(target, anno_ids),
                                          functools.partial(size, video, anno_ids, frames)))
  return expressions


def youtube_vos_expressions(ground_truth: epath.Path) -> list[ScoredExpression]:
  """Every (video, expression) of a Refer-YouTube-VOS split with masks (train): the frames of meta_expressions.json
  that have an annotation PNG scored, the target the pixels of the expression's object id."""
  meta_path = ground_truth / 'meta_expressions.json'
  if not meta_path.exists():  # the release keeps it beside the split: meta_expressions/<split>/
    meta_path = ground_truth.parent / 'meta_expressions' / ground_truth.name / 'meta_expressions.json'
  videos = _videos(_load_json(meta_path, 'Refer-YouTube-VOS expressions'), meta_path)

  @functools.lru_cache(maxsize=64)
  def labels(video, frame):
    path = ground_truth / 'Annotations' / video / f'{frame}.png'
    try:
      with PIL.Image.open(io.BytesIO(path.read_bytes())) as image:  # palette indices: the object ids
        return np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
      raise ScoreError(f'{path} is not a readable palette PNG: {error}') from error

  expressions = []
  for video, record in videos.items():
    annotations = ground_truth / 'Annotations' / video
    if not annotations.is_dir():
      raise ScoreError(f'ground truth {annotations} not found (a split with masks: train)')
    annotated = {path.stem for path in annotations.iterdir() if path.suffix == '.png'}
    try:
      frames = tuple(str(frame) for frame in record['frames'] if str(frame) in annotated)
      items = [(str(exp_id), int(e['obj_id'])) for exp_id, e in record['expressions'].items()]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
      raise ScoreError(f'{meta_path}: video {video!r} lacks "frames" or an expression\'s "obj_id" '
                       f'({type(error).__name__}: {error})') from error
    for exp_id, object_id in items:
      target = lambda index, video=video, frames=frames, object_id=object_id: (
          labels(video, frames[index]) == object_id)
      size = lambda video=video, frames=frames: labels(video, frames[0]).shape[:2] if frames else None
      expressions.append(ScoredExpression(video, exp_id, frames, target, size))
  return expressions


def score_expression(expression: ScoredExpression, predictions: epath.Path
                     ) -> tuple[list[float], dict[str, list[str]]]:
  """[J, F] of one expression and the problems met (kind → paths)."""
  problems = collections.defaultdict(list)
  video_dir = predictions / expression.video
  if not video_dir.is_dir():
    return [0.0, 0.0], {'missing_videos': [str(video_dir)]}
  expression_dir = video_dir / expression.exp_id
  if not expression_dir.is_dir():
    problems['missing_expressions'].append(str(expression_dir))
  size = expression.size()
  j_frames, f_frames = [], []
  for frame_index, frame in enumerate(expression.frames):
    target = expression.target(frame_index)
    path = expression_dir / f'{frame}.png'
    prediction = None
    if expression_dir.is_dir():
      if not path.exists():
        problems['missing_frames'].append(str(path))
      else:
        prediction = _decode_image(path, cv2.IMREAD_GRAYSCALE)  # as cv2.imread(path, IMREAD_GRAYSCALE)
        if prediction is None:
          problems['unreadable_frames'].append(str(path))
        elif size is not None and prediction.shape != tuple(size):
          problems['wrong_size_frames'].append(f'{path} ({prediction.shape[0]}x{prediction.shape[1]}, '
                                               f'frame {size[0]}x{size[1]})')
          prediction = None
    shape = size or (prediction.shape if prediction is not None else None)
    if shape is None:
      raise ScoreError(f'cannot tell the frame size of video {expression.video!r}: no mask, JPEG or readable '
                       f'prediction gives it')
    target = np.zeros(shape, bool) if target is None else target
    prediction = np.zeros(shape, bool) if prediction is None else prediction.astype(bool)
    j_frames.append(metrics.jaccard(prediction, target))
    f_frames.append(metrics.boundary_f(prediction, target))
  if not j_frames:
    return [0.0, 0.0], {'expressions_without_frames': [expression.key]}
  return [float(np.mean(j_frames)), float(np.mean(f_frames))], dict(problems)


def _extra_files(predictions: epath.Path, expressions: Sequence[ScoredExpression]) -> list[str]:
  expected = {(e.video, e.exp_id, f'{frame}.png') for e in expressions for frame in e.frames}
  extra, folders = [], [predictions]
  while folders:  # epath globs no '**' (on buckets it would be one request per folder anyway)
    for path in folders.pop().iterdir():
      if path.is_dir():
        folders.append(path)
      elif path.relative_to(predictions).parts not in expected:
        extra.append(str(path))
  return sorted(extra)


def score(dataset: str, ground_truth: str | os.PathLike, predictions: str | os.PathLike, *,
          workers: int = 0) -> dict:
  """{"J", "F", "J&F", "per_expression", "problems"} of a prediction folder (module docstring)."""
  ground_truth, predictions = epath.Path(ground_truth), epath.Path(predictions)
  if dataset not in GROUND_TRUTH:
    raise ValueError(f'--dataset must be one of {sorted(GROUND_TRUTH)}, got {dataset!r}')
  if not predictions.is_dir():
    raise ScoreError(f'prediction folder not found: {predictions}')
  expressions = GROUND_TRUTH[dataset](ground_truth)
  if not expressions:
    raise ScoreError(f'the ground truth in {ground_truth} lists no expressions')
  workers = workers or len(os.sched_getaffinity(0))
  per_expression, problems = {}, collections.defaultdict(list)
  progress = Progress(total=len(expressions), desc='score', unit='expression')
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {e.key: pool.submit(score_expression, e, predictions) for e in expressions}
    for key, future in futures.items():
      per_expression[key], found = future.result()
      for kind, paths in found.items():
        problems[kind].extend(paths)
      progress.update()
      if progress.n % max(1, len(expressions) // 10) == 0:
        progress.log()
  progress.close()
  problems['extra_files'] = _extra_files(predictions, expressions)
  j = float(np.mean([scores[0] for scores in per_expression.values()]))
  f = float(np.mean([scores[1] for scores in per_expression.values()]))
  return {'J': j, 'F': f, 'J&F': (j + f) / 2, 'per_expression': per_expression,
          'problems': {kind: problems[kind] for kind in PROBLEM_KINDS if problems.get(kind)}}


GROUND_TRUTH = {'mevis': mevis_expressions, 'ref_youtube_vos': youtube_vos_expressions}


def print_summary(result: dict) -> int:
  """The figures, every kind of problem with a few examples; the exit status (1 if there were problems)."""
  print(f'J: {result["J"]}')
  print(f'F: {result["F"]}')
  print(f'J&F: {result["J&F"]}')
  print(f'{len(result["per_expression"])} expressions scored')
  for kind, paths in result['problems'].items():
    print(f'{len(paths)} {PROBLEM_KINDS[kind]}, e.g.:', file=sys.stderr)
    for path in paths[:EXAMPLES_SHOWN]:
      print(f'  {path}', file=sys.stderr)
  return 1 if result['problems'] else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0].strip(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True, choices=sorted(GROUND_TRUTH))
  parser.add_argument('--ground-truth', required=True, help='the split directory of the release')
  parser.add_argument('--predictions', required=True, help='folder of <video>/<expression id>/<frame>.png')
  parser.add_argument('--json', help='write the scores here')
  parser.add_argument('--workers', type=int, default=0, help='threads (default: every core this process may use)')
  args = parser.parse_args(argv)
  try:
    result = score(args.dataset, args.ground_truth, args.predictions, workers=args.workers)
  except ScoreError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  if args.json:
    epath.Path(args.json).write_text(json.dumps(result, indent=1))
  return print_summary(result)


if __name__ == '__main__':
  sys.exit(main())
