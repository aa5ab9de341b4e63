"""The frame store: a prepared data set as pack files of encoded frames and masks, with numpy index tables.

Each frame a sample can use is stored once (the release's own encoded bytes; JPEG for the frames decoded from
A2D's mp4 clips), each mask once per (object, frame) as a 0/1 PNG, and each sample (expression, target frame,
object) as a row of the index. The previous frame is looked up when a sample is read, from δ: a store prepared for
`max_delta` serves every δ up to it, because it holds every frame that `readers.previous_frame` picks for those δ
(so the rule applied to the stored frame numbers picks the same frame as applied to the release's).

  <data_dir>/<data set>/<variant>/store.json       format, data set, variant, options, max_delta, sentences, splits
  <data_dir>/<data set>/<variant>/<split>/part-00000.frames    the encoded frames of the part's videos, end to end
                                          part-00000.masks     its PNG masks, end to end
                                          part-00000.npz       its index tables (written last: the part is whole)
                                          split.json           counts, bytes and the skip report (written last)

Pack files rather than ArrayRecord: array_record cannot read gs:// paths, and every path here may be in a bucket;
a record is one seek and read through etils.epath. A part holds a fixed number of consecutive videos, so an
interrupted preparation resumes at the first part without its .npz, and different splits can be prepared at the
same time (by different processes or machines) into one directory.

  store = prepare_store(reader, store_directory(data_dir, reader.name))    # or open_store(directory)
  source = store.split('train')
  example = source.example(index, delta=6)   # encoded frame, previous frame and mask, sentence, ids
"""

import collections
import contextlib
import functools
import hashlib
import io
import json
import operator
import os
import re
import secrets
import threading
import zipfile
from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np
from etils import epath

from data_pipeline import readers, synthetic_rvos
from data_pipeline.readers import DataError
from lbdt_jax import paths
from lbdt_jax.progress import Progress

FORMAT = 'lbdt-store-1'
DEFAULT_MAX_DELTA = 9  # the largest δ of the paper's Tab. 6
VIDEOS_PER_PART = 64
STORE_FILE = 'store.json'
SPLIT_FILE = 'split.json'
PREPARE_COMMAND = 'python main.py --mode=prepare'


def variant(*, max_delta: int = DEFAULT_MAX_DELTA, a2d_layout: str = 'release', jhmdb_frames: str = 'all',
            jhmdb_samples_file: str | None = None, synthetic: dict | None = None) -> str:
  """The directory name of a store: the settings that change what is stored (never δ itself), e.g.
  `release_upto9`, `lists_upto9`, `sample3_<digest of the samples file>_upto9`, `<synthetic digest>_upto9`."""
  settings = []
  if a2d_layout != 'release':
    settings.append(a2d_layout)
  if jhmdb_frames != 'all':
    settings.append(jhmdb_frames)
    if jhmdb_samples_file:
      path = paths.path(jhmdb_samples_file)
      if not path.is_file():
        raise DataError(f'jhmdb_samples_file {path} does not exist')
      settings.append(hashlib.sha1(path.read_bytes()).hexdigest()[:8])
  if synthetic is not None:
    canonical = synthetic_rvos.SyntheticConfig(**dict(synthetic)).to_dict()  # defaults spelled out or not
    settings.append(hashlib.sha1(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:8])
  return f'{"_".join(settings) or "release"}_upto{max_delta}'


def store_directory(data_dir: str | os.PathLike, name: str, **settings) -> epath.Path:
  """<data_dir>/<name>/<variant(**settings)>."""
  return paths.path(data_dir) / name / variant(**settings)


# Preparation.


@contextlib.contextmanager
def _output(file: epath.Path) -> Iterator[str]:
  """A local file name to write; it becomes `file` only when the block ends without an error, so that an
  interrupted preparation leaves no file that looks whole (a bucket's object appears when its upload ends)."""
  if paths.is_remote(file):
    with paths.local_output(file) as local:
      yield local
    return
  temporary = file.with_name(f'.{file.name}.{secrets.token_hex(4)}.tmp')  # unique: store.json has several writers
  try:
    yield os.fspath(temporary)
    os.replace(temporary, file)
  finally:
    temporary.unlink(missing_ok=True)


