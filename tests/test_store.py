"""The frame store: every sample equals the reader's example for several δ; resumption, splits prepared side by
side, size against the release, errors, and a store in a bucket (the local GCS emulator)."""

import concurrent.futures
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

import data_fakes as fakes
import gcs_server
from data_pipeline import readers, store, synthetic_rvos
from data_pipeline.tensorflow_cpu import tf

SYNTHETIC = synthetic_rvos.SyntheticConfig(height=32, width=48, num_frames=6, num_videos=(
    ('train', 3), ('validation', 1), ('test', 1), ('test_compositional', 1)))
SYNTHETIC_SETTINGS = {'synthetic': SYNTHETIC.to_dict()}
RELEASES = {  # name: (writer of the fake release, reader class)
    'a2d_release': (fakes.write_a2d_release, readers.A2DSentencesReader),
    'a2d_lists': (fakes.write_a2d_lists, readers.A2DListReader),
    'jhmdb': (fakes.write_jhmdb, readers.JHMDBSentencesReader),
    'youtube_vos': (fakes.write_youtube_vos, readers.YouTubeVOSReader),
    'davis': (fakes.write_davis, readers.DAVISReader),
    'mevis': (fakes.write_mevis, readers.MevisReader),
    'synthetic': (lambda root: synthetic_rvos.generate(root, SYNTHETIC), readers.SyntheticRVOSReader),
}


def files_of(directory) -> dict[str, bytes]:
  directory = pathlib.Path(directory)
  return {str(file.relative_to(directory)): file.read_bytes() for file in sorted(directory.rglob('*'))
          if file.is_file()}


def total_bytes(*directories) -> int:
  return sum(len(data) for directory in directories for data in files_of(directory).values())


def prepare(reader, data_dir, settings=None, **kwargs):
  """The store of the reader's release in data_dir, named by `settings` (store.variant's)."""
  settings = settings or {}
  return store.prepare_store(reader, store.store_directory(data_dir, reader.name, **settings), progress=False,
                             options=settings, **kwargs)


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """(release, directory of its store prepared in one go, 1 video per part)."""
  root = tmp_path_factory.mktemp('synthetic')
  RELEASES['synthetic'][0](root / 'release')
  prepared = prepare(readers.SyntheticRVOSReader(root / 'release'), root / 'data', SYNTHETIC_SETTINGS,
                     videos_per_part=1)
  return root / 'release', prepared.directory


def check_equals_reader(source, reader_class, root, delta):
  """Every sample of the split is the reader's example, in the reader's order."""
  skipped = readers.SkipReport()
  expected = list(reader_class(root, delta=delta).examples(source.split, skipped))
  assert len(source) == len(expected) > 0
  table = source.sample_table()
  for index, (key, example) in enumerate(expected):
    stored = source.example(index, delta)
    assert f'{stored["video_id"]}/{stored["frame_index"]}/{stored["object_id"]}/{stored["expression_id"]}' == key
    assert set(stored) == set(example)
    assert stored['frame'] == example['frame'] and stored['prev_frame'] == example['prev_frame']
    np.testing.assert_array_equal(tf.io.decode_png(stored['mask'], channels=1).numpy(), example['mask'])
    np.testing.assert_array_equal(stored['orig_size'], example['orig_size'])
    assert stored['orig_size'].dtype == np.int32
    for name in set(example) - {'frame', 'prev_frame', 'mask', 'orig_size'}:
      assert stored[name] == example[name] and type(stored[name]) is type(example[name]), name
    for name in ('video_id', 'frame_index', 'object_id', 'expression_id', 'sentence', 'has_mask',
                 *source.extra_features):
      assert table[name][index] == example[name], name
  assert source.summary['skipped'] == skipped.as_dict()


@pytest.mark.parametrize('name', sorted(RELEASES))
def test_every_sample_is_the_readers_example(tmp_path, name, synthetic):
  write, reader_class = RELEASES[name]
  if name == 'synthetic':
    root, directory = synthetic
    prepared = store.open_store(directory)
  else:
    root = tmp_path / 'release'
    write(root)
    prepared = prepare(reader_class(root), tmp_path / 'data', videos_per_part=1)
  assert prepared.splits == reader_class(root).splits()
  assert prepared.sentences == reader_class(root).sentences()
  for split in prepared.splits:
    for delta in (3, 6):
      check_equals_reader(prepared.split(split), reader_class, root, delta)


