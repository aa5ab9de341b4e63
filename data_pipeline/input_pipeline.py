"""tf.data input pipeline: prepared TFDS examples → numpy batches for the model.

Every batch is a dict of numpy arrays (b = the per-process batch size, N = max_words):

  frame             [b, H, W, 3] float32  ImageNet-normalised frame, resized to the config size (bilinear, antialiased)
  frame_difference  [b, H, W, 3] float32  |norm(I_t) − norm(I_{t−δ})|, as the reference computes it
  word_ids          [b, N] int32          rows of the word table (0 = pad "", 1 = outside the table)
  word_mask         [b, N] int32          1 for real tokens (a prefix), as the reference's phrase_mask
  mask              [b, H, W] uint8       the target resized to H×W (nearest; or the reference's bilinear, then > 0)

Evaluation batches add the ground truth at its original size and the ids:

  orig_mask [b, h, w] uint8 (zero-padded to the batch's largest frame), orig_size [b, 2] int32 (h, w),
  has_mask [b] bool, valid [b] bool (False on the padding of the last batch), sentence, video_id [b] str,
  frame_index, prev_frame_index, object_id, expression_id [b] int32, and the data set's extra string features.

Multi-host: each process reads its own contiguous slice of the split. Training slices are equal (the remainder is
dropped) and batches drop their remainder; evaluation slices cover every example exactly once and every process
yields the same number of batches, padding with `valid=False`. Training order is fixed by (seed, epoch) and
`TrainIterator.get_state()` / `set_state()` save and restore the position.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
from data_pipeline.tensorflow_cpu import tf
import tensorflow_datasets as tfds

from data_pipeline import glove, tokenizer
from data_pipeline.normalisation import IMAGENET_MEAN, IMAGENET_STD

MASK_RESIZE_METHODS = ('nearest', 'bilinear_threshold')
IMAGE_FEATURES = ('frame', 'prev_frame', 'mask')
NUMERIC_IDS = ('frame_index', 'prev_frame_index', 'object_id', 'expression_id')


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What happens to one example; built from `config.data` by `Preprocessing.from_config`."""
  height: int = 320
  width: int = 320
  max_words: int = tokenizer.MAX_WORDS
  mask_resize: str = 'nearest'
  horizontal_flip: bool = False  # training only; off by default, as in the reference

  def __post_init__(self):
    if self.height <= 0 or self.width <= 0:
      raise ValueError(f'input size must be positive, got {self.height}x{self.width}')
    if self.mask_resize not in MASK_RESIZE_METHODS:
      raise ValueError(f'data.mask_resize must be one of {MASK_RESIZE_METHODS}, got {self.mask_resize!r}')
    if self.max_words < 1:
      raise ValueError(f'max_words must be positive, got {self.max_words}')

  @classmethod
  def from_config(cls, config) -> 'Preprocessing':
    return cls(height=config.input_height, width=config.input_width, max_words=config.max_words,
               mask_resize=config.data.mask_resize, horizontal_flip=config.data.horizontal_flip)


