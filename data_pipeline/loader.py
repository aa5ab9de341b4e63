"""Grain input pipeline: samples of a frame store (`data_pipeline.store.SplitSource`) → numpy batches for the model.

Batches have the keys and dtypes of `data_pipeline.input_pipeline` (its module docstring lists them), computed by its
`preprocess`: each example is decoded, resized and normalised by one call of that function traced once into a
graph, in grain's reading threads. The previous frame is the one δ (`delta`) frames back, looked up by the store.

Training (`TrainIterator`): epoch e is a permutation of all samples seeded by (seed, e), cut to whole global batches;
global batch k of an epoch is permuted positions [k·B, (k+1)·B), and process p of P takes rows [p·B/P, (p+1)·B/P)
of it and reads only those samples, so P processes together see exactly the global batches of one. Flips are drawn
per example from (seed, epoch, position). The position is {'epoch', 'batch'} in global batches, the same on every
process and for any number of processes.

Evaluation (`eval_batches`): every sample exactly once across processes (contiguous slices, in stored order), the
same number of batches on every process, padded with `valid=False` rows.
"""

import contextlib
import functools
import math
import os
import sys
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from data_pipeline import input_pipeline
from data_pipeline.input_pipeline import Preprocessing, SentenceTable
from data_pipeline.tensorflow_cpu import tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context as tf_context

MODEL_INPUTS = ('frame', 'frame_difference', 'word_ids', 'word_mask', 'mask')
INT32_FEATURES = input_pipeline.NUMERIC_IDS + ('orig_size',)
# What the graph takes: the encoded images and the sentence, as one string vector (a call with one input tensor
# costs half as much Python as one with four); the other fields of an example stay in Python.
ENCODED_KEYS = (*input_pipeline.IMAGE_FEATURES, 'sentence')
ENCODED_SPEC = tf.TensorSpec([len(ENCODED_KEYS)], tf.string)
FLIP_SEED_SPEC = tf.TensorSpec([2], tf.int64)


def _literal_graph_calls() -> tf_context.FunctionCallOptions:
  """Function calls that run the traced graph as written: Grappler's constant folding changes the normalisation's
  float results in the last bit, while tf.data's map functions (today's pipeline) compute what eager ops compute."""
  config = config_pb2.ConfigProto(allow_soft_placement=True)
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  return tf_context.FunctionCallOptions(config_proto=config)


_LITERAL_GRAPH_CALLS = _literal_graph_calls()


@contextlib.contextmanager
def _literal_graph():
  """Calls of tf.functions inside run unrewritten (TensorFlow keeps the options per thread; a function is
  optimised once per distinct options, at its first call with them)."""
  context = tf_context.context()
  previous = context.function_call_options
  context.function_call_options = _LITERAL_GRAPH_CALLS
  try:
    yield
  finally:
    context.function_call_options = previous


def _local_batch_size(global_batch_size: int, process_count: int, field: str) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'{field} ({global_batch_size}) must be a positive multiple of the number of processes '
                     f'({process_count})')
  return global_batch_size // process_count


def _read_options(num_threads: int | None, examples_ahead: int) -> grain.ReadOptions:
  """Threads (None or 0: every core this process may use) and a buffer of examples that keeps them all busy."""
  if num_threads is None or num_threads == 0:
    num_threads = len(os.sched_getaffinity(0))
  elif num_threads < 0:
    raise ValueError(f'config.data.num_threads must be 0 (every core) or positive, got {num_threads}')
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(examples_ahead, num_threads))


