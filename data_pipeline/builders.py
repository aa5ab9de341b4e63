"""TFDS builders for the four benchmarks and the synthetic set; registered with tfds on import of data_pipeline.

  builder = tfds.builder('a2d_sentences', data_dir=DATA_DIR)          # or data_pipeline.builders.make_builder
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=RELEASE_DIR))
  dataset = builder.as_dataset(split='train')

Every builder wraps a reader of data_pipeline/readers.py; the builder config carries δ (and the J-HMDB frame
protocol, the synthetic set's generator settings), so data prepared with different settings sit side by side.
The dataset's metadata records its sentences (the input pipeline's tokeniser table) and what was skipped.
"""

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import readers, synthetic_rvos  # readers imports TensorFlow through tensorflow_cpu
from lbdt_jax import paths

VERSION = tfds.core.Version('1.0.0')
METADATA_SENTENCES = 'sentences'
METADATA_SKIPPED = 'skipped'


@dataclasses.dataclass
class RVOSConfig(tfds.core.BuilderConfig):
  """δ and the data-set-specific options; `name` is derived from them by `make_config`."""
  delta: int = 6
  a2d_layout: str = 'release'
  jhmdb_frames: str = 'all'
  jhmdb_samples_file: str | None = None
  synthetic: dict[str, Any] | None = None


def _digest(value) -> str:
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def make_config(name: str, delta: int = 6, **options) -> RVOSConfig:
  """A builder config whose name encodes every setting that changes the examples (e.g. `delta6`,
  `delta6_lists`, `delta6_sample3`, `delta6_sample3_<digest of the samples file>`, `delta6_<synthetic digest>`)."""
  config_name = f'delta{delta}'
  if options.get('a2d_layout', 'release') != 'release':
    config_name += f'_{options["a2d_layout"]}'
  if options.get('jhmdb_frames', 'all') != 'all':
    config_name += f'_{options["jhmdb_frames"]}'
    if options.get('jhmdb_samples_file'):
      path = paths.path(options['jhmdb_samples_file'])
      if not path.is_file():
        raise readers.DataError(f'jhmdb_samples_file {path} does not exist')
      config_name += f'_{hashlib.sha1(path.read_bytes()).hexdigest()[:8]}'
  if options.get('synthetic') is not None:
    options['synthetic'] = synthetic_rvos.SyntheticConfig(**dict(options['synthetic'])).to_dict()
    config_name += f'_{_digest(options["synthetic"])}'
  return RVOSConfig(name=config_name, delta=delta, description=f'{name}, previous frame {delta} frames earlier',
                    **options)


