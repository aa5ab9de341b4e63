"""The grain loader: values of one example, order, resumption, processes, flips, evaluation batches, bad input."""

import collections
import json

import cv2
import numpy as np
import pytest

from data_pipeline import glove, input_pipeline, loader, readers, store, synthetic_rvos
from data_pipeline.tensorflow_cpu import tf

# Two videos of different frame sizes (height, width, frames), two expressions each: 14 samples.
SMALL = ((24, 32, 5), (20, 36, 2))
SENTENCES = (('the cat on the left', 'a dog'), ('the person on the left', 'a red car'))
DELTA = 2


def _jpeg(image: np.ndarray) -> bytes:
  ok, encoded = cv2.imencode('.jpg', image)
  assert ok
  return encoded.tobytes()


def _png(mask: np.ndarray) -> bytes:
  ok, encoded = cv2.imencode('.png', mask)
  assert ok
  return encoded.tobytes()


class FakeSource:
  """A SplitSource of in-memory samples (videos sorted, then expressions, then frames); records `example` calls.
  The expression id is the sample's index, so that tests can name the samples of a batch."""
  name, split, extra_features = 'fake', 'train', ('expression_set',)

  def __init__(self, videos=SMALL, seed=0):
    rng = np.random.default_rng(seed)
    self.frames, self.samples, self.calls = {}, [], []
    for video, (height, width, num_frames) in enumerate(videos):
      for frame in range(num_frames):
        self.frames[video, frame] = _jpeg(rng.integers(0, 256, (height, width, 3), np.uint8))
      for expression, sentence in enumerate(SENTENCES[video]):
        for frame in range(num_frames):
          mask = np.zeros((height, width), np.uint8)
          mask[2 + frame:10 + frame, 1 + 4 * expression:9 + 4 * expression] = 1  # left of centre: flips show
          self.samples.append((video, expression, frame, sentence, _png(mask), (height, width)))

  def __len__(self):
    return len(self.samples)

  def example(self, index: int, delta: int) -> dict:
    self.calls.append(index)
    video, expression, frame, sentence, mask, size = self.samples[index]
    previous = max(0, frame - delta)
    return {'frame': self.frames[video, frame], 'prev_frame': self.frames[video, previous], 'mask': mask,
            'has_mask': True, 'sentence': sentence, 'video_id': f'video{video}', 'frame_index': frame,
            'prev_frame_index': previous, 'object_id': expression + 1, 'expression_id': index,
            'orig_size': np.array(size, np.int32), 'split': self.split, 'expression_set': f'set{expression}'}


@pytest.fixture(scope='module')
def words():
  sentences = [s for pair in SENTENCES for s in pair]
  table = glove.learned(glove.vocabulary(sentences), dim=4)  # holds "right": the mirror of "left"
  return input_pipeline.SentenceTable(sentences, table, 8), table


def small(**overrides):
  return input_pipeline.Preprocessing(**{'height': 16, 'width': 24, 'max_words': 8, **overrides})


def batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def sample_names(source, sentence_table):
  """Unflipped training rows (frame and words) → their sample index, from the evaluation batches."""
  names = {}
  for batch in loader.eval_batches(source, sentence_table, small(), delta=DELTA, global_batch_size=4):
    for row in np.flatnonzero(batch['valid']):
      names[batch['frame'][row].tobytes() + batch['word_ids'][row].tobytes()] = int(batch['expression_id'][row])
  return names


def rows(batch, names):
  return [names[frame.tobytes() + ids.tobytes()] for frame, ids in zip(batch['frame'], batch['word_ids'])]


def tf_data_preprocess(examples, sentence_table, options, train):
  """Today's pipeline on the examples: `preprocess` mapped over a tf.data dataset of their encoded fields."""
  encoded = {key: [example[key] for example in examples] for key in loader.ENCODED_KEYS}
  dataset = tf.data.Dataset.from_tensor_slices(encoded).map(
      lambda e: input_pipeline.preprocess(e, sentence_table, options, train=train))
  return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize('mask_resize', input_pipeline.MASK_RESIZE_METHODS)