def test_previous_frame_rows_follow_the_readers_rule():
  rng = np.random.default_rng(0)
  videos = [np.sort(rng.choice(40, size=rng.integers(1, 12), replace=False)) for _ in range(30)]
  videos.append(np.array([0, 4, 8]))  # ties
  frame_video = np.concatenate([np.full(len(numbers), v) for v, numbers in enumerate(videos)])
  frame_number = np.concatenate(videos)
  rows = np.arange(len(frame_number))
  for delta in range(1, 13):
    previous = store.previous_frame_rows(frame_video, frame_number, rows, delta)
    assert (frame_video[previous] == frame_video).all()
    expected = [readers.previous_frame(videos[frame_video[row]].tolist(), int(frame_number[row]), delta)
                for row in rows]
    assert frame_number[previous].tolist() == expected


def test_store_holds_every_frame_once_and_each_mask_once_per_object(tmp_path):
  fakes.write_davis(tmp_path / 'release', num_frames=6)
  prepared = prepare(readers.DAVISReader(tmp_path / 'release'), tmp_path / 'data')
  source = prepared.split('train')
  table = source.sample_table()
  masks = set(zip(table['frame_index'], table['object_id']))
  # Two expressions refer to object 1 of classic-car in every frame, one to object 2 in frames 0-3.
  assert len(source) == 2 * 6 + 4 and source.summary['masks'] == len(masks) == 6 + 4
  assert source.summary['frames'] == 6
  assert 'train 16 samples (1 videos, 6 frames' in prepared.describe()


def test_resumes_after_an_interruption(tmp_path, synthetic):
  release, uninterrupted = synthetic
  reader = readers.SyntheticRVOSReader(release)
  opened = []
  video_targets = reader.video_targets

  def interrupted_at_the_second_video(split, video_id, *args):
    opened.append(video_id)
    if len(opened) == 2:
      raise KeyboardInterrupt
    return video_targets(split, video_id, *args)

  reader.video_targets = interrupted_at_the_second_video
  with pytest.raises(KeyboardInterrupt):
    prepare(reader, tmp_path, SYNTHETIC_SETTINGS, videos_per_part=1)
  directory = store.store_directory(tmp_path, reader.name, **SYNTHETIC_SETTINGS)
  assert directory.name == uninterrupted.name
  assert sorted(files_of(directory / 'train')) == ['part-00000.frames', 'part-00000.masks', 'part-00000.npz']
  with pytest.raises(readers.DataError, match=f'{directory}.*not prepared.*split.json'):
    store.open_store(directory).split('train')

  reader = readers.SyntheticRVOSReader(release)
  opened.clear()
  video_targets = reader.video_targets
  reader.video_targets = lambda split, video_id, *args: opened.append(video_id) or video_targets(
      split, video_id, *args)
  prepare(reader, tmp_path, SYNTHETIC_SETTINGS, videos_per_part=1)
  assert opened[0] == 'syn_train_0001'  # the first part was not prepared again
  assert files_of(directory) == files_of(uninterrupted)


def test_splits_prepared_side_by_side(tmp_path, synthetic):
  release, together = synthetic
  with concurrent.futures.ThreadPoolExecutor(len(SYNTHETIC.num_videos)) as pool:
    list(pool.map(lambda split: prepare(readers.SyntheticRVOSReader(release), tmp_path, SYNTHETIC_SETTINGS,
                                        splits=[split], videos_per_part=1),
                  [split for split, _ in SYNTHETIC.num_videos]))
  assert files_of(store.store_directory(tmp_path, 'synthetic_rvos', **SYNTHETIC_SETTINGS)) == files_of(together)


def test_threads_and_pickled_sources_read_the_same(synthetic):
  source = store.open_store(synthetic[1]).split('validation')
  expected = [source.example(index, 2) for index in range(len(source))]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    read = list(pool.map(lambda index: source.example(index, 2), range(len(source))))
  copy = pickle.loads(pickle.dumps(source))
  for example, threaded, unpickled in zip(expected, read, (copy.example(i, 2) for i in range(len(copy)))):
    assert example['frame'] == threaded['frame'] == unpickled['frame']
    assert example['mask'] == threaded['mask'] == unpickled['mask']
  assert [source[i] for i in range(len(source))] == list(range(len(source)))
  with pytest.raises(IndexError):
    source[len(source)]


