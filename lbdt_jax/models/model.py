"""The LBDT model (paper Fig. 2): two ResNet encoders bridged by words, and the BCA decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lbdt_jax.models.bca import Decoder
from lbdt_jax.models.config import LBDTConfig
from lbdt_jax.models.lbdt import LanguageBridgedDuplexTransfer
from lbdt_jax.models.positional_encoding import sinusoid_1d, sinusoid_2d
from lbdt_jax.models.resnet import ResNetEncoder
from lbdt_jax.models.text_encoder import TextEncoder

INPUT_MULTIPLE = 32  # the coarsest stage is H/32, and the decoder's upsampling factors must be integers


def attendable_words(word_mask):
  """Key mask for attention over words. A sentence without real words (the tokenizer gives one for '.') would
  make the reference's softmax NaN; here such a sentence attends to all N positions instead (the LSTM outputs of
  the padding), which is finite and equals running it with an all-ones mask."""
  word_mask = word_mask.astype(bool)
  return jnp.where(word_mask.any(axis=-1, keepdims=True), word_mask, True)


def embed_words(word_vectors: jax.Array, word_ids: jax.Array) -> jax.Array:
  """The vectors of a batch of word ids [B, N] from a table [V, E] whose row 0 is the pad token: pads stay
  zero even when the table is trained (the reference's pad token "" has the zero GloVe vector)."""
  return word_vectors[word_ids] * (word_ids != 0)[..., None].astype(word_vectors.dtype)


class LBDT(nn.Module):
  """Referring segmentation of one frame.

  Inputs are NHWC: `frame` and `frame_difference` [B, H, W, 3] (normalised; H, W multiples of 32), `words`
  [B, N, word_dim] word vectors and `word_mask` [B, N] (1 for real words). Returns logits [B, H, W].
  `positional_encodings` may override the computed encodings ({'words': [N, C], 'stage4': [h, w, C], ...}),
  which the parity tool uses to inject the reference's float32 values.
  """
  config: LBDTConfig

  @nn.compact
  def __call__(self, frame, frame_difference, words, word_mask, *, train: bool = False,
               positional_encodings=None):
    cfg = self.config
    dtype = cfg.compute_dtype
    self._check_inputs(frame, frame_difference, words, word_mask)
    encodings = dict(positional_encodings or {})

    words = TextEncoder(cfg.model_dim, dtype, name='text_encoder')(words)
    self.sow('intermediates', 'text_features', words)
    sentence = words.sum(axis=1)  # r~ of §3.3: the sum over all N positions, padding included (as the code)
    self.sow('intermediates', 'sentence', sentence)
    word_mask = attendable_words(word_mask)
    word_pos = encodings.get('words', sinusoid_1d(words.shape[1], cfg.model_dim))

    inputs = {'spatial': frame, 'temporal': frame_difference}
    encoders = {name: ResNetEncoder(cfg, name=f'{name}_encoder') for name in cfg.streams}
    features = {name: encoder.stem(inputs[name].astype(dtype), train) for name, encoder in encoders.items()}
    pyramids = {name: [] for name in cfg.streams}
    for stage in (2, 3, 4, 5):
      features = {name: encoders[name].stage(x, stage, train) for name, x in features.items()}
      for name, x in features.items():
        self.sow('intermediates', f'{name}_stage{stage}', x)
      if stage in cfg.lbdt_stages:
        height, width = features['spatial'].shape[1:3]
        pixel_pos = encodings.get(f'stage{stage}', sinusoid_2d(height, width, cfg.model_dim))
        features = LanguageBridgedDuplexTransfer(cfg, name=f'lbdt_stage{stage}')(
            features, words, word_mask, sentence, pixel_pos, word_pos, train=train)
        for name, x in features.items():
          self.sow('intermediates', f'{name}_stage{stage}_transferred', x)
      for name, x in features.items():
        pyramids[name].append(x)
    return Decoder(cfg, name='decoder')(pyramids, sentence, train=train)

  def _check_inputs(self, frame, frame_difference, words, word_mask):
    if frame.ndim != 4 or frame.shape[-1] != 3:
      raise ValueError(f'frame must be [B, H, W, 3] (NHWC), got shape {frame.shape}')
    if self.config.temporal_encoder and frame_difference.shape != frame.shape:
      raise ValueError(f'frame_difference shape {frame_difference.shape} != frame shape {frame.shape}')
    height, width = frame.shape[1:3]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
      raise ValueError(f'frame height and width must be multiples of {INPUT_MULTIPLE}, got {height}x{width}')
    if words.ndim != 3 or words.shape[0] != frame.shape[0] or words.shape[-1] != self.config.word_dim:
      raise ValueError(f'words must be [B={frame.shape[0]}, N, {self.config.word_dim}], got {words.shape}')
    if word_mask.shape != words.shape[:2]:
      raise ValueError(f'word_mask must be [B, N] = {words.shape[:2]}, got {word_mask.shape}')