def test_values_equal_todays_preprocessing(words, mask_resize):
  sentence_table, _ = words
  source, options = FakeSource(), small(mask_resize=mask_resize)
  evaluation = list(loader.eval_batches(source, sentence_table, options, delta=DELTA, global_batch_size=1))
  assert len(evaluation) == len(source)
  index = 7  # the second expression of the first video, frame 2: its previous frame is frame 0
  batch = evaluation[index]
  expected, = tf_data_preprocess([source.example(index, DELTA)], sentence_table, options, train=False)
  for key in (*loader.MODEL_INPUTS, 'orig_mask'):
    assert batch[key].dtype == expected[key].dtype, key
    np.testing.assert_array_equal(batch[key][0], expected[key], err_msg=key)
  assert batch['frame'].shape == (1, 16, 24, 3) and batch['orig_mask'].shape == (1, 24, 32)
  assert batch['sentence'][0] == 'a dog' and batch['video_id'][0] == 'video0' and batch['expression_set'][0] == 'set1'
  assert batch['prev_frame_index'][0] == 0 and batch['frame_index'].dtype == np.int32 and batch['valid'].all()

  # Training rows (no flips): each is today's training preprocessing of one sample, bit for bit.
  todays = {b''.join(out[key].tobytes() for key in loader.MODEL_INPUTS): sample for sample, out in enumerate(
      tf_data_preprocess([source.example(i, DELTA) for i in range(len(source))], sentence_table, options, True))}
  iterator = loader.TrainIterator(source, sentence_table, options, delta=DELTA, global_batch_size=4, seed=0)
  seen = [todays[b''.join(batch[key][row].tobytes() for key in loader.MODEL_INPUTS)]
          for batch in batches(iterator, iterator.batches_per_epoch) for row in range(4)]
  assert len(set(seen)) == 12


def test_training_order_is_fixed_by_seed_and_resumable(words):
  sentence_table, _ = words
  source = FakeSource()
  names = sample_names(source, sentence_table)

  def make(seed):
    return loader.TrainIterator(source, sentence_table, small(), delta=DELTA, global_batch_size=4, seed=seed,
                                num_threads=2)

  first = make(0)
  assert first.batches_per_epoch == len(source) // 4 == 3 and first.batch_size == 4
  run = batches(first, 7)
  assert first.get_state() == {'epoch': 2, 'batch': 1}
  order = [rows(batch, names) for batch in run]
  epochs = [sum(order[e * 3:(e + 1) * 3], []) for e in range(2)]
  for epoch in epochs:  # a permutation of all samples, cut to whole global batches
    assert len(set(epoch)) == 12 and set(epoch) <= set(range(len(source)))
  assert epochs[0] != epochs[1]  # a new permutation each epoch
  assert [rows(b, names) for b in batches(make(0), 7)] == order
  assert rows(batches(make(1), 1)[0], names) != order[0]  # another seed, another order

  partway = make(0)
  batches(partway, 2)
  state = json.loads(json.dumps(partway.get_state()))  # checkpoints hold the position as JSON
  assert state == {'epoch': 0, 'batch': 2}
  resumed = make(0)
  resumed.set_state(state)
  for expected, batch in zip(run[2:], batches(resumed, 3)):  # across the end of epoch 0
    for key in loader.MODEL_INPUTS:
      np.testing.assert_array_equal(batch[key], expected[key])
  assert resumed.get_state() == {'epoch': 1, 'batch': 2}
  first.set_state({'epoch': 1, 'batch': 0})  # back, after reading ahead
  assert rows(next(first), names) == order[3]
  with pytest.raises(ValueError, match='invalid iterator position'):
    resumed.set_state({'epoch': 0, 'batch': -1})
  resumed.set_state({'epoch': 0, 'batch': 3})  # past the end (a larger global batch then): the next epoch
  assert resumed.get_state() == {'epoch': 1, 'batch': 0}