class _RVOSBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common to all five builders: features, split generation from a reader, metadata."""
  VERSION = VERSION
  BUILDER_CONFIGS = [RVOSConfig(name='delta6', delta=6)]
  READER: ClassVar[type[readers.RVOSReader]]

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'frame': tfds.features.Image(shape=(None, None, 3), encoding_format=self.READER.frame_format),
        'prev_frame': tfds.features.Image(shape=(None, None, 3), encoding_format=self.READER.frame_format),
        'mask': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
        'has_mask': tfds.features.Scalar(np.bool_),
        'sentence': tfds.features.Text(),
        'video_id': tfds.features.Text(),
        'frame_index': tfds.features.Scalar(np.int32),
        'prev_frame_index': tfds.features.Scalar(np.int32),
        'object_id': tfds.features.Scalar(np.int32),
        'expression_id': tfds.features.Scalar(np.int32),
        'orig_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),
        'split': tfds.features.Text(),
        **{name: tfds.features.Text() for name in self.READER.extra_features},
    }
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(features),
                                 metadata=tfds.core.MetadataDict())

  def reader(self, root: str) -> readers.RVOSReader:
    return self.READER(root, delta=self.builder_config.delta)

  def _source_root(self, dl_manager) -> str:
    return os.fspath(dl_manager.manual_dir)  # tfds checks it exists and shows the instructions if not

  def _split_generators(self, dl_manager):
    reader = self.reader(self._source_root(dl_manager))
    self.info.metadata[METADATA_SENTENCES] = reader.sentences()
    self.info.metadata[METADATA_SKIPPED] = {}
    return {split: self._generate_examples(reader, split) for split in reader.splits()}

  def _generate_examples(self, reader: readers.RVOSReader, split: str):
    skipped = readers.SkipReport()
    yield from reader.examples(split, skipped)
    self.info.metadata[METADATA_SKIPPED][split] = skipped.as_dict()
    for reason, count in skipped.counts.items():
      logging.warning('%s/%s: skipped %d expressions: %s (e.g. %s)', self.name, split, count, reason,
                      skipped.examples[reason][0])


class A2dSentences(_RVOSBuilder):
  """A2D Sentences (Gavrilyuk et al., CVPR 2018): 3,782 videos, 6,655 sentences, instance masks per annotated
  frame. Reads the official release, or the list-file layout of the official LBDT code."""
  READER = readers.A2DSentencesReader
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'manual_dir holds Release/ (videoset.csv, clips320H/) and text_annotations/ (a2d_annotation.txt, '
      'a2d_missed_videos.txt, a2d_annotation_with_instances/) of A2D Sentences; or the official LBDT code\'s '
      'images/, masks/, train.txt, val.txt.')

  def reader(self, root):
    layout = self.builder_config.a2d_layout
    if layout not in ('release', 'lists'):
      raise ValueError(f"a2d_layout must be 'release' or 'lists', got {layout!r}")
    root = paths.path(root)
    if layout == 'release' and not (root / 'Release').is_dir() and (root / 'train.txt').exists():
      raise readers.DataError(f'{root} holds the official LBDT code\'s list layout (train.txt, images/, masks/): '
                              "set config.data.a2d_layout='lists'")
    reader = readers.A2DListReader if layout == 'lists' else readers.A2DSentencesReader
    return reader(root, delta=self.builder_config.delta)


class JhmdbSentences(_RVOSBuilder):
  """J-HMDB Sentences (evaluation only): 928 videos, one sentence each, puppet masks."""
  READER = readers.JHMDBSentencesReader
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'manual_dir holds Rename_Images/, puppet_mask/ and jhmdb_annotation.txt.'

  def reader(self, root):
    config = self.builder_config
    return readers.JHMDBSentencesReader(root, delta=config.delta, frames=config.jhmdb_frames,
                                        samples_file=config.jhmdb_samples_file)


class RefYoutubeVos(_RVOSBuilder):
  """Refer-YouTube-VOS (Seo et al., ECCV 2020); the validation split has no masks (inference only)."""
  READER = readers.YouTubeVOSReader
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('manual_dir holds train/, valid/ (JPEGImages, Annotations) and '
                                  'meta_expressions/{train,valid,test}/meta_expressions.json.')


class RefDavis17(_RVOSBuilder):
  """Ref-DAVIS17 (Khoreva et al., ACCV 2018): DAVIS 2017 with two annotators' first-frame and full-video
  expressions (the feature `expression_set` tells the four sets apart)."""
  READER = readers.DAVISReader
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('manual_dir holds DAVIS/ (the 2017 480p trainval release with '
                                  'Annotations_unsupervised) and davis_text_annotations/.')


class SyntheticRvos(_RVOSBuilder):
  """The built-in synthetic referring-video set (data_pipeline/synthetic_rvos.py), generated on first use."""
  READER = readers.SyntheticRVOSReader
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Nothing to download: the videos are generated (a manual_dir is used if given).'

  def _source_root(self, dl_manager):
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # tfds' way of saying "no manual_dir": generate the videos
      pass
    generator_config = synthetic_rvos.SyntheticConfig(**(self.builder_config.synthetic or {}))
    root = os.path.join(os.fspath(dl_manager.download_dir), f'synthetic_rvos_{self.builder_config.name}')
    if paths.is_remote(root):  # generated locally for the time of the preparation (the generator writes files)
      self._scratch = tempfile.TemporaryDirectory(prefix='synthetic_rvos_')  # removed with the builder
      root = os.path.join(self._scratch.name, 'synthetic_rvos')
    if not synthetic_rvos.is_generated(root, generator_config):
      synthetic_rvos.generate(root, generator_config, progress=True)
    return root


BUILDERS = {cls.name: cls for cls in (A2dSentences, JhmdbSentences, RefYoutubeVos, RefDavis17, SyntheticRvos)}


def make_builder(name: str, data_dir: str | os.PathLike | None, delta: int = 6,
                 **options) -> tfds.core.DatasetBuilder:
  """The builder of a data set with the given settings (not yet prepared)."""
  if name not in BUILDERS:
    raise ValueError(f'Unknown data set {name!r}: choose from {sorted(BUILDERS)}')
  builder_class = BUILDERS[name]
  config = make_config(name, delta, **options)
  if config.name in {c.name for c in builder_class.BUILDER_CONFIGS}:  # tfds wants a predefined one by name
    config = config.name
  return builder_class(data_dir=None if data_dir is None else os.fspath(data_dir), config=config)


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | os.PathLike | None = None) -> None:
  """download_and_prepare from a local release (never a download)."""
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir), try_download_gcs=False))
