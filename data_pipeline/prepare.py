"""Prepare the data sets an experiment names (`config.data`) as frame stores (data_pipeline/store.py), and their
word tables.

`python main.py --mode=prepare --config=...` calls `prepare(config)`; training and evaluation call it too, so the
synthetic set is built on first use and a real benchmark is built as soon as its release directory is given
(`--config.data.manual_dirs.a2d_sentences=/data/a2d`). A store serves every δ up to `config.data.max_delta`:
changing `config.data.delta` needs no new preparation. `config.data.prepare_splits` prepares only some splits, so
that several machines can prepare one data set's splits at the same time; an interrupted preparation resumes.
Each store keeps `word_table.npz` beside it: its words with their GloVe vectors (`config.data.glove_path`), or the
deterministic learned-embedding fallback when no GloVe file is given. An experiment uses the union of its data
sets' tables (`word_table`).
"""

import logging
import os
import tempfile

import ml_collections
from etils import epath

from data_pipeline import glove, readers, store, synthetic_rvos
from lbdt_jax import paths

WORD_TABLE_FILE = 'word_table.npz'
DEFAULT_DATA_DIR = '~/lbdt_jax_data'
READERS = {
    'a2d_sentences': readers.A2DSentencesReader,
    'jhmdb_sentences': readers.JHMDBSentencesReader,
    'ref_youtube_vos': readers.YouTubeVOSReader,
    'ref_davis17': readers.DAVISReader,
    'mevis': readers.MevisReader,
    'synthetic_rvos': readers.SyntheticRVOSReader,
}
MANUAL_DIR_CONTENTS = {
    'a2d_sentences': 'Release/ (videoset.csv, clips320H/) and text_annotations/ (a2d_annotation.txt, '
                     'a2d_missed_videos.txt, a2d_annotation_with_instances/) of A2D Sentences; or the official LBDT '
                     "code's images/, masks/, train.txt, val.txt (with config.data.a2d_layout='lists')",
    'jhmdb_sentences': 'Rename_Images/, puppet_mask/ and jhmdb_annotation.txt',
    'ref_youtube_vos': 'train/, valid/ (JPEGImages, Annotations) and meta_expressions/{train,valid,test}/'
                       'meta_expressions.json',
    'ref_davis17': 'DAVIS/ (the 2017 480p trainval release with Annotations_unsupervised) and '
                   'davis_text_annotations/',
    'mevis': 'train/, valid_u/ and valid/, each with JPEGImages/ and meta_expressions.json, train/ and valid_u/ '
             'with mask_dict.json',
}


def parse_dataset_split(spec: str) -> tuple[str, str]:
  """'a2d_sentences:test' → ('a2d_sentences', 'test')."""
  name, _, split = spec.partition(':')
  if not split or name not in READERS:
    raise ValueError(f'A data set is given as "<name>:<split>" with name in {sorted(READERS)}, got {spec!r}')
  return name, split


def dataset_names(config: ml_collections.ConfigDict) -> list[str]:
  """The data sets the experiment trains or evaluates on, in first-use order."""
  specs = [config.data.train, *config.data.evaluate] if config.data.train else list(config.data.evaluate)
  names = [parse_dataset_split(spec)[0] for spec in specs]
  return list(dict.fromkeys(names))


def _settings(config: ml_collections.ConfigDict, name: str) -> dict:
  """The settings that change what is stored for data set `name` (they name its store directory)."""
  data = config.data
  settings = {'max_delta': data.max_delta}
  if name == 'a2d_sentences':
    settings['a2d_layout'] = data.a2d_layout
  elif name == 'jhmdb_sentences':
    settings.update(jhmdb_frames=data.jhmdb_frames, jhmdb_samples_file=data.jhmdb_samples_file or None)
  elif name == 'synthetic_rvos':
    settings['synthetic'] = data.synthetic.to_dict()
  return settings


def data_dir(config: ml_collections.ConfigDict) -> epath.Path:
  return paths.path(config.data.data_dir or DEFAULT_DATA_DIR)


def store_directory(config: ml_collections.ConfigDict, name: str) -> epath.Path:
  return store.store_directory(data_dir(config), name, **_settings(config, name))


def make_reader(config: ml_collections.ConfigDict, name: str, root) -> readers.RVOSReader:
  """The reader of data set `name`'s release in `root`, with the config's options."""
  data = config.data
  if name == 'a2d_sentences':
    if data.a2d_layout not in ('release', 'lists'):
      raise ValueError(f"config.data.a2d_layout must be 'release' or 'lists', got {data.a2d_layout!r}")
    root = paths.path(root)
    if data.a2d_layout == 'release' and not (root / 'Release').is_dir() and (root / 'train.txt').exists():
      raise readers.DataError(f"{root} holds the official LBDT code's list layout (train.txt, images/, masks/): "
                              "set config.data.a2d_layout='lists'")
    reader = readers.A2DListReader if data.a2d_layout == 'lists' else readers.A2DSentencesReader
    return reader(root, delta=data.delta)
  if name == 'jhmdb_sentences':
    return readers.JHMDBSentencesReader(root, delta=data.delta, frames=data.jhmdb_frames,
                                        samples_file=data.jhmdb_samples_file or None)
  return READERS[name](root, delta=data.delta)