def test_processes_read_their_rows_of_the_global_batches(words):
  sentence_table, _ = words
  videos = ((24, 32, 10), (20, 36, 10))  # 40 samples: a process's rows of a few batches are a small share
  options, steps, processes = small(horizontal_flip=True), 12, 2  # 12 steps: into the second epoch

  def run(process_index, process_count):
    source = FakeSource(videos)
    iterator = loader.TrainIterator(source, sentence_table, options, delta=DELTA,
                                    global_batch_size=4, seed=3, process_index=process_index,
                                    process_count=process_count, num_threads=2)
    return source, iterator, batches(iterator, steps)

  _, single, global_batches = run(0, 1)
  assert single.batches_per_epoch == 10
  names = sample_names(FakeSource(videos), sentence_table)
  read_ahead = 3  # batches a process may have read beyond those it returned (its grain buffer)
  unflipped = loader.TrainIterator(FakeSource(videos), sentence_table, small(), delta=DELTA, global_batch_size=4,
                                   seed=3, num_threads=2)
  positions = [rows(batch, names) for batch in batches(unflipped, steps + read_ahead)]  # samples by global row
  local = []
  for process in range(processes):
    source, iterator, process_batches = run(process, processes)
    assert iterator.batch_size == 2 and iterator.batches_per_epoch == 10
    local.append(process_batches)
    own = [sample for step in positions for sample in step[2 * process:2 * process + 2]]
    calls = collections.Counter(source.calls)
    assert not collections.Counter(own[:2 * steps]) - calls  # read every sample of its rows...
    assert not calls - collections.Counter(own)  # ...and nothing of the other process's rows
  for step, expected in enumerate(global_batches):  # together: the global batches of one process, flips included
    for key in loader.MODEL_INPUTS:
      np.testing.assert_array_equal(np.concatenate([local[p][step][key] for p in range(processes)]), expected[key])


def test_horizontal_flip_mirrors_image_mask_and_sentence(words):
  sentence_table, table = words
  source = FakeSource()

  def epoch(flip, state=None):
    iterator = loader.TrainIterator(source, sentence_table, small(horizontal_flip=flip), delta=DELTA,
                                    global_batch_size=1, seed=0)
    if state:
      iterator.set_state(state)
    return batches(iterator, iterator.batches_per_epoch - (state or {'batch': 0})['batch'])

  plain, flipped = epoch(False), epoch(True)
  left, right = table.ids(['left'])[0], table.ids(['right'])[0]
  mirrored = 0
  for a, b in zip(plain, flipped):
    if np.array_equal(a['mask'], b['mask']):
      np.testing.assert_array_equal(a['frame'], b['frame'])
      np.testing.assert_array_equal(a['word_ids'], b['word_ids'])
      continue
    mirrored += 1
    np.testing.assert_array_equal(b['mask'], a['mask'][:, :, ::-1])
    np.testing.assert_array_equal(b['frame'], a['frame'][:, :, ::-1])
    np.testing.assert_array_equal(b['frame_difference'], a['frame_difference'][:, :, ::-1])
    np.testing.assert_array_equal(b['word_ids'], np.where(a['word_ids'] == left, right, a['word_ids']))
  assert 0 < mirrored < len(plain)
  assert any((a['word_ids'] == left).any() for a in plain)
  for a, b in zip(flipped[5:], epoch(True, {'epoch': 0, 'batch': 5})):  # the same flips after resuming
    np.testing.assert_array_equal(a['frame'], b['frame'])


def test_evaluation_covers_every_sample_once(words):
  sentence_table, _ = words
  source = FakeSource()
  total, seen, counts, mask_shapes = len(source), [], [], set()
  masks = {i: cv2.imdecode(np.frombuffer(source.samples[i][4], np.uint8), cv2.IMREAD_UNCHANGED) for i in range(total)}
  for process in range(3):
    process_batches = list(loader.eval_batches(source, sentence_table, small(), delta=DELTA, global_batch_size=6,
                                               process_index=process, process_count=3))
    counts.append(len(process_batches))
    for batch in process_batches:
      assert len(batch['valid']) == 2 and batch['frame'].shape == (2, 16, 24, 3)
      valid = np.flatnonzero(batch['valid'])
      if len(valid):  # the mask of the batch's largest frame (filler batches copy the shapes of the last one)
        assert batch['orig_mask'].shape[1:] == tuple(batch['orig_size'][valid].max(0))
        mask_shapes.add(batch['orig_mask'].shape[1:])
      for row in valid:
        index = int(batch['expression_id'][row])
        seen.append(index)
        height, width = batch['orig_size'][row]
        np.testing.assert_array_equal(batch['orig_mask'][row, :height, :width], masks[index])
        assert not batch['orig_mask'][row, height:].any() and not batch['orig_mask'][row, :, width:].any()
        assert type(batch['video_id'][row]) is np.str_ and batch['video_id'][row] == f'video{source.samples[index][0]}'
      padding = ~batch['valid']
      assert not batch['frame'][padding].any() and (batch['sentence'][padding] == '').all()
  assert sorted(seen) == list(range(total))  # every sample exactly once
  assert counts == [loader.num_eval_batches(total, 6, 3)] * 3 == [3] * 3  # process 0 (4 samples) pads a batch
  assert mask_shapes == {(24, 32), (20, 36), (24, 36)}  # (24, 36): samples 9 (24x32) and 10 (20x36) together


