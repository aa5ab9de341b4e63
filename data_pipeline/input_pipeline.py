"""What happens to one example on its way to the model: decode, resize, normalise, frame difference, tokens.

`preprocess` works on one example of a frame store (`data_pipeline.store.SplitSource.example`) in TensorFlow
(tf.image); `data_pipeline/loader.py` calls it in its reading threads and batches the results. Every batch is a
dict of numpy arrays (b = the per-process batch size, N = max_words):

  frame             [b, H, W, 3] float32  ImageNet-normalised frame, resized to the config size (bilinear, antialiased)
  frame_difference  [b, H, W, 3] float32  |norm(I_t) − norm(I_{t−δ})|, as the reference computes it
  word_ids          [b, N] int32          rows of the word table (0 = pad "", 1 = outside the table)
  word_mask         [b, N] int32          1 for real tokens (a prefix), as the reference's phrase_mask
  mask              [b, H, W] uint8       the target resized to H×W (nearest; or the reference's bilinear, then > 0)

Evaluation batches add the ground truth at its original size and the ids:

  orig_mask [b, h, w] uint8 (zero-padded to the batch's largest frame), orig_size [b, 2] int32 (h, w),
  has_mask [b] bool, valid [b] bool (False on the padding of the last batch), sentence, video_id [b] str,
  frame_index, prev_frame_index, object_id, expression_id [b] int32, and the data set's extra string features.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from data_pipeline.tensorflow_cpu import tf

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