class SentenceTable:
  """Every sentence of the data, tokenised once in Python (the reference's tokenizer), looked up inside tf.data."""

  def __init__(self, sentences: Sequence[str], word_table: glove.WordTable, max_words: int):
    sentences = sorted(set(sentences))
    if not sentences:
      raise ValueError('SentenceTable needs at least one sentence')
    ids, masks, mirrored_ids = [], [], []
    for sentence in sentences:
      tokens, mask = tokenizer.pad_tokens(sentence, max_words)
      ids.append(word_table.ids(tokens))
      mirrored_ids.append(word_table.ids([tokenizer.MIRRORED_WORDS.get(t, t) for t in tokens]))
      masks.append(mask)
    self.sentences = sentences
    self._ids = tf.constant(np.stack(ids))
    self._mirrored_ids = tf.constant(np.stack(mirrored_ids))
    self._masks = tf.constant(np.stack(masks))
    self._rows = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(sentences), tf.range(len(sentences), dtype=tf.int64)),
        default_value=-1)

  def lookup(self, sentence: tf.Tensor, mirrored: tf.Tensor | bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    row = self._rows.lookup(sentence)
    tf.debugging.assert_non_negative(row, message='a sentence missing from the sentence table (prepare the data '
                                     'set again: its metadata predates this sentence)')
    ids = tf.where(mirrored, tf.gather(self._mirrored_ids, row), tf.gather(self._ids, row))
    return ids, tf.gather(self._masks, row)


def _normalise(image: tf.Tensor) -> tf.Tensor:
  return (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _resize(images: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Frames to the model's input size (float32 0..255): bilinear, antialiased when shrinking, like PIL's resize."""
  return tf.image.resize(tf.cast(images, tf.float32), size, 'bilinear', antialias=True)


def normalised_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 RGB frames [F, h, w, 3] → the model's normalised input [F, height, width, 3] (for prediction)."""
  return _normalise(_resize(frames, (height, width))).numpy().astype(np.float32)


def _decode_image(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def preprocess(example: dict, sentence_table: SentenceTable, options: Preprocessing, *, train: bool,
               flip_seed: tf.Tensor | None = None) -> dict:
  """Decode, resize, normalise, frame difference, tokens; `flip_seed` (stateless, per example) enables flips."""
  size = (options.height, options.width)
  frame = _resize(_decode_image(example['frame'], 3), size)
  previous = _resize(_decode_image(example['prev_frame'], 3), size)
  orig_mask = _decode_image(example['mask'], 1)
  if options.mask_resize == 'nearest':
    mask = tf.image.resize(orig_mask, size, 'nearest')
  else:  # the reference: bilinear with aligned corners, then every positive value is foreground
    mask = tf.compat.v1.image.resize(tf.cast(orig_mask, tf.float32), size, tf.image.ResizeMethod.BILINEAR,
                                     align_corners=True) > 0
  mask = tf.cast(mask[..., 0], tf.uint8)
  mirrored = tf.constant(False)
  if flip_seed is not None and train and options.horizontal_flip:
    mirrored = tf.random.stateless_uniform([], seed=flip_seed) < 0.5
    frame, previous = (tf.where(mirrored, tf.reverse(x, [1]), x) for x in (frame, previous))
    mask = tf.where(mirrored, tf.reverse(mask, [1]), mask)
  frame, previous = _normalise(frame), _normalise(previous)
  word_ids, word_mask = sentence_table.lookup(example['sentence'], mirrored)
  out = {
      'frame': tf.cast(frame, tf.float32),
      'frame_difference': tf.cast(tf.abs(frame - previous), tf.float32),
      'word_ids': word_ids,
      'word_mask': word_mask,
      'mask': mask,
  }
  if not train:
    out['orig_mask'] = orig_mask[..., 0]
    for key, value in example.items():
      if key not in IMAGE_FEATURES:
        out[key] = value
  return out


def _read(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
  """Examples in their stored order, images left encoded (decoded in `preprocess`)."""
  decoders = {key: tfds.decode.SkipDecoding() for key in IMAGE_FEATURES}
  dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                               read_config=tfds.ReadConfig(interleave_cycle_length=1))
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def _num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  if split not in builder.info.splits:
    raise ValueError(f'{builder.name} has splits {sorted(builder.info.splits)}, not {split!r}')
  return builder.info.splits[split].num_examples


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'the global batch size ({global_batch_size}) must be a positive multiple of the number of '
                     f'processes ({process_count})')
  return global_batch_size // process_count


class TrainIterator:
  """Endless training batches in an order fixed by (seed, epoch); the position is {'epoch', 'batch'}."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, sentence_table: SentenceTable,
               options: Preprocessing, *, global_batch_size: int, seed: int, shuffle_buffer: int = 10_000,
               process_index: int = 0, process_count: int = 1, num_threads: int | None = None):
    self.batch_size = _local_batch_size(global_batch_size, process_count)
    per_process = _num_examples(builder, split) // process_count
    self.batches_per_epoch = per_process // self.batch_size
    if self.batches_per_epoch == 0:
      raise ValueError(f'{builder.name}/{split} has {per_process} examples per process, fewer than one batch of '
                       f'{self.batch_size}')
    self._split = f'{split}[{process_index * per_process}:{(process_index + 1) * per_process}]'
    self._builder, self._table, self._options = builder, sentence_table, options
    self._seed, self._shuffle_buffer, self._num_threads = seed, shuffle_buffer, num_threads
    self._iterator = None
    self.set_state({'epoch': 0, 'batch': 0})

  def get_state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'batch': self._batch}

  def set_state(self, state: dict[str, int]) -> None:
    epoch, batch = int(state['epoch']), int(state['batch'])
    if epoch < 0 or batch < 0:
      raise ValueError(f'invalid iterator position {state}')
    if batch >= self.batches_per_epoch:  # restored onto more processes (smaller slices): the epoch is over
      epoch, batch = epoch + 1, 0
    self._epoch, self._batch = epoch, batch
    self._iterator = None

  def _epoch_dataset(self) -> tf.data.Dataset:
    epoch_seed = self._seed * 100_003 + self._epoch  # one permutation per (seed, epoch)
    dataset = _read(self._builder, self._split)
    dataset = dataset.shuffle(self._shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    dataset = dataset.enumerate().skip(self._batch * self.batch_size)
    dataset = dataset.map(
        lambda index, example: preprocess(example, self._table, self._options, train=True,
                                          flip_seed=tf.stack([tf.cast(epoch_seed, tf.int64), index])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(self.batch_size, drop_remainder=True).prefetch(2)
    if self._num_threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = self._num_threads
      dataset = dataset.with_options(options)
    return dataset

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._iterator = iter(tfds.as_numpy(self._epoch_dataset()))
    batch = next(self._iterator)
    self._batch += 1
    if self._batch == self.batches_per_epoch:
      self._epoch, self._batch, self._iterator = self._epoch + 1, 0, None
    return batch


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields for a split of num_examples (the largest process slice, rounded up)."""
  local = _local_batch_size(global_batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / local)


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  missing = size - len(batch['valid'])
  if missing == 0:
    return batch
  padded = {}
  for key, value in batch.items():
    filler = np.zeros((missing, *value.shape[1:]), value.dtype)
    padded[key] = np.concatenate([value, filler])
  return padded


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, sentence_table: SentenceTable,
                 options: Preprocessing, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example of the split exactly once across processes, in stored order; `valid` marks real examples."""
  batch_size = _local_batch_size(global_batch_size, process_count)
  total = _num_examples(builder, split)
  start, end = process_index * total // process_count, (process_index + 1) * total // process_count
  num_batches = num_eval_batches(total, global_batch_size, process_count)
  produced, last = 0, None
  if end > start:
    for batch in _numpy(_eval_dataset(builder, f'{split}[{start}:{end}]', sentence_table, options, batch_size)):
      produced, last = produced + 1, _pad_batch(batch, batch_size)
      yield last
  if produced < num_batches:  # another process has one batch more: keep the step counts equal
    if last is None:  # this process has no examples at all: take the shapes from the split's first one
      last = _pad_batch(next(_numpy(_eval_dataset(builder, f'{split}[:1]', sentence_table, options, batch_size))),
                        batch_size)
    filler = {key: np.zeros_like(value) for key, value in last.items()}
    for _ in range(num_batches - produced):
      yield filler


def _eval_dataset(builder, split, sentence_table, options, batch_size) -> tf.data.Dataset:
  dataset = _read(builder, split).map(lambda example: preprocess(example, sentence_table, options, train=False),
                                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.map(lambda example: {**example, 'valid': tf.constant(True)})
  return dataset.padded_batch(batch_size).prefetch(2)


def _numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Batches as numpy, strings decoded to str."""
  for batch in tfds.as_numpy(dataset):
    yield {key: np.char.decode(value.astype(bytes), 'utf-8') if value.dtype == object else value
           for key, value in batch.items()}