def _splits_to_prepare(config: ml_collections.ConfigDict, directory: epath.Path) -> list[str] | None:
  """The splits still to prepare (None: the whole data set, nothing is there yet)."""
  wanted = [s.strip() for s in config.data.prepare_splits.split(',') if s.strip()]
  if not (directory / store.STORE_FILE).exists():
    return wanted or None
  prepared = store.open_store(directory)
  unknown = [split for split in wanted if split not in prepared.splits]
  if unknown:
    raise ValueError(f'config.data.prepare_splits names {unknown}: {prepared.name} has splits {prepared.splits}')
  return [split for split in (wanted or prepared.splits) if not (directory / split / store.SPLIT_FILE).exists()]


def _prepare_store(config: ml_collections.ConfigDict, name: str, directory: epath.Path,
                   splits: list[str] | None) -> None:
  manual_dir = config.data.manual_dirs.get(name)
  settings = _settings(config, name)
  options = {key: value for key, value in settings.items() if key != 'max_delta'}
  if manual_dir:
    logging.info('Preparing %s in %s from %s', name, directory, manual_dir)
    store.prepare_store(make_reader(config, name, paths.path(manual_dir)), directory, max_delta=config.data.max_delta,
                        splits=splits, options=options)
  elif name == 'synthetic_rvos':  # generated for the time of the preparation
    generator_config = synthetic_rvos.SyntheticConfig(**config.data.synthetic.to_dict())
    with tempfile.TemporaryDirectory(prefix='synthetic_rvos_') as scratch:
      root = os.path.join(scratch, 'synthetic_rvos')
      synthetic_rvos.generate(root, generator_config, progress=True)
      logging.info('Preparing %s in %s from generated videos', name, directory)
      store.prepare_store(make_reader(config, name, root), directory, max_delta=config.data.max_delta,
                          splits=splits, options=options)
  else:
    if not (directory / store.STORE_FILE).exists():
      store.open_store(directory)  # names data of an earlier version, if that is what is there
    raise readers.DataError(f'{name} is not prepared in {directory}: set --config.data.manual_dirs.{name} to the '
                            f'directory that holds {MANUAL_DIR_CONTENTS[name]}')


def prepare(config: ml_collections.ConfigDict, rebuild_word_tables: bool = False) -> dict[str, store.Store]:
  """Prepares what is missing of every data set of the experiment, and the word tables; returns the stores."""
  if config.data.max_delta < config.data.delta:
    raise ValueError(f'config.data.delta ({config.data.delta}) is larger than config.data.max_delta '
                     f'({config.data.max_delta}), the largest δ the prepared data serves')
  prepared = {}
  for name in dataset_names(config):
    directory = store_directory(config, name)
    splits = _splits_to_prepare(config, directory)
    if splits is None or splits:
      _prepare_store(config, name, directory, splits)
    prepared[name] = store.open_store(directory)
  glove_path = config.data.glove_path or None
  needs_table = {}
  for name, opened in prepared.items():
    path = _table_path(opened)
    if rebuild_word_tables or not path.exists() or (glove_path and glove.WordTable.load(path).trainable):
      needs_table[name] = opened
  if needs_table:
    _write_word_tables(needs_table, glove_path, config.model.word_dim, config.seed)
  return prepared


def _table_path(opened: store.Store) -> epath.Path:
  return opened.directory / WORD_TABLE_FILE


def _write_word_tables(needed: dict[str, store.Store], glove_path: str | None, dim: int, seed: int) -> None:
  vocabularies = {name: glove.vocabulary(opened.sentences) for name, opened in needed.items()}
  union = sorted({word for words in vocabularies.values() for word in words})
  if glove_path:  # one pass over the GloVe file for all data sets
    table = glove.from_glove(paths.path(glove_path), union, dim=dim)
  else:
    logging.warning('No GloVe file given (config.data.glove_path): words get learned embeddings with a '
                    'deterministic start; results are not comparable with the paper\'s GloVe setting.')
    table = glove.learned(union, dim=dim, seed=seed)
  for name, opened in needed.items():
    glove.subset(table, vocabularies[name]).save(_table_path(opened))
    logging.info('%s: word table with %d words written to %s', name, len(vocabularies[name]), _table_path(opened))


def word_table(prepared: dict[str, store.Store]) -> glove.WordTable:
  return glove.merge([glove.WordTable.load(_table_path(opened)) for opened in prepared.values()])


def sentences(prepared: dict[str, store.Store]) -> list[str]:
  return sorted({s for opened in prepared.values() for s in opened.sentences})


def describe(prepared: dict[str, store.Store]) -> str:
  """A few lines per data set: where it is, samples per split, what was skipped, the word table."""
  lines = []
  for opened in prepared.values():
    table = glove.WordTable.load(_table_path(opened))
    lines.append(opened.describe())
    lines.append(f'  word table: {len(table.words) - 2:,} words, '
                 f'{"learned (no GloVe file)" if table.trainable else "GloVe"}, {_table_path(opened)}')
  return '\n'.join(lines)
