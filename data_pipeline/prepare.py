"""Prepare the data sets an experiment names (`config.data`) and their word tables.

`python main.py --mode=prepare --config=...` calls `prepare(config)`; training and evaluation call it too, so the
synthetic set is built on first use and a real benchmark is built as soon as its release directory is given
(`--config.data.manual_dirs.a2d_sentences=/data/a2d`). Each prepared data set keeps `word_table.npz` beside its
TFDS files: its words with their GloVe vectors (`config.data.glove_path`), or the deterministic learned-embedding
fallback when no GloVe file is given. An experiment uses the union of its data sets' tables (`word_table`).
"""

import logging

import ml_collections
import tensorflow_datasets as tfds

from etils import epath

from data_pipeline import builders, glove
from lbdt_jax import paths

WORD_TABLE_FILE = 'word_table.npz'


def parse_dataset_split(spec: str) -> tuple[str, str]:
  """'a2d_sentences:test' → ('a2d_sentences', 'test')."""
  name, _, split = spec.partition(':')
  if not split or name not in builders.BUILDERS:
    raise ValueError(f'A data set is given as "<name>:<split>" with name in {sorted(builders.BUILDERS)}, '
                     f'got {spec!r}')
  return name, split


def dataset_names(config: ml_collections.ConfigDict) -> list[str]:
  """The data sets the experiment trains or evaluates on, in first-use order."""
  specs = [config.data.train, *config.data.evaluate] if config.data.train else list(config.data.evaluate)
  names = [parse_dataset_split(spec)[0] for spec in specs]
  return list(dict.fromkeys(names))


def builder_for(config: ml_collections.ConfigDict, name: str) -> tfds.core.DatasetBuilder:
  data = config.data
  options = {}
  if name == 'a2d_sentences':
    options = {'a2d_layout': data.a2d_layout}
  elif name == 'jhmdb_sentences':
    options = {'jhmdb_frames': data.jhmdb_frames, 'jhmdb_samples_file': data.jhmdb_samples_file or None}
  elif name == 'synthetic_rvos':
    options = {'synthetic': data.synthetic.to_dict()}
  return builders.make_builder(name, paths.path(data.data_dir) if data.data_dir else None,
                               delta=data.delta, **options)


def _table_path(builder: tfds.core.DatasetBuilder) -> epath.Path:
  return epath.Path(builder.data_dir) / WORD_TABLE_FILE


def _sentences(builder: tfds.core.DatasetBuilder) -> list[str]:
  return list(builder.info.metadata[builders.METADATA_SENTENCES])


def prepare(config: ml_collections.ConfigDict, rebuild_word_tables: bool = False) -> dict[str, tfds.core.DatasetBuilder]:
  """Builds every data set of the experiment that is not yet prepared, and the word tables; returns the builders."""
  prepared = {}
  for name in dataset_names(config):
    builder = builder_for(config, name)
    if not builder.is_prepared():
      manual_dir = config.data.manual_dirs.get(name)
      manual_dir = paths.path(manual_dir) if manual_dir else None
      logging.info('Preparing %s in %s from %s', name, builder.data_dir, manual_dir or '(generated)')
      builders.prepare(builder, manual_dir)
    prepared[name] = builder
  glove_path = config.data.glove_path or None
  needs_table = {}
  for name, builder in prepared.items():
    path = _table_path(builder)
    if rebuild_word_tables or not path.exists() or (glove_path and glove.WordTable.load(path).trainable):
      needs_table[name] = builder
  if needs_table:
    _write_word_tables(needs_table, glove_path, config.model.word_dim, config.seed)
  return prepared


def _write_word_tables(needed: dict[str, tfds.core.DatasetBuilder], glove_path: str | None, dim: int,
                       seed: int) -> None:
  vocabularies = {name: glove.vocabulary(_sentences(builder)) for name, builder in needed.items()}
  union = sorted({word for words in vocabularies.values() for word in words})
  if glove_path:  # one pass over the GloVe file for all data sets
    table = glove.from_glove(paths.path(glove_path), union, dim=dim)
  else:
    logging.warning('No GloVe file given (config.data.glove_path): words get learned embeddings with a '
                    'deterministic start; results are not comparable with the paper\'s GloVe setting.')
    table = glove.learned(union, dim=dim, seed=seed)
  for name, builder in needed.items():
    glove.subset(table, vocabularies[name]).save(_table_path(builder))
    logging.info('%s: word table with %d words written to %s', name, len(vocabularies[name]), _table_path(builder))


def word_table(prepared: dict[str, tfds.core.DatasetBuilder]) -> glove.WordTable:
  return glove.merge([glove.WordTable.load(_table_path(builder)) for builder in prepared.values()])


def sentences(prepared: dict[str, tfds.core.DatasetBuilder]) -> list[str]:
  return sorted({s for builder in prepared.values() for s in _sentences(builder)})


def describe(prepared: dict[str, tfds.core.DatasetBuilder]) -> str:
  """A few lines per data set: where it is, examples per split, what was skipped, the word table."""
  lines = []
  for name, builder in prepared.items():
    table = glove.WordTable.load(_table_path(builder))
    splits = ', '.join(f'{split} {info.num_examples:,}' for split, info in builder.info.splits.items())
    lines.append(f'{name} ({builder.builder_config.name}) in {builder.data_dir}: {splits}')
    lines.append(f'  word table: {len(table.words) - 2:,} words, '
                 f'{"learned (no GloVe file)" if table.trainable else "GloVe"}, {_table_path(builder)}')
    for split, reasons in builder.info.metadata.get(builders.METADATA_SKIPPED, {}).items():
      for reason, record in reasons.items():
        lines.append(f'  skipped in {split}: {record["count"]} × {reason} (e.g. {record["examples"][0]})')
  return '\n'.join(lines)
