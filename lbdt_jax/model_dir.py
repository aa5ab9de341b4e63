"""Model directories: the one format in which a trained, exported or converted model is stored and read.

  <dir>/manifest.json      what the model is and how to feed it: variant, input size, δ, max_words, word vectors,
                           training step and data, lbdt-jax version
  <dir>/model_config.json  the architecture (LBDTConfig)
  <dir>/variables/         params and batch_stats (an orbax checkpoint)
  <dir>/word_table.npz     the words and their vectors (trained ones for learned word vectors); absent in a
                           converted official checkpoint, which takes the GloVe table of the data it is used with
  <dir>/config.json        the experiment config it was trained with, for the record

Written by training (`workdir/export`), `--mode=export` and `--mode=convert`; read by evaluation, prediction,
export, serving and training's `config.init.checkpoint`. Any directory may be a bucket URL.
"""

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from data_pipeline import glove, tokenizer
from lbdt_jax import __version__, paths
from lbdt_jax.models import LBDT, LBDTConfig

MANIFEST_FILE = 'manifest.json'
MODEL_CONFIG_FILE = 'model_config.json'
WORD_TABLE_FILE = 'word_table.npz'
CONFIG_FILE = 'config.json'
VARIABLES = 'variables'
FORMAT = 1
# What a model whose manifest does not say otherwise is fed with: the paper's settings.
PAPER_INPUTS = {'input_size': [320, 320], 'delta': 6, 'max_words': tokenizer.MAX_WORDS}


@dataclasses.dataclass
class ModelDirectory:
  """A model directory in memory."""
  model_config: LBDTConfig
  variables: dict  # {'params': ..., 'batch_stats': ...}
  table: glove.WordTable | None
  manifest: dict  # as stored ({} for a directory without one)
  path: epath.Path

  def _fed_with(self, key: str):
    return self.manifest.get(key) or PAPER_INPUTS[key]

  @property
  def input_size(self) -> tuple[int, int]:
    return tuple(self._fed_with('input_size'))

  @property
  def delta(self) -> int:
    return self._fed_with('delta')

  @property
  def max_words(self) -> int:
    return self._fed_with('max_words')


def example_inputs(config: LBDTConfig) -> tuple[np.ndarray, ...]:
  """The smallest inputs that initialise the model: its variables do not depend on the input size."""
  frame = np.zeros((1, 64, 64, 3), np.float32)
  return frame, frame, np.zeros((1, 4, config.word_dim), np.float32), np.zeros((1, 4), np.int32)


def abstract_variables(config: LBDTConfig):
  """Shapes and dtypes of the model's variables, without allocating them."""
  return jax.eval_shape(LBDT(config).init, jax.random.key(0), *example_inputs(config))


def manifest_for(config, model_config: LBDTConfig, table: glove.WordTable | None, step: int | None) -> dict:
  """The manifest of a model trained (or to be used) with the experiment `config`."""
  return {
      'format': FORMAT, 'lbdt_jax_version': __version__, 'variant': f'LBDT-{model_config.num_lbdt_layers}',
      'lbdt_stages': list(model_config.lbdt_stages), 'input_size': [config.input_height, config.input_width],
      'delta': config.data.delta, 'max_words': config.max_words,
      'word_vectors': None if table is None else ('learned' if table.trainable else 'glove'),
      'vocabulary_size': None if table is None else len(table.words), 'step': step,
      'trained_on': config.data.train}


def write(directory, model_config: LBDTConfig, variables, *, table: glove.WordTable | None = None,
          manifest: dict | None = None, config=None) -> epath.Path:
  """Writes a model directory (with several processes every process calls this; process 0 writes the files)."""
  directory = paths.path(directory)
  paths.check_writable(directory)
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES, variables, force=True)
  if jax.process_index() == 0:
    paths.write_json(directory / MODEL_CONFIG_FILE, model_config.to_dict())
    if table is not None:
      table.save(directory / WORD_TABLE_FILE)
    if config is not None:
      (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    if manifest is not None:
      paths.write_json(directory / MANIFEST_FILE, manifest)
  return directory


def read_model_config(directory) -> LBDTConfig:
  directory = paths.path(directory)
  file = directory / MODEL_CONFIG_FILE
  if not file.exists():
    if not directory.exists():
      raise FileNotFoundError(f'Model directory {directory} does not exist')
    raise FileNotFoundError(f'{directory} is not a model directory: {MODEL_CONFIG_FILE} is missing (a model '
                            'directory is written by training, --mode=export or --mode=convert)')
  try:
    return LBDTConfig.from_dict(paths.read_json(file, 'Model config'))
  except (TypeError, ValueError) as error:
    raise ValueError(f'{file}: {error}') from None


def read_manifest(directory) -> dict:
  file = paths.path(directory) / MANIFEST_FILE
  return paths.read_json(file, 'Manifest') if file.exists() else {}


def read(directory, *, word_table: bool = True) -> ModelDirectory:
  """Reads a model directory; `word_table=True` requires its word table."""
  directory = paths.path(directory)
  model_config = read_model_config(directory)
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(directory / VARIABLES, abstract_variables(model_config))
  variables = jax.device_put(variables)  # as jax arrays, however they were saved
  table_file = directory / WORD_TABLE_FILE
  table = glove.WordTable.load(table_file) if table_file.exists() else None
  if word_table and table is None:
    raise FileNotFoundError(f'{directory} has no {WORD_TABLE_FILE}: a converted checkpoint needs the word table '
                            'of the data it is used with (--mode=export --config.init.checkpoint=... writes one)')
  return ModelDirectory(model_config, variables, table, read_manifest(directory), directory)


def architecture_differences(stored: LBDTConfig, wanted: LBDTConfig) -> dict[str, tuple]:
  """{field: (stored, wanted)} of the architectural fields (not dtype or remat) that differ."""
  return {field: (getattr(stored, field), getattr(wanted, field)) for field in stored.to_dict()
          if field not in LBDTConfig.EXECUTION_FIELDS and getattr(stored, field) != getattr(wanted, field)}


def check_same_architecture(stored: LBDTConfig, wanted: LBDTConfig, where) -> None:
  """A clear error naming every field in which `where` (a model or checkpoint directory) differs from the config."""
  differences = architecture_differences(stored, wanted)
  if differences:
    raise ValueError(f'{where} holds a different model than config.model: ' + ', '.join(
        f'{field}={value!r} there, {ours!r} here' for field, (value, ours) in differences.items()))