def sizes(release, directory) -> tuple[int, int]:
  """Bytes of the release's frames, annotations and expressions; bytes of the store."""
  splits = [name for name in os.listdir(release) if os.path.isdir(release / name / 'JPEGImages')]
  release_bytes = total_bytes(release / 'meta_expressions', *(release / split / kind for split in splits
                                                              for kind in ('JPEGImages', 'Annotations')
                                                              if (release / split / kind).is_dir()))
  return release_bytes, total_bytes(directory)


def test_store_size_against_the_release(tmp_path):
  fakes.write_youtube_vos(tmp_path / 'release')
  prepared = prepare(readers.YouTubeVOSReader(tmp_path / 'release'), tmp_path / 'data')
  tiny_release, tiny_store = sizes(tmp_path / 'release', prepared.directory)
  # The fake's frames are ~650-byte JPEGs, so the index (a few kB per part) weighs as much as they do.
  print(f'youtube_vos fake: release {tiny_release:,} bytes, store {tiny_store:,} bytes '
        f'({tiny_store / tiny_release:.2f}x)')
  assert tiny_store <= 1.3 * tiny_release
  root = tmp_path / 'synthetic'
  config = synthetic_rvos.SyntheticConfig(height=180, width=320, num_frames=12, num_videos=(
      ('train', 3), ('validation', 1), ('test', 1), ('test_compositional', 1)))
  synthetic_rvos.generate(root, config)
  prepared = prepare(readers.SyntheticRVOSReader(root), tmp_path / 'data', {'synthetic': config.to_dict()})
  release_bytes, store_bytes = sizes(root, prepared.directory)
  print(f'synthetic set, 6 videos of 12 frames, 180x320: release {release_bytes:,} bytes, store {store_bytes:,} bytes '
        f'({store_bytes / release_bytes:.2f}x)')
  assert store_bytes <= 1.3 * release_bytes


def test_delta_beyond_max_delta(tmp_path):
  fakes.write_youtube_vos(tmp_path / 'release')
  source = prepare(readers.YouTubeVOSReader(tmp_path / 'release'), tmp_path / 'data', max_delta=4).split('train')
  assert source.example(1, 4)['prev_frame_index'] == 0
  with pytest.raises(ValueError, match=r'prepared for δ <= 4: prepare it with config.data.max_delta >= 6'):
    source.example(1, 6)
  with pytest.raises(ValueError, match='must be >= 1'):
    source.example(1, 0)


def test_missing_incomplete_and_earlier_versions(tmp_path):
  data = tmp_path / 'data'
  directory = store.store_directory(data, 'ref_youtube_vos')
  with pytest.raises(readers.DataError, match=f'{directory} holds no prepared data'):
    store.open_store(directory)
  for old in ('delta6', 'delta3_lists'):  # what TFDS wrote for the release and the list layout
    (data / 'a2d_sentences' / old / '1.0.0').mkdir(parents=True)
    (data / 'a2d_sentences' / old / '1.0.0' / 'dataset_info.json').write_text('{}')
  for settings, old in (({}, 'delta6'), ({'a2d_layout': 'lists'}, 'delta3_lists')):
    with pytest.raises(readers.DataError, match=f'in {data}/a2d_sentences/{old} was prepared by an earlier version '
                       r'\(TFDS examples\): prepare it again with python main.py --mode=prepare'):
      store.open_store(store.store_directory(data, 'a2d_sentences', **settings))
  (data / 'a2d_sentences' / 'delta6').rename(data / 'a2d_sentences' / 'delta6_lists')
  with pytest.raises(readers.DataError, match='holds no prepared data'):  # only other settings' old directories
    store.open_store(store.store_directory(data, 'a2d_sentences'))

  fakes.write_youtube_vos(tmp_path / 'release')
  prepared = prepare(readers.YouTubeVOSReader(tmp_path / 'release'), data)
  with pytest.raises(ValueError, match=r"has splits \('train', 'validation'\), not 'test'"):
    prepared.split('test')
  (directory / 'validation' / 'part-00000.npz').unlink()
  with pytest.raises(readers.DataError, match=f'incomplete: {directory}/validation/part-00000.npz is missing'):
    store.open_store(directory).split('validation')
  frames = directory / 'train' / 'part-00000.frames'
  frames.write_bytes(frames.read_bytes()[:100])
  with pytest.raises(readers.DataError, match=f'{frames} is cut short'):
    store.open_store(directory).split('train').example(3, 6)
  (directory / 'store.json').write_text('{"format": "something else"}')
  with pytest.raises(readers.DataError, match="store.json has format 'something else'"):
    store.open_store(directory)


