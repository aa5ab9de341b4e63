"""Readers of the benchmarks' official release layouts, on one base class.

A reader lists the referring expressions of a split, and for each the annotated frames of its video; the base class
turns every (expression, target frame) into an example: the encoded target frame, the frame δ frames earlier, the
referred object's mask, the sentence and the ids. A data set adds only its file layout and annotation parsing:

  A2DSentencesReader       Release/ + text_annotations/ (the A2D Sentences release; clips decoded from mp4)
  A2DListReader            images/ + masks/ + train.txt/val.txt (the layout the official LBDT code reads)
  JHMDBSentencesReader     Rename_Images/ + puppet_mask/ + jhmdb_annotation.txt
  YouTubeVOSReader         {train,valid}/JPEGImages + Annotations + meta_expressions/ (also the synthetic set)
  DAVISReader              DAVIS/ (2017, 480p) + davis_text_annotations/
  MevisReader              {train,valid_u,valid}/JPEGImages + meta_expressions.json + mask_dict.json (COCO RLE)

`examples` goes video by video: `expressions_by_video`, then `video_targets` per video (the expressions' target
frames, after the checks and skips below); the frame store (data_pipeline/store.py) walks the same two steps.

Previous frame: of the frames the video has on disk, the one nearest to `frame_index − δ` among those before the
target (the first frame's previous frame is itself). With every frame on disk this is `max(first, t − δ)`;
YouTube-VOS's train release keeps every 5th frame, so there δ = 6 picks the frame 5 earlier, as the reference does.

Problems with the input raise `DataError` naming the file and the example. Two kinds of annotation are skipped,
counted and reported instead (`SkipReport`): expressions whose sentence is empty and expressions whose object never
appears in the masks; and A2D's known bad row (instance id "1 (copy)") and the videos listed in
`a2d_missed_videos.txt`.
"""

import abc
import collections
import csv
import dataclasses
import functools
import io
import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import cv2
import h5py
import ijson
import numpy as np
import PIL.Image
import scipy.io
from etils import epath
from pycocotools import mask as coco_mask
from data_pipeline.tensorflow_cpu import tf
from lbdt_jax import paths

JPEG_QUALITY = 95  # frames decoded from A2D's mp4 clips are stored as JPEG, as the ffmpeg frame dumps are


class DataError(ValueError):
  """Bad or missing input files; the message names the file and, where known, the example."""


@dataclasses.dataclass(frozen=True)
class Expression:
  """One referring expression. `frames`, when given, lists the target frames (list layouts fix them)."""
  video_id: str
  object_id: int
  expression_id: int
  sentence: str
  origin: str  # where it was read, for messages: "file line N"
  extras: Mapping[str, str] = dataclasses.field(default_factory=dict)
  frames: tuple[int, ...] | None = None


@dataclasses.dataclass
class SkipReport:
  """Annotations left out on purpose, by reason, with a few examples of each."""
  EXAMPLES = 5  # kept per reason
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def add(self, reason: str, what: str) -> None:
    self.counts[reason] += 1
    self.examples.setdefault(reason, [])
    if len(self.examples[reason]) < self.EXAMPLES:
      self.examples[reason].append(what)

  def as_dict(self) -> dict:
    return {reason: {'count': count, 'examples': self.examples[reason]} for reason, count in self.counts.items()}


def previous_frame(available: Sequence[int], frame: int, delta: int) -> int:
  """The available frame nearest to frame − delta among those before `frame` (ties: the earlier one)."""
  earlier = [n for n in available if n < frame]
  if not earlier:
    return frame
  return min(earlier, key=lambda n: (abs(n - (frame - delta)), n))


def example_key(expression: Expression, frame: int) -> str:
  """The unique key of an example: video/frame/object/expression."""
  return f'{expression.video_id}/{frame}/{expression.object_id}/{expression.expression_id}'


