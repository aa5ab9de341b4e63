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
  # --mode=demo: a few optimisation steps on one synthetic batch, as an end-to-end sanity check.
  config.demo = ml_collections.ConfigDict({'batch_size': 2, 'steps': 10, 'learning_rate': 1e-4})
  return config
