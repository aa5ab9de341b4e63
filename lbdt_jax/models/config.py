"""Typed model configuration: every architectural switch of the paper's ablations lives here."""

import dataclasses

import jax.numpy as jnp

# ResNet block type and blocks per stage, as torchvision defines them.
RESNET_LAYOUTS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
}
BRIDGES = ('language', 'direct')
DTYPES = ('float32', 'bfloat16', 'float64')


@dataclasses.dataclass(frozen=True)
class LBDTConfig:
  """Architecture of the LBDT model. Defaults reproduce the official code (LBDT-4)."""

  # Encoders (paper §3.1): two torchvision-compatible ResNets.
  resnet_depth: int = 50
  resnet_width: int = 64  # channels of the stem; 64 in torchvision
  resnet_blocks: tuple[int, ...] | None = None  # blocks per stage; None = the depth's layout
  temporal_encoder: bool = True  # False: single-stream model (frame only)
  # Text encoder: word vectors -> 1-layer LSTM.
  word_dim: int = 300
  model_dim: int = 512  # LSTM hidden size = LBDT width (C_m)
  # LBDT (paper §3.2).
  lbdt_stages: tuple[int, ...] = (4, 5)
  num_lbdt_layers: int = 4
  num_heads: int = 8
  ffn_dim: int = 512
  bridge: str = 'language'  # 'direct': Tab. 5 row 1, streams attend to each other
  transfer_temporal_to_spatial: bool = True  # T->L->S, motion into the spatial stream
  transfer_spatial_to_temporal: bool = True  # S->L->T, appearance into the temporal stream
  share_direction_weights: bool = True  # code form; False = paper form, one layer per direction
  dropout_rate: float = 0.1
  # Decoder and BCA (paper §3.3).
  decoder_dim: int = 128
  decoder_tower_depth: int = 4
  language_denoiser: bool = True
  consistency_activator: bool = True
  # Numerics: compute dtype; parameters are always stored in float32 (float64 under x64).
  dtype: str = 'float32'
  # Recompute each encoder block's activations in the backward pass instead of storing them (less memory for
  # large batches, about a third more encoder compute). Does not change the parameters or the results.
  remat: bool = False

  # Settings that change how the model computes, not what it is (a checkpoint serves any of them).
  EXECUTION_FIELDS = ('dtype', 'remat')

  def __post_init__(self):
    problems = []
    if self.resnet_depth not in RESNET_LAYOUTS:
      problems.append(f'resnet_depth={self.resnet_depth} (choose from {sorted(RESNET_LAYOUTS)})')
    if self.resnet_blocks is not None and (
        len(self.resnet_blocks) != 4 or min(self.resnet_blocks) < 1):
      problems.append(f'resnet_blocks={self.resnet_blocks} (four positive counts)')
    if not set(self.lbdt_stages) <= {2, 3, 4, 5} or len(set(self.lbdt_stages)) != len(self.lbdt_stages):
      problems.append(f'lbdt_stages={self.lbdt_stages} (distinct encoder stages among 2, 3, 4, 5)')
    if self.lbdt_stages and self.num_lbdt_layers < 1:
      problems.append(f'num_lbdt_layers={self.num_lbdt_layers} (at least 1)')
    if self.bridge not in BRIDGES:
      problems.append(f'bridge={self.bridge!r} (choose from {BRIDGES})')
    if self.model_dim % self.num_heads:
      problems.append(f'model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}')
    if (self.lbdt_stages and self.temporal_encoder and not
        (self.transfer_temporal_to_spatial or self.transfer_spatial_to_temporal)):
      problems.append('both transfer directions are off: set lbdt_stages=() for a model without LBDT')
    if not self.temporal_encoder and self.bridge == 'direct':
      problems.append("bridge='direct' needs the temporal encoder")
    if not 0.0 <= self.dropout_rate < 1.0:
      problems.append(f'dropout_rate={self.dropout_rate} (in [0, 1))')
    if self.dtype not in DTYPES:
      problems.append(f'dtype={self.dtype!r} (choose from {DTYPES})')
    if problems:
      raise ValueError('Invalid LBDTConfig: ' + '; '.join(problems))

  @property
  def block_type(self) -> str:
    return RESNET_LAYOUTS[self.resnet_depth][0]

  @property
  def blocks_per_stage(self) -> tuple[int, ...]:
    return tuple(self.resnet_blocks or RESNET_LAYOUTS[self.resnet_depth][1])

  @property
  def stage_channels(self) -> dict[int, int]:
    """Output channels of encoder stages 2..5 (torchvision layer1..layer4)."""
    expansion = 4 if self.block_type == 'bottleneck' else 1
    return {stage: self.resnet_width * 2**(stage - 2) * expansion for stage in (2, 3, 4, 5)}

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def streams(self) -> tuple[str, ...]:
    return ('spatial', 'temporal') if self.temporal_encoder else ('spatial',)

  def transfer_targets(self) -> dict[str, str]:
    """Which stream each LBDT updates (key) from which source stream (value)."""
    if not self.temporal_encoder:
      return {'spatial': 'spatial'}
    targets = {}
    if self.transfer_temporal_to_spatial:
      targets['spatial'] = 'temporal'
    if self.transfer_spatial_to_temporal:
      targets['temporal'] = 'spatial'
    return targets

  @classmethod
  def from_dict(cls, values) -> 'LBDTConfig':
    """Builds a config from a mapping (an ml_collections ConfigDict or parsed JSON)."""
    values = dict(values)
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'Unknown model config keys: {sorted(unknown)}')
    for key in ('resnet_blocks', 'lbdt_stages'):
      if values.get(key) is not None:
        values[key] = tuple(values[key])
    return cls(**values)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
