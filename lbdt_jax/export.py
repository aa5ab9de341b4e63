"""Model directories with their serving artefact: `--mode=export` and the end of training.

`--mode=export` reads parameters only: the newest checkpoint's parameters, BatchNorm statistics and word vectors
(no optimizer state, no training data, no compiled training step). Besides the orbax parameters, each model
directory holds the serving artefact (`write_serving`, read by `lbdt_jax.serving`; docs/serving.md): the
inference function serialised with `jax.export` for CPU, CUDA and TPU, its parameters as an .npz, and the
constants that feeding it takes.
"""

import io

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipeline import glove, normalisation, prepare
from lbdt_jax import __version__, checkpointing, inference, model_dir, paths, serving, sharding
from lbdt_jax.models import LBDTConfig


def export_model(config: ml_collections.ConfigDict, workdir, output_dir=None) -> epath.Path:
  """The newest checkpoint of workdir, or the model directory of config.init.checkpoint (e.g. a converted official
  checkpoint, given the word table of config.data's data sets), written as a model directory (default
  workdir/export)."""
  workdir = paths.path(workdir)
  output_dir = paths.path(output_dir) if output_dir else workdir / 'export'
  model_config = LBDTConfig.from_dict(config.model)
  if config.data.train and checkpointing.has_checkpoints(workdir):
    loaded, step = checkpointing.read_trained(
        workdir, config, model_config, restore_previous_if_damaged=config.train.restore_previous_if_damaged)
    model_dir.write(output_dir, loaded.model_config, loaded.variables, table=loaded.table, manifest=loaded.manifest,
                    config=config)
    write_serving(output_dir, loaded.model_config, loaded.variables, loaded.manifest)
    print(f'Exported the checkpoint of step {step} to {output_dir}', flush=True)
    return output_dir
  if not config.init.checkpoint:
    raise FileNotFoundError(f'Nothing to export: {workdir} has no checkpoint and --config.init.checkpoint is not set')
  loaded = model_dir.read(config.init.checkpoint, word_table=False)
  table = loaded.table
  if table is None:  # a converted checkpoint: the GloVe words of the data it is used with
    table = prepare.word_table(sharding.process_zero_first(lambda: prepare.prepare(config), 'data prepared'))
  manifest = model_dir.manifest_for(config, loaded.model_config, table, loaded.manifest.get('step'))
  model_dir.write(output_dir, loaded.model_config, loaded.variables, table=table, config=config, manifest=manifest)
  write_serving(output_dir, loaded.model_config, loaded.variables, manifest)
  print(f'Exported {loaded.path} with the word table of {", ".join(prepare.dataset_names(config))} to '
        f'{output_dir}', flush=True)
  return output_dir


def from_training(directory, config: ml_collections.ConfigDict, model_config: LBDTConfig, params, batch_stats,
                  table: glove.WordTable, step: int | None) -> epath.Path:
  """The model directory of a training run's final parameters ({'model', 'word_vectors'}) and statistics, with
  its serving artefact: the word table carries the trained vectors."""
  directory = paths.path(directory)
  table = glove.WordTable(table.words, sharding.to_host(params['word_vectors']).astype('float32'), table.trainable)
  variables = {'params': sharding.to_host(params['model']), 'batch_stats': sharding.to_host(batch_stats)}
  manifest = model_dir.manifest_for(config, model_config, table, step)
  model_dir.write(directory, model_config, variables, table=table, config=config, manifest=manifest)
  write_serving(directory, model_config, variables, manifest)
  return directory


def write_serving(directory, model_config: LBDTConfig, variables, manifest: dict | None = None,
                  platforms: tuple[str, ...] = inference.SERVING_PLATFORMS) -> epath.Path:
  """Writes the serving artefact into the model directory `directory` (its serving/ folder; the word table is the
  directory's word_table.npz): every process calls this, process 0 writes. Returns the serving folder."""
  directory = paths.path(directory)
  fed = model_dir.ModelDirectory(model_config, variables, None, manifest or {}, directory)  # the manifest's inputs
  exported = inference.export_probabilities(model_config, variables, fed.input_size, fed.max_words, platforms)
  program = exported.serialize()
  flat = sharding.to_host(inference.flat_variables(variables))
  folder = directory / serving.SERVING_DIR
  if jax.process_index() != 0:
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  (folder / serving.FUNCTION_FILE).write_bytes(bytes(program))
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  (folder / serving.VARIABLES_FILE).write_bytes(buffer.getvalue())
  paths.write_json(folder / serving.CONSTANTS_FILE, {
      'format': serving.FORMAT, 'function': serving.FUNCTION_FILE, 'variables': serving.VARIABLES_FILE,
      'word_table': model_dir.WORD_TABLE_FILE,
      'call': 'probabilities(variables, word_vectors, frames, frame_differences, word_ids, word_mask) -> [b, H, W]',
      'platforms': list(exported.platforms), 'batch': 'symbolic (b)', 'vocabulary': 'symbolic (v)',
      'input_size': list(fed.input_size), 'delta': fed.delta, 'max_words': fed.max_words,
      'imagenet_mean': normalisation.IMAGENET_MEAN.tolist(), 'imagenet_std': normalisation.IMAGENET_STD.tolist(),
      'normalisation': 'antialiased bilinear resize to input_size, then (rgb / 255 - imagenet_mean) / imagenet_std; '
                       'frame_difference = |normalised frame t - normalised frame max(t - delta, 0)|',
      'tokenizer': serving.TOKENIZER_RULE, 'pad_id': glove.PAD_ID, 'unknown_id': glove.UNKNOWN_ID,
      'compute_dtype': model_config.dtype,
      'variant': (manifest or {}).get('variant', f'LBDT-{model_config.num_lbdt_layers}'),
      'calling_convention_version': exported.calling_convention_version, 'jax_version': jax.__version__,
      'lbdt_jax_version': __version__})
  return folder
