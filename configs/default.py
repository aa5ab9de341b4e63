"""LBDT as released (A2D Sentences LBDT-4; `:lbdt1` for LBDT-1): ResNet-50 encoders, 320x320 input.

Every architectural switch of the paper's ablations is under `config.model` (see lbdt_jax/models/config.py), e.g.
`--config.model.bridge=direct` (Tab. 5 row 1) or `--config.model.lbdt_stages='(3, 4, 5)'` (Tab. 7).
"""

import ml_collections

from lbdt_jax.models import LBDTConfig

LAYERS = {'lbdt1': 1, 'lbdt4': 4}


def get_config(variant: str = 'lbdt4') -> ml_collections.ConfigDict:
  if variant not in LAYERS:
    raise ValueError(f'Unknown variant {variant!r}: choose from {sorted(LAYERS)}')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(LBDTConfig(num_lbdt_layers=LAYERS[variant]).to_dict())
  config.input_height = 320
  config.input_width = 320
  config.max_words = 25
  config.data = data_config(train='a2d_sentences:train', evaluate=('a2d_sentences:test',))
  # --mode=demo: a few optimisation steps on one synthetic batch, as an end-to-end sanity check.
  config.demo = ml_collections.ConfigDict({'batch_size': 2, 'steps': 10, 'learning_rate': 1e-4})
  return config


def data_config(train: str, evaluate: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Where the data comes from and how it is read (data_pipeline/prepare.py, data_pipeline/input_pipeline.py)."""
  return ml_collections.ConfigDict({
      'train': train,  # "<tfds name>:<split>"; '' for evaluation-only configs
      'evaluate': evaluate,
      'data_dir': '',  # TFDS data directory; '' = the TFDS default (~/tensorflow_datasets)
      # Release directories of the benchmarks, read by --mode=prepare (official layouts, see the README).
      'manual_dirs': {name: '' for name in ('a2d_sentences', 'jhmdb_sentences', 'ref_youtube_vos', 'ref_davis17',
                                            'synthetic_rvos')},
      'glove_path': '',  # glove.840B.300d.txt or .zip; '' = learned word embeddings (deterministic start)
      'delta': 6,  # frames between a frame and the frame its difference is taken with (paper: 6)
      'mask_resize': 'nearest',  # or 'bilinear_threshold' (the reference: bilinear, aligned corners, then > 0)
      'horizontal_flip': False,  # training augmentation; swaps "left"/"right" in the sentence with the image
      'shuffle_buffer': 10_000,
      'num_threads': 0,  # tf.data threads; 0 = all cores
      'jhmdb_frames': 'all',  # or 'sample3' (MTTR/ReferFormer's 3 frames per video)
      'jhmdb_samples_file': '',  # MTTR's jhmdb_sentences_samples_metadata.json, to use exactly their frames
      'synthetic': {},  # data_pipeline.synthetic_rvos.SyntheticConfig settings (defaults where absent)
  })