def _write_json(file: epath.Path, value) -> None:
  with _output(file) as name, open(name, 'w') as f:
    json.dump(value, f, indent=1)


def _save_npz(name: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez, compressed, with fixed member timestamps (np.savez stamps the time): the same input, the same bytes."""
  with zipfile.ZipFile(name, 'w', zipfile.ZIP_DEFLATED) as archive:
    for key, array in arrays.items():
      member = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      member.compress_type = zipfile.ZIP_DEFLATED
      with archive.open(member, 'w', force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)


def _load_npz(file: epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(file.read_bytes()), allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}


def _encode_png(mask: np.ndarray) -> bytes:
  # Level 9: masks are a sizeable share of the store, and they are written once.
  return cv2.imencode('.png', mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def _part_file(split_directory: epath.Path, part: int, kind: str) -> epath.Path:
  """kind: 'frames', 'masks' or 'npz'."""
  return split_directory / f'part-{part:05d}.{kind}'


class _PartIndex:
  """The index tables of one part, filled video by video; rows count from 0 within the part."""

  def __init__(self, extra_features: Sequence[str]):
    self.extra_features = tuple(extra_features)
    self.columns = collections.defaultdict(list)

  def add(self, table: str, **values) -> int:
    """Appends a row to `table` (the columns `<table>_<name>`); returns its row number."""
    for name, value in values.items():
      self.columns[f'{table}_{name}'].append(value)
    return len(self.columns[f'{table}_{next(iter(values))}']) - 1

  def arrays(self) -> dict[str, np.ndarray]:
    types = {'video_id': str, 'frame_video': np.int32, 'frame_number': np.int32, 'frame_offset': np.int64,
             'frame_length': np.int64, 'frame_height': np.int32, 'frame_width': np.int32, 'mask_offset': np.int64,
             'mask_length': np.int64, 'expression_video': np.int32, 'expression_object_id': np.int32,
             'expression_id': np.int32, 'expression_sentence': str, 'sample_expression': np.int32,
             'sample_frame': np.int32, 'sample_mask': np.int32,
             **{f'expression_{name}': str for name in self.extra_features}}
    return {column: np.array(self.columns[column], dtype) for column, dtype in types.items()}


def _write_video(reader: readers.RVOSReader, split: str, video_id: str, opened: readers.VideoTargets,
                 max_delta: int, index: _PartIndex, frames_file, masks_file) -> None:
  """Appends one video's frames, masks and samples to the part: the frames its samples can use, in frame order."""
  video, masks, targets = opened
  available = video.frame_numbers
  encoded = {}  # frame number: (bytes, (height, width))
  mask_rows = {}  # (object id, frame number): row
  samples = []
  video_row = index.add('video', id=video_id)

  def frame_size(number: int) -> tuple[int, int]:
    if number not in encoded:
      encoded[number] = video.encoded_frame(number)
    return encoded[number][1]

  @functools.cache
  def previous_frames(frame: int) -> set[int]:
    return {readers.previous_frame(available, frame, delta) for delta in range(1, max_delta + 1)}

  for expression, frames in targets:
    expression_row = index.add('expression', video=video_row, object_id=expression.object_id,
                               id=expression.expression_id, sentence=expression.sentence,
                               **{name: expression.extras[name] for name in index.extra_features})
    for frame in frames:
      try:
        size = frame_size(frame)
        for previous in sorted(previous_frames(frame)):
          if frame_size(previous) != size:  # as the reader checks its own δ's previous frame
            raise DataError(f'frame {previous} is {frame_size(previous)}, frame {frame} is {size}')
        mask_row = -1
        if masks is not None:
          key = (expression.object_id, frame)
          if key not in mask_rows:
            png = _encode_png(reader.target_mask(expression, masks, frame, size))
            mask_rows[key] = index.add('mask', offset=masks_file.tell(), length=len(png))
            masks_file.write(png)
          mask_row = mask_rows[key]
      except DataError as error:
        raise DataError(f'{error} [example {readers.example_key(expression, frame)}, '
                        f'{reader.described(split, expression)}]') from None
      samples.append((expression_row, frame, mask_row))
  frame_rows = {}
  for number in sorted(encoded):
    data, (height, width) = encoded[number]
    frame_rows[number] = index.add('frame', video=video_row, number=number, offset=frames_file.tell(),
                                   length=len(data), height=height, width=width)
    frames_file.write(data)
  for expression_row, frame, mask_row in samples:
    index.add('sample', expression=expression_row, frame=frame_rows[frame], mask=mask_row)


def _part_summary(tables: dict[str, np.ndarray]) -> dict:
  return {'videos': len(tables['video_id']), 'frames': len(tables['frame_number']),
          'masks': len(tables['mask_offset']), 'samples': len(tables['sample_frame']),
          'frames_bytes': int(tables['frames_bytes']), 'masks_bytes': int(tables['masks_bytes']),
          'skipped': json.loads(str(tables['skipped']))}


def _write_part(reader: readers.RVOSReader, split: str, expressions: dict[str, list[readers.Expression]],
                video_ids: Sequence[str], split_directory: epath.Path, part: int, max_delta: int,
                bar: Progress | None) -> dict:
  """Writes one part: its .frames and .masks, then its .npz; returns its summary."""
  index = _PartIndex(reader.extra_features)
  skipped = readers.SkipReport()
  with _output(_part_file(split_directory, part, 'frames')) as frames_name, \
       _output(_part_file(split_directory, part, 'masks')) as masks_name, \
       open(frames_name, 'wb') as frames_file, open(masks_name, 'wb') as masks_file:
    for video_id in video_ids:
      opened = reader.video_targets(split, video_id, expressions[video_id], skipped)
      _write_video(reader, split, video_id, opened, max_delta, index, frames_file, masks_file)
      if bar is not None:
        bar.update()
    sizes = {'frames_bytes': np.int64(frames_file.tell()), 'masks_bytes': np.int64(masks_file.tell())}
  tables = {**index.arrays(), **sizes, 'skipped': np.array(json.dumps(skipped.as_dict()))}
  with _output(_part_file(split_directory, part, 'npz')) as name:
    _save_npz(name, tables)
  return _part_summary(tables)


def _completed_part(split_directory: epath.Path, part: int, video_ids: Sequence[str]) -> dict | None:
  """The summary of a part written whole by an earlier preparation, None if it has to be written."""
  npz = _part_file(split_directory, part, 'npz')
  if not npz.exists():
    return None
  try:
    tables = _load_npz(npz)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # an upload cut short
    return None
  if tables['video_id'].tolist() != list(video_ids):
    raise DataError(f'{npz} holds videos {tables["video_id"].tolist()[:3]}..., where this preparation puts '
                    f'{list(video_ids)[:3]}...: the release or the settings changed since; remove {split_directory} '
                    'to prepare the split again')
  for kind in ('frames', 'masks'):
    data = _part_file(split_directory, part, kind)
    if not data.exists() or data.stat().length != int(tables[f'{kind}_bytes']):
      return None
  return _part_summary(tables)


def _merged_skips(reports: Iterable[dict]) -> dict:
  """The skip reports (SkipReport.as_dict) of consecutive pieces of a split as one report of the whole."""
  merged = {}
  for report in reports:
    for reason, record in report.items():
      entry = merged.setdefault(reason, {'count': 0, 'examples': []})
      entry['count'] += record['count']
      entry['examples'] = (entry['examples'] + record['examples'])[:readers.SkipReport.EXAMPLES]
  return merged


def _prepare_split(reader: readers.RVOSReader, directory: epath.Path, split: str, max_delta: int,
                   videos_per_part: int, progress: bool) -> None:
  split_directory = directory / split
  if (split_directory / SPLIT_FILE).exists():
    return
  split_directory.mkdir(parents=True, exist_ok=True)
  skipped = readers.SkipReport()  # expressions left out before any video is opened
  expressions = reader.expressions_by_video(split, skipped)
  video_ids = list(expressions)
  parts = [video_ids[start:start + videos_per_part] for start in range(0, len(video_ids), videos_per_part)]
  summaries = []
  for part, part_videos in enumerate(parts):
    summary = _completed_part(split_directory, part, part_videos)
    if summary is None:
      break
    summaries.append(summary)
  bar = Progress(total=len(video_ids), initial=sum(map(len, parts[:len(summaries)])), unit='video',
                 desc=f'{reader.name}/{split}') if progress else None
  try:
    for part in range(len(summaries), len(parts)):
      summaries.append(_write_part(reader, split, expressions, parts[part], split_directory, part, max_delta, bar))
      if bar is not None:
        bar.log()
  finally:
    if bar is not None:
      bar.close()
  totals = {key: sum(summary[key] for summary in summaries)
            for key in ('videos', 'frames', 'masks', 'samples', 'frames_bytes', 'masks_bytes')}
  _write_json(split_directory / SPLIT_FILE, {
      'split': split, 'parts': len(parts), 'videos_per_part': videos_per_part, **totals,
      'skipped': _merged_skips([skipped.as_dict()] + [summary['skipped'] for summary in summaries])})


def prepare_store(reader: readers.RVOSReader, directory: str | os.PathLike, *, max_delta: int = DEFAULT_MAX_DELTA,
                  splits: Sequence[str] | None = None, progress: bool = True, options: dict | None = None,
                  videos_per_part: int = VIDEOS_PER_PART) -> 'Store':
  """Prepares the reader's splits (or `splits`) into `directory` (usually `store_directory(...)`), resuming an
  interrupted preparation; `options`, the settings `directory` was named from, are recorded in store.json.
  Different splits may be prepared by different processes at the same time."""
  if max_delta < 1:
    raise ValueError(f'max_delta (the largest δ the store serves) must be >= 1, got {max_delta}')
  if videos_per_part < 1:
    raise ValueError(f'videos_per_part must be >= 1, got {videos_per_part}')
  directory = paths.path(directory)
  splits = reader.splits() if splits is None else tuple(splits)
  unknown = [split for split in splits if split not in reader.splits()]
  if unknown:
    raise ValueError(f'{reader.name} has splits {reader.splits()}, not {unknown}')
  paths.check_writable(directory)
  description = {'format': FORMAT, 'data_set': reader.name, 'variant': directory.name, 'options': options or {},
                 'max_delta': max_delta, 'extra_features': list(reader.extra_features),
                 'sentences': reader.sentences(), 'splits': list(reader.splits())}
  description = json.loads(json.dumps(description))  # as store.json reads back (tuples in options: lists)
  store_file = directory / STORE_FILE
  if store_file.exists():
    written = json.loads(store_file.read_text())
    if written != description:
      differing = sorted(key for key in description.keys() | written.keys()
                         if description.get(key) != written.get(key))
      raise DataError(f'{store_file} describes another preparation (it differs in {", ".join(differing)}): '
                      'the release changed since, or the directory is shared by mistake; prepare into an empty '
                      'directory')
  else:
    _write_json(store_file, description)
  for split in splits:
    _prepare_split(reader, directory, split, max_delta, videos_per_part, progress)
  return open_store(directory)


# Reading.


def previous_frame_rows(frame_video: np.ndarray, frame_number: np.ndarray, frames: np.ndarray,
                        delta: int) -> np.ndarray:
  """`readers.previous_frame` for many frames at once: for rows `frames` of a frame table sorted by (video, number),
  the row of each one's previous frame among its video's rows."""
  key = (frame_video.astype(np.int64) << 32) | frame_number.astype(np.int64)
  video, number = key[frames] >> 32 << 32, frame_number[frames].astype(np.int64)
  first = np.searchsorted(key, video)  # the video's first row
  aim = number - delta
  # The candidates are the earlier rows of the video: the nearest to `aim` is one of the two around it.
  above = np.searchsorted(key, video | np.maximum(aim, 0))
  last_earlier = np.maximum(frames - 1, first)
  below, above = np.clip(above - 1, first, last_earlier), np.clip(above, first, last_earlier)
  nearer_above = np.abs(frame_number[above] - aim) < np.abs(frame_number[below] - aim)  # ties: the earlier
  return np.where(frames == first, frames, np.where(nearer_above, above, below))


# Columns that hold row numbers of another table (-1: no row), with a column of that table.
_ROW_COLUMNS = {'frame_video': 'video_id', 'expression_video': 'video_id', 'sample_expression': 'expression_id',
                'sample_frame': 'frame_number', 'sample_mask': 'mask_offset'}


@functools.lru_cache(maxsize=64)
def _zero_mask_png(height: int, width: int) -> bytes:
  return _encode_png(np.zeros((height, width), np.uint8))


def _prepare_again(directory: epath.Path) -> str:
  return f'prepare it with {PREPARE_COMMAND} (an interrupted preparation resumes) or remove {directory}'


class SplitSource:
  """The samples of one split: `example(index, delta)` reads one; also a grain RandomAccessDataSource of sample
  indices (`source[i] == i`). Safe to read from several threads: each thread opens its own file objects."""

  def __init__(self, store: 'Store', split: str):
    self.name, self.split, self.extra_features = store.name, split, store.extra_features
    self.max_delta = store.max_delta
    self.directory = store.directory / split
    summary_file = self.directory / SPLIT_FILE
    if not summary_file.exists():
      raise DataError(f'{store.name}/{split} in {store.directory} is not prepared or its preparation did not finish '
                      f'(no {summary_file}): {_prepare_again(store.directory)}')
    self.summary = json.loads(summary_file.read_text())
    parts = []
    for part in range(self.summary['parts']):
      file = _part_file(self.directory, part, 'npz')
      if not file.exists():
        raise DataError(f'{store.name}/{split} in {store.directory} is incomplete: {file} is missing; '
                        f'{_prepare_again(store.directory)}')
      parts.append(_load_npz(file))
    self._tables = self._joined(parts)
    self._previous_rows = {}  # δ: the previous frame's row of every sample
    self._lock = threading.Lock()
    self._files, self._opened = threading.local(), []

  def _joined(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts' tables end to end, rows renumbered; `frame_part` / `mask_part` say which files hold a record."""
    empty = _PartIndex(self.extra_features).arrays()
    tables = {}
    for column in empty:
      pieces = [part[column] for part in parts]
      if column in _ROW_COLUMNS:
        starts = np.cumsum([0] + [len(part[_ROW_COLUMNS[column]]) for part in parts])
        pieces = [np.where(piece >= 0, piece + start, piece) for piece, start in zip(pieces, starts)]
      tables[column] = np.concatenate([empty[column], *pieces])
    for kind, column in (('frame', 'frame_number'), ('mask', 'mask_offset')):
      tables[f'{kind}_part'] = np.concatenate([np.zeros(0, np.int32)] + [
          np.full(len(part[column]), index, np.int32) for index, part in enumerate(parts)])
    return tables

  def __len__(self) -> int:
    return len(self._tables['sample_frame'])

  def __getitem__(self, index: int) -> int:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f'sample {index} of {self.name}/{self.split}, which has {len(self)}')
    return index

  def __getstate__(self):  # for grain's worker processes: locks and open files stay behind
    return {key: value for key, value in self.__dict__.items() if key not in ('_lock', '_files', '_opened')}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock(), _files=threading.local(), _opened=[])

  def close(self) -> None:
    """Closes the files every thread opened (reads after this open them again); call it with no read running."""
    with self._lock:
      for file in self._opened:
        file.close()
      self._files, self._opened = threading.local(), []

  def previous_rows(self, delta: int) -> np.ndarray:
    """The frame-table row of every sample's previous frame for δ = delta."""
    rows = self._previous_rows.get(delta)  # computed once per δ; read without the lock on every example
    if rows is not None:
      return rows
    delta = operator.index(delta)
    if delta > self.max_delta:
      raise ValueError(f'δ = {delta} needs frames up to {delta} earlier, but {self.name}/{self.split} in '
                       f'{self.directory.parent} was prepared for δ <= {self.max_delta}: prepare it with '
                       f'config.data.max_delta >= {delta}')
    if delta < 1:
      raise ValueError(f'delta (frames between a frame and its previous frame) must be >= 1, got {delta}')
    with self._lock:
      if delta not in self._previous_rows:
        tables = self._tables
        self._previous_rows[delta] = previous_frame_rows(tables['frame_video'], tables['frame_number'],
                                                         tables['sample_frame'], delta)
      return self._previous_rows[delta]

  def _read(self, kind: str, part: int, offset: int, length: int) -> bytes:
    files = self._files.__dict__
    if (kind, part) not in files:
      path = _part_file(self.directory, part, kind)
      try:
        files[kind, part] = path.open('rb')
      except FileNotFoundError:
        raise DataError(f'{path} is missing: {_prepare_again(self.directory.parent)}') from None
      with self._lock:
        self._opened.append(files[kind, part])
    file = files[kind, part]
    file.seek(offset)
    data = file.read(length)
    if len(data) != length:
      raise DataError(f'{_part_file(self.directory, part, kind)} is cut short ({length} bytes at {offset} asked '
                      f'for, {len(data)} there): {_prepare_again(self.directory.parent)}')
    return data

  def _frame(self, row: int) -> bytes:
    tables = self._tables
    return self._read('frames', int(tables['frame_part'][row]), int(tables['frame_offset'][row]),
                      int(tables['frame_length'][row]))

  def example(self, index: int, delta: int) -> dict:
    """The sample's features, with the previous frame δ = delta frames earlier (as readers.previous_frame picks it
    from the video's frames); `mask` is a 0/1 PNG, all zero where the split has no ground truth."""
    index = self[index]
    previous = int(self.previous_rows(delta)[index])
    tables = self._tables
    frame, expression, mask = (int(tables[column][index])
                               for column in ('sample_frame', 'sample_expression', 'sample_mask'))
    height, width = int(tables['frame_height'][frame]), int(tables['frame_width'][frame])
    return {
        'frame': self._frame(frame),
        'prev_frame': self._frame(previous),
        'mask': (self._read('masks', int(tables['mask_part'][mask]), int(tables['mask_offset'][mask]),
                            int(tables['mask_length'][mask])) if mask >= 0 else _zero_mask_png(height, width)),
        'has_mask': mask >= 0,
        'sentence': str(tables['expression_sentence'][expression]),
        'video_id': str(tables['video_id'][tables['frame_video'][frame]]),
        'frame_index': int(tables['frame_number'][frame]),
        'prev_frame_index': int(tables['frame_number'][previous]),
        'object_id': int(tables['expression_object_id'][expression]),
        'expression_id': int(tables['expression_id'][expression]),
        'orig_size': np.array([height, width], np.int32),
        'split': self.split,
        **{name: str(tables[f'expression_{name}'][expression]) for name in self.extra_features},
    }

  def sample_table(self) -> dict[str, np.ndarray]:
    """One row per sample, in stored order: video_id, frame_index, object_id, expression_id, sentence, has_mask,
    orig_size [S, 2] and the extra features."""
    tables = self._tables
    frame, expression = tables['sample_frame'], tables['sample_expression']
    return {
        'video_id': tables['video_id'][tables['frame_video'][frame]],
        'frame_index': tables['frame_number'][frame],
        'object_id': tables['expression_object_id'][expression],
        'expression_id': tables['expression_id'][expression],
        'sentence': tables['expression_sentence'][expression],
        'has_mask': tables['sample_mask'] >= 0,
        'orig_size': np.stack([tables['frame_height'][frame], tables['frame_width'][frame]], axis=-1),
        **{name: tables[f'expression_{name}'][expression] for name in self.extra_features},
    }