def _read_bytes(path: epath.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as error:
    raise DataError(f'cannot read {path}: {error.strerror or error}') from None


def _image_size(path: str, encoded: bytes) -> tuple[int, int]:
  """(height, width) of an encoded image, decoding it fully with the decoder the input pipeline uses."""
  try:
    shape = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape
  except (tf.errors.InvalidArgumentError, ValueError) as error:
    raise DataError(f'{path} is not a readable image: {str(error).splitlines()[0]}') from None
  return int(shape[0]), int(shape[1])


def _numbered_files(directory: epath.Path, extension: str) -> dict[int, epath.Path]:
  """{frame number: path} of the files NNNNN<extension> in a directory."""
  if not directory.is_dir():
    raise DataError(f'missing directory {directory}')
  return {int(path.name[:-len(extension)]): path for path in directory.iterdir()
          if path.name.endswith(extension) and path.name[:-len(extension)].isdigit()}


class Video(abc.ABC):
  """The frames of one video: numbers available on disk and their encoded bytes."""

  @property
  @abc.abstractmethod
  def frame_numbers(self) -> list[int]:
    ...

  @abc.abstractmethod
  def encoded_frame(self, number: int) -> tuple[bytes, tuple[int, int]]:
    """(encoded image, (height, width)); raises DataError for a missing or unreadable frame."""


class ImageFolderVideo(Video):
  """Frames stored as NNNNN.jpg / NNNNN.png files in one directory."""

  def __init__(self, directory: epath.Path, extension: str):
    self._files = _numbered_files(directory, extension)
    self._directory = directory
    self._sizes = {}  # frames recur across expressions: decode each once

  @property
  def frame_numbers(self) -> list[int]:
    return sorted(self._files)

  def encoded_frame(self, number):
    path = self._files.get(number)
    if path is None:
      raise DataError(f'missing frame {number} in {self._directory}')
    encoded = _read_bytes(path)
    if number not in self._sizes:
      self._sizes[number] = _image_size(path, encoded)
    return encoded, self._sizes[number]


class Mp4Video(Video):
  """A video file decoded with OpenCV; frames are numbered from 1, as `ffmpeg -i clip.mp4 %05d.jpg` numbers them."""

  def __init__(self, path: epath.Path):
    if not path.exists():
      raise DataError(f'missing video {path}')
    frames = []
    with paths.local_copy(path) as local:  # OpenCV reads local files only
      capture = cv2.VideoCapture(local)
      while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
          break
        frames.append(frame)
      capture.release()
    if not frames:
      raise DataError(f'{path} has no decodable frames (corrupt or unsupported video)')
    self._frames = frames
    self._path = path
    self._encoded = {}

  @property
  def frame_numbers(self) -> list[int]:
    return list(range(1, len(self._frames) + 1))

  def encoded_frame(self, number):
    if not 1 <= number <= len(self._frames):
      raise DataError(f'{self._path} has {len(self._frames)} frames, frame {number} was asked for')
    if number not in self._encoded:
      frame = self._frames[number - 1]
      encoded = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
      self._encoded[number] = encoded, frame.shape[:2]
    return self._encoded[number]


class Masks(abc.ABC):
  """The ground-truth masks of one video."""

  @property
  @abc.abstractmethod
  def annotated_frames(self) -> list[int]:
    ...

  @abc.abstractmethod
  def object_ids(self, frame: int) -> set[int]:
    """Objects with a non-empty mask in the frame."""

  @abc.abstractmethod
  def mask(self, frame: int, object_id: int) -> np.ndarray:
    """uint8 0/1 mask [H, W] of the object (all zero where it is absent)."""


class PaletteMasks(Masks):
  """YouTube-VOS / DAVIS annotations: one palette PNG per frame, pixel value = object id."""

  def __init__(self, directory: epath.Path):
    self._files = _numbered_files(directory, '.png')
    self._cache, self._ids = {}, {}

  @property
  def annotated_frames(self):
    return sorted(self._files)

  def _labels(self, frame: int) -> np.ndarray:
    if frame in self._cache:
      return self._cache[frame]
    path = self._files[frame]
    try:
      with PIL.Image.open(io.BytesIO(_read_bytes(path))) as image:  # a palette PNG reads as its indices, the ids
        labels = np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
      raise DataError(f'{path} is not a readable PNG: {error}') from None
    if labels.ndim != 2:
      raise DataError(f'{path} should be a palette (single-channel) PNG, got shape {labels.shape}')
    self._cache[frame] = labels
    return labels

  def object_ids(self, frame):
    if frame not in self._ids:
      self._ids[frame] = set(np.unique(self._labels(frame)).tolist()) - {0}
    return self._ids[frame]

  def mask(self, frame, object_id):
    return (self._labels(frame) == object_id).astype(np.uint8)


def _h5_error(path: str, error: Exception) -> DataError:
  return DataError(f'{path} is not a readable A2D mask file: {error}')


def read_a2d_instance_masks(path: epath.Path) -> dict[int, np.ndarray]:
  """{instance id: uint8 [H, W] mask} of an A2D annotation .h5 (MATLAB v7.3: arrays stored transposed)."""
  try:
    with h5py.File(io.BytesIO(_read_bytes(path)), 'r') as f:
      instances = np.asarray(f['instance'][()]).astype(np.int64).ravel()
      masks = np.asarray(f['reMask'][()])
  except (OSError, KeyError) as error:
    raise _h5_error(path, error) from None
  if masks.ndim == 2:
    masks = masks[None]
  if masks.ndim != 3 or masks.shape[0] != len(instances):
    raise _h5_error(path, f'{len(instances)} instance ids but reMask has shape {masks.shape}')
  return {int(i): (m.T > 0).astype(np.uint8) for i, m in zip(instances, masks)}


class A2DMasks(Masks):
  """A2D Sentences instance masks: one .h5 per annotated frame, named by its 1-based frame number."""

  def __init__(self, directory: epath.Path):
    self._files = _numbered_files(directory, '.h5')
    self._cache = {}

  @property
  def annotated_frames(self):
    return sorted(self._files)

  def _instances(self, frame):
    if frame not in self._cache:
      self._cache[frame] = read_a2d_instance_masks(self._files[frame])
    return self._cache[frame]

  def object_ids(self, frame):
    return set(self._instances(frame))  # listed instances, as the release defines the annotated ones

  def mask(self, frame, object_id):
    masks = self._instances(frame)
    if object_id in masks:
      return masks[object_id]
    return np.zeros_like(next(iter(masks.values())))


class JHMDBMasks(Masks):
  """J-HMDB puppet masks: `part_mask` [H, W, T] in one .mat per video; the single actor is object 1."""

  def __init__(self, path: epath.Path):
    data = _read_bytes(path)
    try:
      masks = scipy.io.loadmat(io.BytesIO(data))['part_mask']
    except NotImplementedError:  # a MATLAB v7.3 file is HDF5, stored transposed
      try:
        with h5py.File(io.BytesIO(data), 'r') as f:
          masks = np.asarray(f['part_mask'][()]).transpose(2, 1, 0)
      except (OSError, KeyError) as error:
        raise DataError(f'{path} is not a readable J-HMDB mask file: {error}') from None
    except (OSError, KeyError, ValueError, TypeError, scipy.io.matlab.MatReadError) as error:
      raise DataError(f'{path} is not a readable J-HMDB mask file: {error}') from None
    if masks.ndim != 3:
      raise DataError(f'{path}: part_mask should be [H, W, T], got shape {masks.shape}')
    self._masks = (masks > 0).astype(np.uint8)

  @property
  def annotated_frames(self):
    return list(range(1, self._masks.shape[2] + 1))

  def object_ids(self, frame):
    return {1} if self._masks[:, :, frame - 1].any() else set()

  def mask(self, frame, object_id):
    return self._masks[:, :, frame - 1] * np.uint8(object_id == 1)


class VideoTargets(NamedTuple):
  """One opened video of a split and the target frames of each of its expressions (reader order)."""
  video: Video
  masks: Masks | None
  targets: list[tuple[Expression, list[int]]]


class RVOSReader(abc.ABC):
  """Base of all readers: subclasses list expressions and open videos and masks; this class builds examples."""
  name: str
  frame_format = 'jpeg'
  extra_features: tuple[str, ...] = ()  # string features besides the common ones, read from Expression.extras

  def __init__(self, root: str | os.PathLike, delta: int = 6):
    self.root = paths.path(root)
    if delta < 1:
      raise ValueError(f'delta (frames between a frame and its previous frame) must be >= 1, got {delta}')
    self.delta = delta
    if not self.root.is_dir():
      raise DataError(f'{self.name}: data directory {self.root} does not exist')

  def path(self, *parts: str) -> epath.Path:
    return self.root.joinpath(*parts)

  def require(self, *parts: str) -> epath.Path:
    path = self.path(*parts)
    if not path.exists():
      raise DataError(f'{self.name}: missing {path}')
    return path

  @abc.abstractmethod
  def splits(self) -> tuple[str, ...]:
    ...

  @abc.abstractmethod
  def expressions(self, split: str, skipped: SkipReport) -> list[Expression]:
    ...

  @abc.abstractmethod
  def video(self, split: str, video_id: str) -> Video:
    ...

  @abc.abstractmethod
  def masks(self, split: str, video_id: str) -> Masks | None:
    """None for splits without ground truth (YouTube-VOS valid)."""

  def target_frames(self, split: str, expression: Expression, video: Video, masks: Masks | None) -> list[int]:
    """Default: the annotated frames in which the referred object appears; every frame without ground truth."""
    if masks is None:
      return video.frame_numbers
    return [f for f in masks.annotated_frames if expression.object_id in masks.object_ids(f)]

  def sentences(self) -> list[str]:
    """Every sentence of every split (for the vocabulary)."""
    return sorted({e.sentence for split in self.splits() for e in self.expressions(split, SkipReport())})

  def expressions_by_video(self, split: str, skipped: SkipReport) -> dict[str, list[Expression]]:
    """The split's expressions grouped by video, videos sorted, each video's in the reader's order."""
    if split not in self.splits():
      raise ValueError(f'{self.name} has splits {self.splits()}, not {split!r}')
    by_video = collections.defaultdict(list)
    for expression in self.expressions(split, skipped):
      by_video[expression.video_id].append(expression)
    return {video_id: by_video[video_id] for video_id in sorted(by_video)}

  def video_targets(self, split: str, video_id: str, expressions: Sequence[Expression],
                    skipped: SkipReport) -> VideoTargets:
    """Opens a video and lists the target frames of its expressions; expressions with an empty sentence or no
    target frame are reported in `skipped` and left out."""
    video = self.video(split, video_id)
    masks = self.masks(split, video_id)
    targets = []
    for expression in expressions:
      described = self.described(split, expression)
      if not expression.sentence.strip():
        skipped.add('empty sentence', described)
        continue
      try:
        frames = list(expression.frames) if expression.frames is not None else self.target_frames(
            split, expression, video, masks)
      except DataError as error:
        raise DataError(f'{error} [{described}]') from None
      if not frames:
        skipped.add('object absent from every mask', f'{described}: object {expression.object_id}')
        continue
      targets.append((expression, frames))
    return VideoTargets(video, masks, targets)

  def described(self, split: str, expression: Expression) -> str:
    """An expression for messages: where it was read."""
    return f'{self.name}/{split} expression {expression.expression_id} ({expression.origin})'

  def examples(self, split: str, skipped: SkipReport) -> Iterator[tuple[str, dict]]:
    """(unique key, feature dict) for every target frame of every expression; videos are opened once each."""
    for video_id, expressions in self.expressions_by_video(split, skipped).items():
      video, masks, targets = self.video_targets(split, video_id, expressions, skipped)
      for expression, frames in targets:
        for frame in frames:
          key = example_key(expression, frame)
          try:
            yield key, self._example(split, expression, video, masks, frame)
          except DataError as error:
            raise DataError(f'{error} [example {key}, {self.described(split, expression)}]') from None

  def target_mask(self, expression: Expression, masks: Masks | None, frame: int, size: tuple[int, int]) -> np.ndarray:
    """The referred object's uint8 0/1 mask [H, W] in a target frame of `size`; zeros where there is no ground
    truth."""
    mask = masks.mask(frame, expression.object_id) if masks is not None else np.zeros(size, np.uint8)
    if mask.shape != size:
      raise DataError(f'the mask of frame {frame} is {mask.shape}, the frame is {size}')
    return mask

  def _example(self, split, expression, video, masks, frame) -> dict:
    previous = previous_frame(video.frame_numbers, frame, self.delta)
    encoded, size = video.encoded_frame(frame)
    previous_encoded, previous_size = video.encoded_frame(previous)
    if previous_size != size:
      raise DataError(f'frame {previous} is {previous_size}, frame {frame} is {size}')
    has_mask = masks is not None
    mask = self.target_mask(expression, masks, frame, size)
    return {
        'frame': encoded,
        'prev_frame': previous_encoded,
        'mask': mask[:, :, None],
        'has_mask': has_mask,
        'sentence': expression.sentence,
        'video_id': expression.video_id,
        'frame_index': frame,
        'prev_frame_index': previous,
        'object_id': expression.object_id,
        'expression_id': expression.expression_id,
        'orig_size': np.array(size, np.int32),
        'split': split,
        **{name: expression.extras[name] for name in self.extra_features},
    }


def _read_text(path: epath.Path, encoding: str = 'utf-8') -> str:
  try:
    return _read_bytes(path).decode(encoding)
  except UnicodeDecodeError as error:
    raise DataError(f'cannot read {path}: {error}') from None


def _read_csv(path: epath.Path, header: bool, encoding: str = 'utf-8') -> list[tuple[int, list[str]]]:
  """(line number, fields) of a comma-separated file."""
  rows = list(enumerate(csv.reader(io.StringIO(_read_text(path, encoding), newline='')), 1))
  return [(n, row) for n, row in rows[1 if header else 0:] if row]


class A2DSentencesReader(RVOSReader):
  """A2D Sentences as released: `Release/` (videoset.csv, clips320H/*.mp4) and `text_annotations/`."""
  name = 'a2d_sentences'

  def splits(self):
    return ('train', 'test')

  @functools.cached_property
  def _video_splits(self) -> dict[str, str]:
    path = self.require('Release', 'videoset.csv')
    splits = {}
    for line, row in _read_csv(path, header=False):
      if row[-1].strip() not in ('0', '1'):
        raise DataError(f'{path} line {line}: the last column should be 0 (train) or 1 (test), got {row[-1]!r}')
      splits[row[0].strip()] = 'train' if row[-1].strip() == '0' else 'test'
    return splits

  @functools.cached_property
  def _missed_videos(self) -> set[str]:
    text = _read_text(self.require('text_annotations', 'a2d_missed_videos.txt'))
    return {line.strip() for line in text.splitlines() if line.strip()}

  def expressions(self, split, skipped):
    path = self.require('text_annotations', 'a2d_annotation.txt')
    expressions = []
    for line, row in _read_csv(path, header=True):
      origin = f'{path} line {line}'
      if len(row) < 3:
        raise DataError(f'{origin}: expected video_id,instance_id,query, got {row}')
      video_id, instance, sentence = row[0].strip(), row[1].strip(), ','.join(row[2:])
      if video_id not in self._video_splits:
        raise DataError(f'{origin}: video {video_id} is not in Release/videoset.csv')
      if self._video_splits[video_id] != split:
        continue
      if video_id in self._missed_videos:
        skipped.add('video listed in a2d_missed_videos.txt', origin)
        continue
      if not instance.isdigit():  # the release's one bad row: instance id "1 (copy)"
        skipped.add('instance id is not a number', f'{origin}: {instance!r}')
        continue
      expressions.append(Expression(video_id, int(instance), line - 2, sentence, origin))
    return expressions

  def video(self, split, video_id):
    return Mp4Video(self.require('Release', 'clips320H', f'{video_id}.mp4'))

  def masks(self, split, video_id):
    return A2DMasks(self.path('text_annotations', 'a2d_annotation_with_instances', video_id))


class A2DListReader(RVOSReader):
  """The official LBDT code's prepared layout: images/<video>/<frame>.jpg, masks/<video>/<frame>.h5 and list files
  train.txt / val.txt with lines `video/frame,height,width,instance,phrase,category` (one example per line)."""
  name = 'a2d_sentences'
  LIST_FILES = {'train': 'train.txt', 'test': 'val.txt'}

  def splits(self):
    return tuple(split for split, name in self.LIST_FILES.items() if self.path(name).exists())

  def expressions(self, split, skipped):
    path = self.require(self.LIST_FILES[split])
    expressions = []
    for line, row in _read_csv(path, header=False):
      origin = f'{path} line {line}'
      if len(row) < 6 or row[0].count('/') != 1:
        raise DataError(f'{origin}: expected video/frame,h,w,instance,phrase,category, got {row}')
      video_id, frame = row[0].split('/')
      if not (frame.isdigit() and row[3].strip().isdigit()):
        raise DataError(f'{origin}: frame {frame!r} and instance {row[3]!r} should be numbers')
      sentence = ','.join(row[4:-1])  # a phrase with commas spans several fields
      expressions.append(Expression(video_id, int(row[3]), line - 1, sentence, origin, frames=(int(frame),)))
    return expressions

  def video(self, split, video_id):
    return ImageFolderVideo(self.require('images', video_id), '.jpg')

  def masks(self, split, video_id):
    return A2DMasks(self.require('masks', video_id))

  def target_mask(self, expression, masks, frame, size):
    if expression.object_id not in masks.object_ids(frame):
      raise DataError(f'instance {expression.object_id} has no mask in masks/{expression.video_id}/'
                      f'{frame:05d}.h5')
    return super().target_mask(expression, masks, frame, size)


class JHMDBSentencesReader(RVOSReader):
  """J-HMDB Sentences (evaluation only): Rename_Images/<action>/<video>/NNNNN.png, puppet_mask/<action>/<video>/
  puppet_mask.mat, jhmdb_annotation.txt. `frames='sample3'` evaluates 3 frames per video (MTTR/ReferFormer's
  protocol): the frames listed in `samples_file` (MTTR's jhmdb_sentences_samples_metadata.json) when given, else
  3 frames drawn with a fixed seed."""
  name = 'jhmdb_sentences'
  frame_format = 'png'

  def __init__(self, root, delta=6, frames: str = 'all', samples_file: str | None = None, seed: int = 0):
    super().__init__(root, delta)
    if frames not in ('all', 'sample3'):
      raise ValueError(f"jhmdb frames must be 'all' or 'sample3', got {frames!r}")
    self.frames, self.samples_file, self.seed = frames, samples_file, seed

  def splits(self):
    return ('test',)

  def _directory(self, kind: str, video_id: str) -> str:
    matches = [action / video_id for action in self.require(kind).iterdir() if (action / video_id).is_dir()]
    if len(matches) != 1:
      raise DataError(f'expected one {kind}/<action>/{video_id} directory, found {len(matches)}')
    return matches[0]

  @functools.cached_property
  def _mttr_samples(self) -> dict[str, list[int]]:
    if self.samples_file is None:
      return {}
    try:
      rows = json.loads(paths.path(self.samples_file).read_text())
      samples = collections.defaultdict(set)
      for row in rows:
        samples[row[0]].add(int(os.path.basename(row[1]).split('.')[0]))
    except (OSError, ValueError, IndexError, TypeError) as error:
      raise DataError(f'{self.samples_file} is not an MTTR J-HMDB samples file: {error}') from None
    return {video: sorted(frames) for video, frames in samples.items()}

  def expressions(self, split, skipped):
    path = self.require('jhmdb_annotation.txt')
    expressions = []
    for line, row in _read_csv(path, header=True):
      if len(row) < 2:
        raise DataError(f'{path} line {line}: expected video_id,query, got {row}')
      expressions.append(Expression(row[0].strip(), 1, line - 2, ','.join(row[1:]), f'{path} line {line}'))
    return expressions

  def video(self, split, video_id):
    return ImageFolderVideo(self._directory('Rename_Images', video_id), '.png')

  def masks(self, split, video_id):
    path = self._directory('puppet_mask', video_id) / 'puppet_mask.mat'
    if not path.exists():
      raise DataError(f'missing {path}')
    return JHMDBMasks(path)

  def target_frames(self, split, expression, video, masks):
    # Frames past the last mask have no ground truth (MTTR drops them too).
    on_disk = set(video.frame_numbers)
    frames = [f for f in masks.annotated_frames if f in on_disk]
    if self.frames == 'all':
      return frames
    if self._mttr_samples:
      if expression.video_id not in self._mttr_samples:
        raise DataError(f'{self.samples_file} has no frames for video {expression.video_id}')
      listed = self._mttr_samples[expression.video_id]
      if not set(listed) <= set(frames):
        raise DataError(f'{self.samples_file} lists frames {sorted(set(listed) - set(frames))} of video '
                        f'{expression.video_id}, which have no frame or mask')
      return listed
    rng = random.Random(f'{self.seed}/{expression.video_id}')
    return sorted(rng.sample(frames, min(3, len(frames))))


class YouTubeVOSReader(RVOSReader):
  """Refer-YouTube-VOS: <split>/JPEGImages/<video>/<frame>.jpg, <split>/Annotations/<video>/<frame>.png (palette,
  value = object id) and meta_expressions/<split>/meta_expressions.json. `valid` has no masks; when
  meta_expressions/test/ exists, its videos are removed from valid (the public 202-video valid set)."""
  name = 'ref_youtube_vos'
  SPLIT_DIRECTORIES = {'train': 'train', 'validation': 'valid'}
  SPLITS_WITH_MASKS = ('train',)
  EXCLUDED_FROM = {'validation': 'test'}

  def splits(self):
    return tuple(self.SPLIT_DIRECTORIES)

  def _meta(self, directory: str) -> dict:
    path = self.require('meta_expressions', directory, 'meta_expressions.json')
    try:
      return json.loads(_read_bytes(path).decode('utf-8'))['videos']
    except (OSError, ValueError, KeyError) as error:
      raise DataError(f'{path} is not a meta_expressions file: {error}') from None

  def expressions(self, split, skipped):
    directory = self.SPLIT_DIRECTORIES[split]
    videos = self._meta(directory)
    excluded = self.EXCLUDED_FROM.get(split)
    if excluded and self.path('meta_expressions', excluded, 'meta_expressions.json').exists():
      excluded_videos = self._meta(excluded)
      videos = {v: meta for v, meta in videos.items() if v not in excluded_videos}
    path = self.path('meta_expressions', directory, 'meta_expressions.json')
    expressions = []
    for video_id in sorted(videos):
      for key, expression in sorted(videos[video_id]['expressions'].items(), key=lambda item: int(item[0])):
        origin = f'{path} video {video_id} expression {key}'
        try:
          # The competition's valid/test files name no object (there are no masks to pick one from).
          object_id = int(expression['obj_id']) if split in self.SPLITS_WITH_MASKS else int(expression.get('obj_id', 0))
          expressions.append(Expression(video_id, object_id, int(key), expression['exp'], origin,
                                        {name: str(expression[name]) for name in self.extra_features}))
        except (KeyError, ValueError) as error:
          raise DataError(f'{origin}: malformed expression {expression!r} ({error})') from None
    return expressions

  def video(self, split, video_id):
    return ImageFolderVideo(self.require(self.SPLIT_DIRECTORIES[split], 'JPEGImages', video_id), '.jpg')

  def masks(self, split, video_id):
    if split not in self.SPLITS_WITH_MASKS:
      return None
    return PaletteMasks(self.require(self.SPLIT_DIRECTORIES[split], 'Annotations', video_id))


class SyntheticRVOSReader(YouTubeVOSReader):
  """The built-in synthetic set (data_pipeline/synthetic_rvos.py): the YouTube-VOS layout with masks in every
  split and each expression tagged with the cue it needs."""
  name = 'synthetic_rvos'
  SPLIT_DIRECTORIES = {s: s for s in ('train', 'validation', 'test', 'test_compositional')}
  SPLITS_WITH_MASKS = tuple(SPLIT_DIRECTORIES)
  EXCLUDED_FROM = {}
  extra_features = ('cue',)


class DAVISReader(RVOSReader):
  """Ref-DAVIS17: DAVIS/JPEGImages/480p, DAVIS/Annotations_unsupervised/480p, DAVIS/ImageSets/2017/{train,val}.txt
  and davis_text_annotations/Davis17_annot{1,2}[_full_video].txt (lines `<video> <object id> "<expression>"`;
  annotator 2's files are latin-1). Each example says which of the four expression sets it comes from; evaluation
  splits keep every annotated frame (J&F scores frames where the object is absent too)."""
  name = 'ref_davis17'
  extra_features = ('expression_set',)
  EXPRESSION_SETS = {  # set name: (file, encoding)
      'annotator1_first_frame': ('Davis17_annot1.txt', 'utf-8'),
      'annotator1_full_video': ('Davis17_annot1_full_video.txt', 'utf-8'),
      'annotator2_first_frame': ('Davis17_annot2.txt', 'latin-1'),
      'annotator2_full_video': ('Davis17_annot2_full_video.txt', 'latin-1'),
  }
  VIDEO_NAME_FIXES = {'clasic-car': 'classic-car', 'dog-scale': 'dogs-scale', 'motor-bike': 'motorbike'}
  SPLIT_FILES = {'train': 'train.txt', 'validation': 'val.txt'}

  def splits(self):
    return tuple(self.SPLIT_FILES)

  def _videos(self, split) -> set[str]:
    return {line.strip() for line in _read_text(self.require('DAVIS', 'ImageSets', '2017', self.SPLIT_FILES[split]))
            .splitlines() if line.strip()}

  def expressions(self, split, skipped):
    videos = self._videos(split)
    known = set().union(*(self._videos(s) for s in self.splits()))
    expressions = []
    for set_index, (expression_set, (name, encoding)) in enumerate(self.EXPRESSION_SETS.items()):
      path = self.require('davis_text_annotations', name)
      lines = _read_text(path, encoding).splitlines()
      for line_number, line in enumerate(lines, 1):
        if not line.strip():
          continue
        origin = f'{path} line {line_number}'
        fields = line.strip().split(maxsplit=2)
        if len(fields) < 2 or not fields[1].isdigit():
          raise DataError(f'{origin}: expected <video> <object id> "<expression>", got {line!r}')
        video_id = self.VIDEO_NAME_FIXES.get(fields[0], fields[0])
        if video_id not in known:
          skipped.add('video in neither ImageSets/2017 list', f'{origin}: {fields[0]!r}')
          continue
        if video_id not in videos:
          continue
        sentence = ' '.join(fields[2].split()) if len(fields) == 3 else ''
        if len(sentence) >= 2 and sentence[0] == sentence[-1] == '"':
          sentence = sentence[1:-1]
        # Expression ids are unique across the four files: set index * 10000 + line number.
        expressions.append(Expression(video_id, int(fields[1]), set_index * 10000 + line_number, sentence, origin,
                                      {'expression_set': expression_set}))
    return expressions

  def video(self, split, video_id):
    return ImageFolderVideo(self.require('DAVIS', 'JPEGImages', '480p', video_id), '.jpg')

  def masks(self, split, video_id):
    return PaletteMasks(self.require('DAVIS', 'Annotations_unsupervised', '480p', video_id))

  def target_frames(self, split, expression, video, masks):
    present = super().target_frames(split, expression, video, masks)
    if split == 'train' or not present:
      return present
    return masks.annotated_frames


class MevisMasks(Masks):
  """The masks of one MeViS video: per annotation id, a COCO RLE or None for each frame; a target ("object") is a
  set of annotations (an expression may name several objects), its mask their union."""

  def __init__(self, frame_numbers: Sequence[int], rles: Mapping[str, Sequence], targets: Sequence[tuple[str, ...]],
               source: str):
    self._positions = {number: position for position, number in enumerate(frame_numbers)}
    self._rles, self._targets, self._source = rles, targets, source

  @property
  def annotated_frames(self):
    return sorted(self._positions)

  def _annotation(self, anno_id: str, frame: int) -> np.ndarray | None:
    rle = self._rles[anno_id][self._positions[frame]]
    if not rle:
      return None
    try:
      return coco_mask.decode(rle)
    except (TypeError, ValueError, KeyError) as error:
      raise DataError(f'{self._source}: annotation {anno_id}, frame {frame} is not a COCO RLE ({error})') from None

  def object_ids(self, frame):
    return {target for target, annotations in enumerate(self._targets)
            if any(self._annotation(anno_id, frame) is not None for anno_id in annotations)}

  def union(self, frame: int, object_id: int) -> np.ndarray | None:
    """The uint8 0/1 union of the target's annotations in the frame; None where all of them are absent."""
    union = None
    for anno_id in self._targets[object_id]:
      mask = self._annotation(anno_id, frame)
      if mask is not None:
        union = mask if union is None else union | mask
    return None if union is None else union.astype(np.uint8)

  def mask(self, frame, object_id):
    union = self.union(frame, object_id)
    if union is not None:
      return union
    sizes = [rle['size'] for rles in self._rles.values() for rle in rles if rle]
    if not sizes:
      raise DataError(f'{self._source}: no annotation of the video has a mask to take the frame size from')
    return np.zeros(sizes[0], np.uint8)


class MevisReader(RVOSReader):
  """MeViS (github henghuiding/MeViS): <split>/JPEGImages/<video>/<frame>.jpg, <split>/meta_expressions.json
  (`videos[video].frames`, `videos[video].expressions[exp_id] = {exp, obj_id, anno_id}`) and, for train and valid_u,
  <split>/mask_dict.json (str(anno_id) → per frame a COCO RLE or null). `valid` has no masks (the server's split).

  An expression's target is the union of its annotations' masks; expressions naming the same annotations share one
  target ("object" id: the target's index among the video's distinct annotation sets; `anno_ids` names them).
  Every frame of the video is a target frame, with an empty mask where all its objects are absent: the official
  training code keeps those frames with empty targets, and its evaluation scores every frame. Training skips videos
  of fewer than 2 frames, as the official loader does. mask_dict.json (GBs for train) is parsed as a stream, once per
  split, keeping only the RLEs of the split's expressions.
  """
  name = 'mevis'
  SPLITS = ('train', 'valid_u', 'valid')
  SPLITS_WITH_MASKS = ('train', 'valid_u')
  extra_features = ('anno_ids',)

  def splits(self):
    return self.SPLITS

  @functools.cache  # pylint: disable=method-cache-max-size-none
  def _meta(self, split: str) -> dict:
    path = self.require(split, 'meta_expressions.json')
    try:
      videos = json.loads(_read_bytes(path).decode('utf-8'))['videos']
      if not isinstance(videos, dict):
        raise ValueError('"videos" is not an object')
    except (ValueError, KeyError, TypeError) as error:
      raise DataError(f'{path} is not a meta_expressions file: {error}') from None
    return videos

  @functools.cache  # pylint: disable=method-cache-max-size-none
  def _targets(self, split: str, video_id: str) -> list[tuple[str, ...]]:
    """The video's distinct annotation sets, sorted: the index of one is its target id."""
    expressions = self._meta(split)[video_id]['expressions'].values()
    return sorted({tuple(sorted(str(a) for a in e['anno_id'])) for e in expressions})

  def expressions(self, split, skipped):
    videos = self._meta(split)
    path = self.path(split, 'meta_expressions.json')
    expressions = []
    for video_id in sorted(videos):
      origin_video = f'{path} video {video_id}'
      try:
        frames, items = videos[video_id]['frames'], videos[video_id]['expressions'].items()
      except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f'{origin_video}: lacks "frames" or "expressions" ({error})') from None
      if split == 'train' and len(frames) < 2:
        skipped.add('video of fewer than 2 frames', origin_video)
        continue
      for key, expression in sorted(items, key=lambda item: int(item[0])):
        origin = f'{origin_video} expression {key}'
        try:
          if split in self.SPLITS_WITH_MASKS:
            annotations = tuple(sorted(str(a) for a in expression['anno_id']))
            if not annotations:
              raise ValueError('no anno_id')
            target = self._targets(split, video_id).index(annotations)
          else:
            annotations, target = (), 0
          expressions.append(Expression(video_id, target, int(key), expression['exp'], origin,
                                        {'anno_ids': ','.join(annotations)}))
        except (KeyError, ValueError, TypeError) as error:
          raise DataError(f'{origin}: malformed expression {expression!r} ({error})') from None
    return expressions

  @functools.cache  # pylint: disable=method-cache-max-size-none
  def _rles(self, split: str) -> dict[str, list]:
    """The RLE lists of every annotation an expression of the split names, read from mask_dict.json as a stream."""
    wanted = {str(a) for video in self._meta(split).values() for e in video.get('expressions', {}).values()
              for a in e.get('anno_id', ())}
    path = self.require(split, 'mask_dict.json')
    rles = {}
    try:
      with path.open('rb') as f:
        for anno_id, masks in ijson.kvitems(f, '', use_float=True):
          if anno_id in wanted:
            rles[anno_id] = masks
    except (ijson.JSONError, OSError) as error:
      raise DataError(f'{path} is not a readable mask_dict file: {error}') from None
    missing = sorted(wanted - set(rles), key=str)
    if missing:
      raise DataError(f'{path} lacks the masks of annotations {missing[:5]} ({len(missing)} in all) that '
                      f'{self.path(split, "meta_expressions.json")} names')
    return rles

  def video(self, split, video_id):
    return ImageFolderVideo(self.require(split, 'JPEGImages', video_id), '.jpg')

  def masks(self, split, video_id):
    if split not in self.SPLITS_WITH_MASKS:
      return None
    frames = self._frame_numbers(split, video_id)
    targets = self._targets(split, video_id)
    rles = self._rles(split)
    path = self.path(split, 'mask_dict.json')
    for anno_id in {a for target in targets for a in target}:
      if len(rles[anno_id]) != len(frames):
        raise DataError(f'{path}: annotation {anno_id} has {len(rles[anno_id])} masks, video {video_id} has '
                        f'{len(frames)} frames')
    return MevisMasks(frames, {a: rles[a] for target in targets for a in target}, targets, str(path))

  def _frame_numbers(self, split: str, video_id: str) -> list[int]:
    """The numbers of the frames meta_expressions.json lists, in its order (the order of mask_dict's lists)."""
    names = self._meta(split)[video_id]['frames']
    if not all(isinstance(name, str) and name.isdigit() and len(name) == 5 for name in names):
      raise DataError(f'{self.path(split, "meta_expressions.json")} video {video_id}: frame names must be 5-digit '
                      f'numbers as in the release (submissions name the PNGs so), got {names[:3]}')
    return [int(name) for name in names]

  def target_mask(self, expression, masks, frame, size):
    """The union of the expression's objects (zeros at the frame's size where all are absent)."""
    union = masks.union(frame, expression.object_id) if masks is not None else None
    if union is None:
      return np.zeros(size, np.uint8)
    if union.shape != size:
      raise DataError(f'the masks of frame {frame} are {union.shape}, the frame is {size}')
    return union

  def target_frames(self, split, expression, video, masks):
    frames = self._frame_numbers(split, expression.video_id)
    missing = sorted(set(frames) - set(video.frame_numbers))
    if missing:
      raise DataError(f'{self.path(split, "JPEGImages", expression.video_id)} lacks frames {missing[:5]} that '
                      f'meta_expressions.json lists')
    return sorted(frames)
