"""Decoder with Bilateral Channel Activation (paper §3.3, eqs. 10-13)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lbdt_jax.models.config import LBDTConfig
from lbdt_jax.models.layers import Conv, ConvBN, Dense, aligned_bilinear, stats_dtype


class BilateralChannelActivation(nn.Module):
  """Language denoisers and spatial-temporal consistency activators, then the fusion conv.

  As in the code, all gates are computed from the spatial means of the un-gated decoded features, and
  concatenations put the spatial stream first (the paper writes [t; s] in eq. 11).
  """
  config: LBDTConfig

  @nn.compact
  def __call__(self, decoded, sentence, *, train: bool):
    cfg = self.config
    dtype = cfg.compute_dtype
    # The gates scale whole channels, so their rounding error would not average out: they are tiny matmuls and
    # run in at least float32.
    dense = lambda name: Dense(cfg.decoder_dim, dtype=stats_dtype(dtype), name=name)
    pooled = {name: x.mean(axis=(1, 2)) for name, x in decoded.items()}
    gates = {name: [] for name in decoded}
    if cfg.language_denoiser:
      for name in decoded:  # Eq. 10: s_r = sigmoid(Linear([s; r]))
        gates[name].append(jax.nn.sigmoid(dense(f'{name}_denoiser')(
            jnp.concatenate([pooled[name], sentence], axis=-1))))
    if cfg.consistency_activator and len(decoded) == 2:
      # Eq. 11: f = ReLU(Linear([s; t])); eq. 12: f_s, f_t = sigmoid(Linear(f)).
      consistent = nn.relu(dense('consistency')(
          jnp.concatenate([pooled['spatial'], pooled['temporal']], axis=-1)))
      for name in decoded:
        gates[name].append(jax.nn.sigmoid(dense(f'{name}_activator')(consistent)))
    activated = []
    for name, x in decoded.items():  # Eq. 13: D' = f * r * D, channel-wise
      for gate in gates[name]:
        x = x * gate[:, None, None, :]
      activated.append(x)
    fusion = ConvBN(cfg.decoder_dim, 3, dtype=dtype, name='fusion')
    return fusion(jnp.concatenate(activated, -1), train)


class Decoder(nn.Module):
  """Refines stages 2-5 of each stream to `decoder_dim`, upsamples to stage 2 and sums (D_S, D_T), applies BCA,
  a conv tower and a 1x1 logit conv, and upsamples x4 to the input size."""
  config: LBDTConfig

  @nn.compact
  def __call__(self, pyramids, sentence, *, train: bool):
    cfg = self.config
    dtype = cfg.compute_dtype
    conv_bn = functools.partial(ConvBN, cfg.decoder_dim, 3, dtype=dtype)
    decoded = {}
    for name, features in pyramids.items():
      height, width = features[0].shape[1:3]
      total = 0
      for level, feature in enumerate(features):
        refined = conv_bn(name=f'{name}_refine{level}')(feature, train)
        total = total + aligned_bilinear(refined, height // refined.shape[1])
      self.sow('intermediates', f'{name}_decoded', total)
      decoded[name] = total
    x = BilateralChannelActivation(cfg, name='bca')(decoded, sentence, train=train)
    self.sow('intermediates', 'fused', x)
    for index in range(cfg.decoder_tower_depth):
      x = conv_bn(name=f'tower{index}')(x, train)
    logits = Conv(1, 1, use_bias=True, dtype=dtype, name='logits')(x)
    self.sow('intermediates', 'low_resolution_logits', logits)
    return aligned_bilinear(logits, 4)[..., 0]