def test_bad_input_is_named_as_the_reader_names_it(tmp_path):
  fakes.write_youtube_vos(tmp_path / 'release')
  frame = tmp_path / 'release/train/JPEGImages/v_train/00010.jpg'
  frame.write_bytes(b'not a jpeg')
  with pytest.raises(readers.DataError, match=r'00010.jpg is not a readable image.*example v_train/10/1/0'):
    prepare(readers.YouTubeVOSReader(tmp_path / 'release'), tmp_path / 'data')
  fakes.write_youtube_vos(tmp_path / 'release')
  meta = tmp_path / 'release/meta_expressions/train/meta_expressions.json'
  meta.write_text(meta.read_text().replace('a skateboard', 'a board'))
  with pytest.raises(readers.DataError, match=r'store.json describes another preparation \(it differs in '
                     r'sentences\)'):
    prepare(readers.YouTubeVOSReader(tmp_path / 'release'), tmp_path / 'data')


def test_variant_names(tmp_path):
  assert store.variant() == 'release_upto9' and store.variant(max_delta=12) == 'release_upto12'
  assert store.variant(a2d_layout='lists') == 'lists_upto9'
  assert store.variant(jhmdb_frames='sample3') == 'sample3_upto9'
  (tmp_path / 'a.json').write_text('[["v", "x/00001.png"]]')
  (tmp_path / 'b.json').write_text('[["v", "x/00002.png"]]')
  names = {store.variant(jhmdb_frames='sample3', jhmdb_samples_file=str(tmp_path / f)) for f in ('a.json', 'b.json')}
  assert len(names) == 2 and all(re.fullmatch(r'sample3_[0-9a-f]{8}_upto9', name) for name in names)
  with pytest.raises(readers.DataError, match='c.json does not exist'):
    store.variant(jhmdb_frames='sample3', jhmdb_samples_file=str(tmp_path / 'c.json'))
  defaults = store.variant(synthetic={})
  assert defaults == store.variant(synthetic=synthetic_rvos.SyntheticConfig().to_dict()) != \
      store.variant(synthetic={'seed': 1})


@pytest.fixture
def bucket(monkeypatch):
  """epath's gs:// through gcsfs to the local emulator, for this test only (module docstring of test_buckets)."""
  monkeypatch.setenv('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')  # before gcsfs is imported
  import fsspec  # pylint: disable=import-outside-toplevel
  import gcsfs  # pylint: disable=import-outside-toplevel
  from etils.epath import backend, gpath  # pylint: disable=import-outside-toplevel

  def forget_clients():  # epath and fsspec cache their choice of client
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    type(backend.fsspec_backend)._get_filesystem.cache_clear()  # pylint: disable=protected-access
    gcsfs.GCSFileSystem.clear_instance_cache()

  emulator, url = gcs_server.start('lbdt-store-test')
  monkeypatch.setenv('EPATH_USE_TF', 'false')
  monkeypatch.setitem(fsspec.config.conf, 'gcs', {'endpoint_url': url, 'token': 'anon'})
  forget_clients()
  yield 'gs://lbdt-store-test'
  monkeypatch.undo()
  forget_clients()
  emulator.stop()


def test_prepare_and_read_in_a_bucket(tmp_path, bucket):
  fakes.write_youtube_vos(tmp_path / 'release')
  reader = readers.YouTubeVOSReader(tmp_path / 'release')
  local = prepare(reader, tmp_path / 'data')
  remote = prepare(reader, f'{bucket}/data')
  assert os.fspath(remote.directory).startswith('gs://')
  for split in local.splits:
    source, remote_source = local.split(split), store.open_store(remote.directory).split(split)
    assert len(remote_source) == len(source)
    for index in range(len(source)):
      expected, read = source.example(index, 6), remote_source.example(index, 6)
      assert read.keys() == expected.keys()
      assert all(np.array_equal(read[key], expected[key]) if key == 'orig_size' else read[key] == expected[key]
                 for key in expected)
    source.close()
    remote_source.close()
  for name, data in files_of(local.directory).items():
    assert (remote.directory / name).read_bytes() == data, name