class Store:
  """A prepared data set (see the module docstring); `split(name)` gives its samples."""

  def __init__(self, directory: epath.Path, description: dict):
    self.directory = directory
    self.name, self.variant = description['data_set'], description['variant']
    self.max_delta, self.options = description['max_delta'], description['options']
    self.sentences = list(description['sentences'])
    self.splits = tuple(description['splits'])
    self.extra_features = tuple(description['extra_features'])
    self._sources = {}
    self._lock = threading.Lock()

  def split(self, split: str) -> SplitSource:
    if split not in self.splits:
      raise ValueError(f'{self.name} has splits {self.splits}, not {split!r}')
    with self._lock:
      if split not in self._sources:
        self._sources[split] = SplitSource(self, split)
      return self._sources[split]

  def describe(self) -> str:
    """A few lines: where the store is, samples per split, what was skipped."""
    counts, skips = [], []
    for split in self.splits:
      file = self.directory / split / SPLIT_FILE
      if not file.exists():
        counts.append(f'{split} not prepared')
        continue
      summary = json.loads(file.read_text())
      megabytes = (summary['frames_bytes'] + summary['masks_bytes']) / 2**20
      counts.append(f'{split} {summary["samples"]:,} samples ({summary["videos"]:,} videos, '
                    f'{summary["frames"]:,} frames, {megabytes:,.1f} MiB)')
      skips += [f'  skipped in {split}: {record["count"]} × {reason} (e.g. {record["examples"][0]})'
                for reason, record in summary['skipped'].items()]
    return '\n'.join([f'{self.name} ({self.variant}, δ <= {self.max_delta}) in {self.directory}: '
                      f'{", ".join(counts)}', *skips])


