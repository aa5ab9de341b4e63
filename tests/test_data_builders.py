"""The TFDS builders: the standard tfds path on fake releases, registration, metadata, errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_fakes as fakes

from data_pipeline import builders, readers

RELEASES = {
    'a2d_sentences': (fakes.write_a2d_release, {'train': 3, 'test': 1}),
    'jhmdb_sentences': (fakes.write_jhmdb, {'test': 7}),
    'ref_youtube_vos': (fakes.write_youtube_vos, {'train': 11, 'validation': 6}),
    'ref_davis17': (fakes.write_davis, {'train': 16, 'validation': 12}),
}


@pytest.mark.parametrize('name', sorted(RELEASES))
def test_standard_tfds_path(tmp_path, name):
  write, sizes = RELEASES[name]
  write(tmp_path / 'release')
  builder = tfds.builder(name, data_dir=tmp_path / 'tfds')
  assert builder.builder_config.delta == 6
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=tmp_path / 'release', try_download_gcs=False))
  builder = tfds.builder(name, data_dir=tmp_path / 'tfds')  # read back from disk
  assert {split: info.num_examples for split, info in builder.info.splits.items()} == sizes
  split = next(iter(sizes))
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  reader_examples = dict(builder.reader(str(tmp_path / 'release')).examples(split, readers.SkipReport()))
  assert len(examples) == len(reader_examples)
  for example in examples:
    key = (f"{example['video_id'].decode()}/{example['frame_index']}/{example['object_id']}/"
           f"{example['expression_id']}")
    expected = reader_examples[key]
    np.testing.assert_array_equal(example['mask'], expected['mask'])
    assert example['frame'].shape == (fakes.HEIGHT, fakes.WIDTH, 3)
    assert example['prev_frame_index'] == expected['prev_frame_index']
    assert example['sentence'].decode() == expected['sentence']
  sentences = builder.info.metadata[builders.METADATA_SENTENCES]
  assert {e['sentence'].decode() for e in examples} <= set(sentences)


def test_skips_are_recorded_in_metadata(tmp_path):
  fakes.write_a2d_release(tmp_path / 'release')
  builder = builders.make_builder('a2d_sentences', tmp_path / 'tfds')
  builders.prepare(builder, tmp_path / 'release')
  skipped = tfds.builder('a2d_sentences', data_dir=tmp_path / 'tfds').info.metadata[builders.METADATA_SKIPPED]
  assert skipped['train']['instance id is not a number']['count'] == 1
  assert skipped['train']['empty sentence']['count'] == 1
  assert skipped['test'] == {}


def test_a2d_builder_reads_the_official_list_layout(tmp_path):
  fakes.write_a2d_lists(tmp_path / 'lists')
  with pytest.raises(readers.DataError, match="a2d_layout='lists'"):
    builders.prepare(builders.make_builder('a2d_sentences', tmp_path / 'tfds'), tmp_path / 'lists')
  builder = builders.make_builder('a2d_sentences', tmp_path / 'tfds', delta=3, a2d_layout='lists')
  assert builder.builder_config.name == 'delta3_lists'
  builders.prepare(builder, tmp_path / 'lists')
  examples = list(tfds.as_numpy(builder.as_dataset(split='train')))
  assert sorted(int(e['object_id']) for e in examples) == [1, 3]
  assert {int(e['prev_frame_index']) for e in examples} == {5}


def test_config_names_keep_settings_apart(tmp_path):
  assert builders.make_config('jhmdb_sentences', 6, jhmdb_frames='sample3').name == 'delta6_sample3'
  (tmp_path / 'a.json').write_text('[["v", "x/00001.png"]]')
  (tmp_path / 'b.json').write_text('[["v", "x/00002.png"]]')
  names = {builders.make_config('jhmdb_sentences', 6, jhmdb_frames='sample3', jhmdb_samples_file=str(tmp_path / f)
                                ).name for f in ('a.json', 'b.json')}
  assert len(names) == 2 and all(n.startswith('delta6_sample3_') for n in names)
  first = builders.make_config('synthetic_rvos', 6, synthetic={'seed': 0}).name
  assert first != builders.make_config('synthetic_rvos', 6, synthetic={'seed': 1}).name
  assert first == builders.make_config('synthetic_rvos', 6, synthetic={}).name  # defaults spelled out or not
  assert first.startswith('delta6_')


def test_missing_release_and_unknown_name(tmp_path):
  with pytest.raises(AssertionError, match=r'absent does not exist.*\n.*davis_text_annotations'):
    builders.prepare(builders.make_builder('ref_davis17', tmp_path / 'tfds'), tmp_path / 'absent')
  with pytest.raises(ValueError, match='Unknown data set'):
    builders.make_builder('refcoco', tmp_path)
