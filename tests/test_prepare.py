"""prepare(): stores from releases and the synthetic generator, δ without re-preparing, splits in parallel, word
tables, messages; and the values of one preprocessed example of a store."""

import numpy as np
import pytest

import data_fakes as fakes
from configs import tiny
from data_pipeline import glove, input_pipeline, loader, prepare, readers, store, tokenizer

MEAN, STD = np.array(input_pipeline.IMAGENET_MEAN), np.array(input_pipeline.IMAGENET_STD)


def youtube_config(root):
  config = tiny.get_config()
  config.data.update(data_dir=str(root / 'data'), train='ref_youtube_vos:train',
                     evaluate=('ref_youtube_vos:validation',))
  config.data.manual_dirs.ref_youtube_vos = str(root / 'release')
  config.model.word_dim = 4
  return config


@pytest.fixture(scope='module')
def youtube(tmp_path_factory):
  """The fake YouTube-VOS release, prepared, with a learned word table."""
  root = tmp_path_factory.mktemp('youtube')
  fakes.write_youtube_vos(root / 'release')
  config = youtube_config(root)
  prepared = prepare.prepare(config)
  table = prepare.word_table(prepared)
  return config, prepared, input_pipeline.SentenceTable(prepare.sentences(prepared), table, 8), table


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp('data'))
  return config, prepare.prepare(config)


def small(**overrides):
  return input_pipeline.Preprocessing(**{'height': 16, 'width': 24, 'max_words': 8, **overrides})


def test_one_example_values(youtube):
  _, prepared, sentences, table = youtube
  source = prepared['ref_youtube_vos'].split('validation')
  batches = list(loader.eval_batches(source, sentences, small(), delta=6, global_batch_size=6))
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
  _, prepared, sentences, _ = youtube
  source = prepared['ref_youtube_vos'].split('train')
  nearest, bilinear = (next(loader.TrainIterator(source, sentences, small(height=64, width=96, mask_resize=method),
                                                 delta=6, global_batch_size=2, seed=0))
                       for method in ('nearest', 'bilinear_threshold'))
  assert nearest['mask'].shape == (2, 64, 96) and set(np.unique(nearest['mask'])) <= {0, 1}
  # Upsampling by 2: nearest doubles the 6x8 rectangle (192 pixels); bilinear-then->0 also takes the border.
  assert (nearest['mask'].sum((1, 2)) == 6 * 8 * 4).all()
  assert (bilinear['mask'] >= nearest['mask']).all() and (bilinear['mask'].sum() > nearest['mask'].sum())


def test_delta_changes_without_preparing_again(youtube, monkeypatch):
  config, prepared, _, _ = youtube
  monkeypatch.setattr(store, 'prepare_store', lambda *args, **kwargs: pytest.fail('prepared again'))
  for delta in (3, 6):
    config = config.copy_and_resolve_references()
    config.data.delta = delta
    again = prepare.prepare(config)
    assert again['ref_youtube_vos'].directory == prepared['ref_youtube_vos'].directory
    source = again['ref_youtube_vos'].split('train')
    reader = readers.YouTubeVOSReader(config.data.manual_dirs.ref_youtube_vos, delta=delta)
    expected = {key: example['prev_frame_index'] for key, example in reader.examples('train', readers.SkipReport())}
    got = {}
    for index in range(len(source)):
      example = source.example(index, delta)
      got[f'{example["video_id"]}/{example["frame_index"]}/{example["object_id"]}/{example["expression_id"]}'] = \
          example['prev_frame_index']
    assert got == expected
  config.data.delta = config.data.max_delta + 1
  with pytest.raises(ValueError, match='config.data.max_delta'):
    prepare.prepare(config)


def test_splits_prepared_one_at_a_time_and_what_is_missing_is_named(tmp_path):
  fakes.write_youtube_vos(tmp_path / 'release')
  config = youtube_config(tmp_path)
  config.data.prepare_splits = 'validation'
  directory = prepare.prepare(config)['ref_youtube_vos'].directory
  assert (directory / 'validation' / store.SPLIT_FILE).exists() and not (directory / 'train').exists()
  with pytest.raises(ValueError, match="prepare_splits names \\['test_split'\\]"):
    prepare.prepare(config_with(config, prepare_splits='test_split'))
  without_release = config_with(config, prepare_splits='')
  without_release.data.manual_dirs.ref_youtube_vos = ''
  with pytest.raises(readers.DataError, match='manual_dirs.ref_youtube_vos'):
    prepare.prepare(without_release)  # train is still missing
  prepare.prepare(config_with(config, prepare_splits='train'))
  assert len(prepare.prepare(without_release)['ref_youtube_vos'].split('train')) > 0


def config_with(config, **data):
  config = config.copy_and_resolve_references()
  config.data.update(data)
  return config


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