def _earlier_version(directory: epath.Path) -> epath.Path | None:
  """The TFDS directory (<data set>/delta<δ><settings>/<version>/dataset_info.json) that an earlier version
  prepared with the settings of `directory`, if there is one."""
  settings = re.sub(r'_upto\d+$', '', directory.name)
  pattern = re.compile(r'delta\d+' + ('' if settings == 'release' else re.escape(f'_{settings}')))
  if not directory.parent.is_dir():
    return None
  for candidate in sorted(directory.parent.iterdir()):
    if pattern.fullmatch(candidate.name) and candidate.is_dir() and any(
        (version / 'dataset_info.json').exists() for version in candidate.iterdir()):
      return candidate
  return None


def open_store(directory: str | os.PathLike) -> Store:
  """The store in `directory`; a DataError naming it when there is none (or only data of an earlier version)."""
  directory = paths.path(directory)
  file = directory / STORE_FILE
  if not file.exists():
    earlier = _earlier_version(directory)
    if earlier is not None:
      raise DataError(f'{directory.parent.name} in {earlier} was prepared by an earlier version (TFDS examples): '
                      f'prepare it again with {PREPARE_COMMAND} (into {directory}; {earlier} can then be removed)')
    raise DataError(f'{directory} holds no prepared data (no {STORE_FILE}): prepare it with {PREPARE_COMMAND}')
  try:
    description = json.loads(file.read_text())
  except ValueError as error:
    raise DataError(f'{file} is not a store description: {error}') from None
  if not isinstance(description, dict) or description.get('format') != FORMAT:
    found = description.get('format') if isinstance(description, dict) else None
    raise DataError(f'{file} has format {found!r}, this version reads {FORMAT!r}: prepare the data again with '
                    f'{PREPARE_COMMAND}')
  return Store(directory, description)
