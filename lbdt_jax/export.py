"""`--mode=export`: a self-contained model directory from a training run or a converted checkpoint.

Reads parameters only: the newest checkpoint's parameters, BatchNorm statistics and word vectors (no optimizer
state, no training data, no compiled training step).
"""

import ml_collections
from etils import epath

from data_pipeline import prepare
from lbdt_jax import checkpointing, model_dir, paths, sharding
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
    print(f'Exported the checkpoint of step {step} to {output_dir}', flush=True)
    return output_dir
  if not config.init.checkpoint:
    raise FileNotFoundError(f'Nothing to export: {workdir} has no checkpoint and --config.init.checkpoint is not set')
  loaded = model_dir.read(config.init.checkpoint, word_table=False)
  table = loaded.table
  if table is None:  # a converted checkpoint: the GloVe words of the data it is used with
    table = prepare.word_table(sharding.process_zero_first(lambda: prepare.prepare(config), 'data prepared'))
  model_dir.write(output_dir, loaded.model_config, loaded.variables, table=table, config=config,
                  manifest=model_dir.manifest_for(config, loaded.model_config, table, loaded.manifest.get('step')))
  print(f'Exported {loaded.path} with the word table of {", ".join(prepare.dataset_names(config))} to '
        f'{output_dir}', flush=True)
  return output_dir