class _Preprocessor:
  """`input_pipeline.preprocess` of one example as one graph execution (called concurrently by grain's threads)."""

  def __init__(self, sentence_table: SentenceTable, options: Preprocessing, *, train: bool):
    self._train = train
    self._flips = train and options.horizontal_flip
    keys = MODEL_INPUTS if train else (*MODEL_INPUTS, 'orig_mask')

    def graph(encoded, flip_seed):
      example = dict(zip(ENCODED_KEYS, tf.unstack(encoded)))
      out = input_pipeline.preprocess(example, sentence_table, options, train=train, flip_seed=flip_seed)
      return {key: out[key] for key in keys}

    if self._flips:
      function = tf.function(graph, input_signature=[ENCODED_SPEC, FLIP_SEED_SPEC])
    else:
      function = tf.function(lambda encoded: graph(encoded, None), input_signature=[ENCODED_SPEC])
    # Traced here, once: the threads then share one concrete function instead of racing to trace it.
    self._function = function.get_concrete_function()

  def __call__(self, example: dict, flip_seed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    encoded = tf.constant([example[key] for key in ENCODED_KEYS])
    with _literal_graph():
      tensors = self._function(encoded, flip_seed) if self._flips else self._function(encoded)
    out = {key: value.numpy() for key, value in tensors.items()}
    if not self._train:
      for key, value in example.items():
        if key not in input_pipeline.IMAGE_FEATURES:
          out[key] = np.asarray(value, np.int32) if key in INT32_FEATURES else np.asarray(value)
      out['valid'] = np.True_
    return out


def _derived_seeds(seed: int) -> tuple[int, int]:
  """32-bit seeds of the permutations and of the flips. Hashed: grain seeds epoch e of a shuffle with seed + e, so
  runs with neighbouring seeds would otherwise share their permutations one epoch apart."""
  shuffle_seed, flip_seed = np.random.SeedSequence(seed % 2**64).generate_state(2)
  return int(shuffle_seed), int(flip_seed)


def _with_flip_seed(sample: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
  return sample, rng.integers(np.iinfo(np.int64).max, size=2, dtype=np.int64)


class TrainIterator:
  """Endless training batches (dicts of numpy arrays) of this process; the position is {'epoch', 'batch'}."""

  def __init__(self, source, sentence_table: SentenceTable, options: Preprocessing, *, delta: int,
               global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
               num_threads: int | None = None):
    self.batch_size = _local_batch_size(global_batch_size, process_count, 'config.train.batch_size')
    self.batches_per_epoch = len(source) // global_batch_size
    if self.batches_per_epoch == 0:
      raise ValueError(f'{source.name}/{source.split} has {len(source)} samples, fewer than one global batch '
                       f'(config.train.batch_size = {global_batch_size})')
    read_options = _read_options(num_threads, 2 * self.batch_size)
    self._global_batch_size, self._process_index = global_batch_size, process_index
    self._source, self._delta = source, delta
    self._preprocess = _Preprocessor(sentence_table, options, train=True)
    shuffle_seed, flip_seed = _derived_seeds(seed)
    # Position q = e·(samples per epoch) + i → (sample at i of epoch e's permutation, its flip seed). The slice
    # before repeat cuts every epoch to whole batches, and grain reseeds the permutation of each epoch (seed + e).
    self._positions = (grain.MapDataset.range(len(source)).shuffle(shuffle_seed)
                       [:self.batches_per_epoch * global_batch_size].repeat()
                       .random_map(_with_flip_seed, seed=flip_seed))
    local = grain.MapDataset.range(sys.maxsize).map(self._example)
    self._iterator = iter(local.to_iter_dataset(read_options).batch(self.batch_size, drop_remainder=True))
    self._step = 0

  def _example(self, local_index: int) -> dict[str, np.ndarray]:
    """The local_index-th example of this process: its row of its global batch, read and preprocessed."""
    step, row = divmod(local_index, self.batch_size)
    sample, flip_seed = self._positions[step * self._global_batch_size + self._process_index * self.batch_size
                                        + row]
    return self._preprocess(self._source.example(int(sample), self._delta), flip_seed)

  def get_state(self) -> dict[str, int]:
    epoch, batch = divmod(self._step, self.batches_per_epoch)
    return {'epoch': epoch, 'batch': batch}

  def set_state(self, state: dict[str, int]) -> None:
    epoch, batch = int(state['epoch']), int(state['batch'])
    if epoch < 0 or batch < 0:
      raise ValueError(f'invalid iterator position {state}')
    if batch >= self.batches_per_epoch:  # saved with larger global batches or more samples: that epoch is over
      epoch, batch = epoch + 1, 0
    self._step = epoch * self.batches_per_epoch + batch
    grain.experimental.set_next_index(self._iterator, self._step)  # drops what was read ahead

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._step += 1
    return batch


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields for a split of num_examples (the largest process slice, rounded up)."""
  local = _local_batch_size(global_batch_size, process_count, 'config.eval.batch_size')
  return math.ceil(math.ceil(num_examples / process_count) / local)


def _eval_batch(examples: Sequence[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
  """Stacked examples, `orig_mask` zero-padded to the largest frame and rows zero-padded to batch_size."""
  height = max(example['orig_mask'].shape[0] for example in examples)
  width = max(example['orig_mask'].shape[1] for example in examples)
  batch = {}
  for key in examples[0]:
    values = [example[key] for example in examples]
    if key == 'orig_mask':
      values = [np.pad(mask, ((0, height - mask.shape[0]), (0, width - mask.shape[1]))) for mask in values]
    stacked = np.stack(values)
    batch[key] = np.concatenate([stacked, np.zeros((batch_size - len(values), *stacked.shape[1:]), stacked.dtype)])
  return batch


def eval_batches(source, sentence_table: SentenceTable, options: Preprocessing, *, delta: int,
                 global_batch_size: int, process_index: int = 0, process_count: int = 1,
                 num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every sample of the split exactly once across processes, in stored order; `valid` marks real examples and
  string fields are str."""
  batch_size = _local_batch_size(global_batch_size, process_count, 'config.eval.batch_size')
  total = len(source)
  start, end = process_index * total // process_count, (process_index + 1) * total // process_count
  num_batches = num_eval_batches(total, global_batch_size, process_count)
  preprocess = _Preprocessor(sentence_table, options, train=False)
  examples = grain.MapDataset.range(start, end).map(lambda index: preprocess(source.example(index, delta)))
  batches = examples.to_iter_dataset(_read_options(num_threads, 2 * batch_size)).batch(
      batch_size, batch_fn=functools.partial(_eval_batch, batch_size=batch_size))
  produced, last = 0, None
  iterator = iter(batches)
  try:
    for batch in iterator:
      produced, last = produced + 1, batch
      yield batch
  finally:
    iterator.close()  # stops the reading threads when the caller leaves early
  if produced < num_batches:  # another process has one batch more: keep the step counts equal
    if last is None:  # this process has no samples at all: take the shapes from the split's first one
      last = _eval_batch([preprocess(source.example(0, delta))], batch_size)
    filler = {key: np.zeros_like(value) for key, value in last.items()}
    for _ in range(num_batches - produced):
      yield filler
