"""The tf.data pipeline: values of one example, order, resumption, multi-process slicing, flips, prepare()."""

import numpy as np
import pytest

import data_fakes as fakes
from configs import tiny
from data_pipeline import builders, glove, input_pipeline, prepare, tokenizer

MEAN, STD = np.array(input_pipeline.IMAGENET_MEAN), np.array(input_pipeline.IMAGENET_STD)


@pytest.fixture(scope='module')
def youtube(tmp_path_factory):
  """The fake YouTube-VOS release, prepared, with a learned word table."""
  root = tmp_path_factory.mktemp('youtube')
  fakes.write_youtube_vos(root / 'release')
  builder = builders.make_builder('ref_youtube_vos', root / 'tfds')
  builders.prepare(builder, root / 'release')
  sentences = builder.info.metadata[builders.METADATA_SENTENCES]
  table = glove.learned(glove.vocabulary(sentences), dim=4)
  return builder, input_pipeline.SentenceTable(sentences, table, 8), table


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  return config, prepare.prepare(config)


def small(**overrides):
  return input_pipeline.Preprocessing(**{'height': 16, 'width': 24, 'max_words': 8, **overrides})


def test_one_example_values(youtube):
  builder, sentences, table = youtube
  batches = list(input_pipeline.eval_batches(builder, 'validation', sentences, small(), global_batch_size=6))
  assert len(batches) == 1
  batch = batches[0]
  order = np.argsort(batch['frame_index'])
  frame = fakes.frame_value(2) / 255.0  # frame 10 is the 3rd stored frame (grey 40); its previous is frame 5
  previous = fakes.frame_value(1) / 255.0
  i = order[2]
  assert batch['frame_index'][i] == 10 and batch['prev_frame_index'][i] == 5
  np.testing.assert_allclose(batch['frame'][i], np.broadcast_to((frame - MEAN) / STD, (16, 24, 3)), atol=0.02)
  np.testing.assert_allclose(batch['frame_difference'][i], np.broadcast_to(np.abs(frame - previous) / STD,
                                                                          (16, 24, 3)), atol=0.02)
  tokens, mask = tokenizer.pad_tokens('a cat', 8)
  np.testing.assert_array_equal(batch['word_ids'][i], table.ids(tokens))
  np.testing.assert_array_equal(batch['word_mask'][i], mask)
  assert batch['orig_mask'].shape[1:] == (fakes.HEIGHT, fakes.WIDTH) and batch['orig_size'][i].tolist() == [32, 48]
  assert batch['frame'].dtype == np.float32 and batch['word_ids'].dtype == np.int32
  assert batch['video_id'][i] == 'v_valid' and batch['sentence'][i] == 'a cat' and batch['valid'].all()


def test_mask_resizing(youtube):
  builder, sentences, _ = youtube
  nearest = next(input_pipeline.TrainIterator(builder, 'train', sentences, small(height=64, width=96),
                                              global_batch_size=2, seed=0))
  bilinear = next(input_pipeline.TrainIterator(builder, 'train', sentences,
                                               small(height=64, width=96, mask_resize='bilinear_threshold'),
                                               global_batch_size=2, seed=0))
  assert nearest['mask'].shape == (2, 64, 96) and set(np.unique(nearest['mask'])) <= {0, 1}
  # Upsampling by 2: nearest doubles the 6x8 rectangle (192 pixels); bilinear-then->0 also takes the border.
  assert (nearest['mask'].sum((1, 2)) == 6 * 8 * 4).all()
  assert (bilinear['mask'] >= nearest['mask']).all() and (bilinear['mask'].sum() > nearest['mask'].sum())


def batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_training_order_is_fixed_by_seed_and_resumable(synthetic):
  config, prepared = synthetic
  builder = prepared['synthetic_rvos']
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), prepare.word_table(prepared), 6)
  options = input_pipeline.Preprocessing.from_config(config)

  def make(seed):
    return input_pipeline.TrainIterator(builder, 'train', sentences, options, global_batch_size=8, seed=seed,
                                        shuffle_buffer=1000)

  first = make(0)
  per_epoch = first.batches_per_epoch
  assert per_epoch == builder.info.splits['train'].num_examples // 8
  run = batches(first, per_epoch + 3)
  assert first.get_state() == {'epoch': 1, 'batch': 3}
  again = batches(make(0), per_epoch + 3)
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a['frame'], b['frame'])
  assert not np.array_equal(run[0]['frame'], batches(make(1), 1)[0]['frame'])  # another seed, another order
  assert not np.array_equal(run[0]['frame'], run[per_epoch]['frame'])  # a new permutation each epoch

  resumed = make(0)
  resumed.set_state({'epoch': 0, 'batch': 2})
  for a, b in zip(run[2:], batches(resumed, per_epoch + 1)):
    np.testing.assert_array_equal(a['frame'], b['frame'])
    np.testing.assert_array_equal(a['word_ids'], b['word_ids'])
  with pytest.raises(ValueError, match='invalid iterator position'):
    resumed.set_state({'epoch': 0, 'batch': -1})
  resumed.set_state({'epoch': 0, 'batch': per_epoch})  # past the end (e.g. more processes now): the next epoch
  assert resumed.get_state() == {'epoch': 1, 'batch': 0}


