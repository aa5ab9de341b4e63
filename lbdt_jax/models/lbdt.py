"""Language-Bridged Duplex Transfer (paper §3.2, eqs. 1-9), in the official code's form by default.

Code form (the default, what released checkpoints need): one layer instance serves both directions; every layer
and direction starts again from the text encoder's words; word self-attention (eq. 2) happens inside each layer;
all norms are post-norm. `share_direction_weights=False` gives each direction its own layer (paper form).
`bridge='direct'` is the Tab. 5 baseline: the streams attend to each other directly, without words.
"""

import functools
from typing import Any

import flax.linen as nn

from lbdt_jax.models.config import LBDTConfig
from lbdt_jax.models.layers import ConvBN, Dense, LayerNorm, MultiHeadAttention


class FeedForward(nn.Module):
  """The MLP of eq. 9: Linear -> ReLU -> dropout -> Linear."""
  hidden_dim: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, deterministic: bool):
    y = nn.relu(Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return Dense(x.shape[-1], dtype=self.dtype, name='output')(y)


class _TransferLayerBase(nn.Module):
  config: LBDTConfig

  def attention(self, name):
    cfg = self.config
    return MultiHeadAttention(cfg.num_heads, cfg.dropout_rate, cfg.compute_dtype, name=name)

  def add_norm(self, x, update, name, deterministic):
    """Residual + dropout + post-norm LayerNorm, as every sub-layer of the reference."""
    update = nn.Dropout(self.config.dropout_rate)(update, deterministic=deterministic)
    return LayerNorm(dtype=self.config.compute_dtype, name=name)(x + update)

  def feed_forward(self, target, deterministic):
    cfg = self.config
    update = FeedForward(cfg.ffn_dim, cfg.dropout_rate, cfg.compute_dtype, name='ffn')(target, deterministic)
    return self.add_norm(target, update, 'target_norm2', deterministic)


class LanguageBridgedTransferLayer(_TransferLayerBase):
  """One transfer source -> language -> target (Fig. 3). Sequences are [B, L, C]; encodings [L, C]."""

  @nn.compact
  def __call__(self, source, target, words, pixel_pos, word_pos, word_mask, *, deterministic: bool):
    # Eq. 2: words self-attend (positional encoding on queries and keys only).
    words_pos = words + word_pos
    attended = self.attention('word_self_attention')(words_pos, words_pos, words, word_mask,
                                                     deterministic=deterministic)
    words = self.add_norm(words, attended, 'word_norm1', deterministic)
    # Eqs. 4-6: words aggregate the source stream; as in the code, the value carries the encoding too.
    source = source + pixel_pos
    aggregated = self.attention('word_source_attention')(words, source, source,
                                                         deterministic=deterministic)
    bridge = self.add_norm(words, aggregated, 'word_norm2', deterministic)
    # Eqs. 7-8: every target pixel queries the language bridge.
    selected = self.attention('target_word_attention')(target + pixel_pos, bridge, bridge, word_mask,
                                                       deterministic=deterministic)
    target = self.add_norm(target, selected, 'target_norm1', deterministic)
    # Eq. 9: MLP with a residual connection.
    return self.feed_forward(target, deterministic)


class DirectTransferLayer(_TransferLayerBase):
  """Tab. 5 baseline: the target stream cross-attends to the source stream directly, O((HW)^2 C)."""

  @nn.compact
  def __call__(self, source, target, words, pixel_pos, word_pos, word_mask, *, deterministic: bool):
    del words, word_pos, word_mask  # language was fused into the streams before the layers
    source = source + pixel_pos
    attended = self.attention('target_source_attention')(target + pixel_pos, source, source,
                                                         deterministic=deterministic)
    target = self.add_norm(target, attended, 'target_norm1', deterministic)
    return self.feed_forward(target, deterministic)


class LanguageBridgedDuplexTransfer(nn.Module):
  """The LBDT module of one encoder stage: reduce (eq. 1), L layers (eq. 3), up-project + residual ReLU."""
  config: LBDTConfig

  @nn.compact
  def __call__(self, streams, words, word_mask, sentence, pixel_pos, word_pos, *, train: bool):
    """streams: {'spatial': [B,h,w,C], 'temporal': ...}; words [B,N,C_m]; pixel_pos [h,w,C_m]."""
    cfg = self.config
    dtype = cfg.compute_dtype
    targets = cfg.transfer_targets()
    involved = sorted(set(targets) | set(targets.values()))
    batch, height, width, _ = streams['spatial'].shape
    # Eq. 1: 1x1 conv + BN to the model width, then flatten row-major to [B, h*w, C_m].
    projection = functools.partial(ConvBN, kernel=1, relu=False, dtype=dtype)
    sequences = {}
    for name in involved:
      reduced = projection(cfg.model_dim, name=f'{name}_reduce')(streams[name], train)
      self.sow('intermediates', f'{name}_reduced', reduced)
      sequences[name] = reduced.reshape(batch, height * width, cfg.model_dim)
    if cfg.bridge == 'direct':
      # The baseline first fuses the sentence into each stream (Hadamard product with a projection of it).
      for name in involved:
        language = Dense(cfg.model_dim, dtype=dtype, name=f'{name}_language_fusion')(sentence)
        sequences[name] = sequences[name] * language[:, None, :]
    layer_type = LanguageBridgedTransferLayer if cfg.bridge == 'language' else DirectTransferLayer
    pixel_pos = pixel_pos.reshape(height * width, cfg.model_dim).astype(dtype)
    word_pos = word_pos.astype(dtype)
    for index in range(cfg.num_lbdt_layers):
      shared = layer_type(cfg, name=f'layer{index}') if cfg.share_direction_weights else None
      # Both directions read the sequences as they were at the start of the layer.
      sequences = sequences | {
          target: (shared or layer_type(cfg, name=f'layer{index}_to_{target}'))(
              sequences[source], sequences[target], words, pixel_pos, word_pos, word_mask,
              deterministic=not train)
          for target, source in targets.items()}
    outputs = dict(streams)
    for name in targets:
      transferred = sequences[name].reshape(batch, height, width, cfg.model_dim)
      self.sow('intermediates', f'{name}_transferred', transferred)
      # Back to the encoder width, residual connection and ReLU.
      up = projection(streams[name].shape[-1], name=f'{name}_up')(transferred, train)
      outputs[name] = nn.relu(streams[name] + up)
    return outputs