def test_bad_settings_are_named(words):
  sentence_table, _ = words
  source = FakeSource()
  with pytest.raises(ValueError, match=r'config.train.batch_size \(3\) must be a positive multiple of the number '
                                       r'of processes \(2\)'):
    loader.TrainIterator(source, sentence_table, small(), delta=DELTA, global_batch_size=3, seed=0, process_count=2)
  with pytest.raises(ValueError, match=r'fake/train has 14 samples, fewer than one global batch '
                                       r'\(config.train.batch_size = 16\)'):
    loader.TrainIterator(source, sentence_table, small(), delta=DELTA, global_batch_size=16, seed=0)
  with pytest.raises(ValueError, match='config.data.num_threads must be 0'):
    loader.TrainIterator(source, sentence_table, small(), delta=DELTA, global_batch_size=2, seed=0, num_threads=-1)
  with pytest.raises(ValueError, match=r'config.eval.batch_size \(4\)'):
    next(loader.eval_batches(source, sentence_table, small(), delta=DELTA, global_batch_size=4, process_count=3))
  assert not source.calls


def test_a_store_of_the_synthetic_set(tmp_path):
  config = synthetic_rvos.SyntheticConfig(height=32, width=48, num_frames=6, num_videos=(
      ('train', 2), ('validation', 1), ('test', 1), ('test_compositional', 1)))
  synthetic_rvos.generate(tmp_path / 'release', config)
  prepared = store.prepare_store(readers.SyntheticRVOSReader(tmp_path / 'release'), tmp_path / 'store',
                                 progress=False)
  table = glove.learned(glove.vocabulary(prepared.sentences), dim=4)
  sentence_table = input_pipeline.SentenceTable(prepared.sentences, table, 8)
  options = small()

  source = prepared.split('validation')
  expected = tf_data_preprocess([source.example(i, DELTA) for i in range(len(source))], sentence_table, options,
                                train=False)
  evaluated = list(loader.eval_batches(source, sentence_table, options, delta=DELTA, global_batch_size=4))
  rows_in_order = [(batch, row) for batch in evaluated for row in np.flatnonzero(batch['valid'])]
  assert len(rows_in_order) == len(source) == len(expected)
  for (batch, row), today in zip(rows_in_order, expected):
    for key in loader.MODEL_INPUTS:
      np.testing.assert_array_equal(batch[key][row], today[key], err_msg=key)
    height, width = batch['orig_size'][row]
    np.testing.assert_array_equal(batch['orig_mask'][row, :height, :width], today['orig_mask'])
    assert batch['sentence'][row] == today['sentence'].decode() and batch['cue'][row] in synthetic_rvos.CUES

  source = prepared.split('train')
  todays = {b''.join(out[key].tobytes() for key in loader.MODEL_INPUTS) for out in tf_data_preprocess(
      [source.example(i, DELTA) for i in range(len(source))], sentence_table, options, train=True)}
  iterator = loader.TrainIterator(source, sentence_table, options, delta=DELTA, global_batch_size=4, seed=0)
  seen = [b''.join(batch[key][row].tobytes() for key in loader.MODEL_INPUTS)
          for batch in batches(iterator, iterator.batches_per_epoch) for row in range(4)]
  assert len(set(seen)) == len(seen) == len(source) // 4 * 4 and set(seen) <= todays