def test_processes_read_disjoint_slices(synthetic):
  config, prepared = synthetic
  builder = prepared['synthetic_rvos']
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), prepare.word_table(prepared), 6)
  options = input_pipeline.Preprocessing.from_config(config)
  total = builder.info.splits['validation'].num_examples
  seen, counts = [], []
  for process in range(3):
    process_batches = list(input_pipeline.eval_batches(builder, 'validation', sentences, options,
                                                       global_batch_size=9, process_index=process, process_count=3))
    counts.append(len(process_batches))
    for batch in process_batches:
      assert len(batch['valid']) == 3
      seen += [(v, f, o, e) for v, f, o, e, ok in zip(batch['video_id'], batch['frame_index'], batch['object_id'],
                                                       batch['expression_id'], batch['valid']) if ok]
  assert len(seen) == total and len(set(seen)) == total  # every example exactly once
  assert len(set(counts)) == 1 and counts[0] == input_pipeline.num_eval_batches(total, 9, 3)

  train_frames = []
  for process in range(2):
    iterator = input_pipeline.TrainIterator(builder, 'train', sentences, options, global_batch_size=4, seed=0,
                                            process_index=process, process_count=2)
    assert iterator.batch_size == 2
    train_frames.append([b['frame'][i].tobytes() + b['word_ids'][i].tobytes() + b['mask'][i].tobytes()
                         for b in batches(iterator, iterator.batches_per_epoch) for i in range(2)])
  per_process = builder.info.splits['train'].num_examples // 2 // 2 * 2
  everything = train_frames[0] + train_frames[1]
  assert len(everything) == len(set(everything)) == 2 * per_process  # no loss, no duplicate
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    input_pipeline.TrainIterator(builder, 'train', sentences, options, global_batch_size=3, seed=0, process_count=2)


def test_horizontal_flip_mirrors_image_mask_and_sentence(tmp_path):
  fakes.write_youtube_vos(tmp_path / 'release')
  builder = builders.make_builder('ref_youtube_vos', tmp_path / 'tfds')
  builders.prepare(builder, tmp_path / 'release')
  sentences_list = builder.info.metadata[builders.METADATA_SENTENCES]
  table = glove.learned(glove.vocabulary(sentences_list), dim=4)  # holds "right": the mirror of "left"
  sentences = input_pipeline.SentenceTable(sentences_list, table, 8)

  def epoch(flip):
    iterator = input_pipeline.TrainIterator(builder, 'train', sentences, small(horizontal_flip=flip),
                                            global_batch_size=1, seed=0)
    return batches(iterator, iterator.batches_per_epoch)

  plain, flipped = epoch(False), epoch(True)
  left, right = table.ids(['left'])[0], table.ids(['right'])[0]
  mirrored = 0
  for a, b in zip(plain, flipped):
    if np.array_equal(a['mask'], b['mask']):
      np.testing.assert_array_equal(a['word_ids'], b['word_ids'])
      continue
    mirrored += 1
    np.testing.assert_array_equal(b['mask'], a['mask'][:, :, ::-1])
    np.testing.assert_allclose(b['frame'], a['frame'][:, :, ::-1], atol=1e-6)
    expected = np.where(a['word_ids'] == left, right, a['word_ids'])
    np.testing.assert_array_equal(b['word_ids'], expected)
  assert 0 < mirrored < len(plain)
  assert any((a['word_ids'] == left).any() for a in plain)


def test_prepare_writes_glove_tables_and_merges(tmp_path, synthetic):
  config, prepared = synthetic
  vocabulary = glove.vocabulary(prepare.sentences(prepared))
  rng = np.random.default_rng(0)
  fakes.write_glove(tmp_path / 'glove.txt', {w: rng.standard_normal(config.model.word_dim) for w in vocabulary[:-3]})
  config = config.copy_and_resolve_references()
  config.data.glove_path = str(tmp_path / 'glove.txt')
  table = prepare.word_table(prepare.prepare(config))  # a learned table is replaced when GloVe is given
  assert not table.trainable and len(table.words) == len(vocabulary) - 3 + 2
  with pytest.raises(ValueError, match='differ in kind'):
    glove.merge([table, glove.learned(['dog'], dim=config.model.word_dim)])
  with pytest.raises(ValueError, match='"<name>:<split>"'):
    prepare.parse_dataset_split('a2d_sentences')
