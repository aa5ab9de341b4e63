"""Sentence → word tokens, exactly as the official LBDT code tokenises (its quirks included).

The sentence is split on runs of non-word characters and the separators are kept as tokens, except a separator that
is exactly one space; a final "." is dropped; everything is lower-cased. So "a car, which is white" gives
`a car ", " which is white`, and "woman's" gives `woman ' s`. Separators that GloVe lacks (", ", "  ") get the
zero vector; one-character ones ("'", "-") have GloVe vectors, as in the reference. `tests/fixtures/reference/tokenize.json` holds the reference's own output.
"""

import re

import numpy as np

MAX_WORDS = 25
PAD_TOKEN = ''
_SPLIT = re.compile(r'(\W+)')
# A horizontal flip mirrors the scene, so the sentence's sides swap with it.
MIRRORED_WORDS = {'left': 'right', 'right': 'left', 'leftmost': 'rightmost', 'rightmost': 'leftmost'}


def tokenize(sentence: str) -> list[str]:
  """The reference's tokens before padding (never empty: a blank sentence gives one pad token)."""
  tokens = [piece.lower() for piece in _SPLIT.split(sentence.strip()) if piece and piece != ' ']
  if not tokens:
    tokens = [PAD_TOKEN]
  if tokens[-1] == '.':
    tokens = tokens[:-1]
  return tokens


def pad_tokens(sentence: str, max_words: int = MAX_WORDS) -> tuple[list[str], np.ndarray]:
  """(max_words tokens, int32 mask): truncated or padded with "" (mask 0).

  Like the reference, a blank sentence keeps one real-word slot (mask 1) holding the pad token, and "." alone
  leaves no real word at all.
  """
  if max_words < 1:
    raise ValueError(f'max_words must be positive, got {max_words}')
  tokens = tokenize(sentence)[:max_words]
  mask = np.zeros(max_words, np.int32)
  mask[:len(tokens)] = 1
  return tokens + [PAD_TOKEN] * (max_words - len(tokens)), mask
