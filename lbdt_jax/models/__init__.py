"""LBDT in Flax linen. Imports only jax, flax and numpy."""

from lbdt_jax.models.config import LBDTConfig
from lbdt_jax.models.model import LBDT, attendable_words, embed_words

__all__ = ['LBDT', 'LBDTConfig', 'attendable_words', 'embed_words']
