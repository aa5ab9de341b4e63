"""Synthetic referring-segmentation batches, built with numpy alone (no downloads).

Each sample shows two ellipses of different colours on a noisy background; one of them moves between the previous
and the current frame. The sentence names the colour of the target, so the model has to read the words to
choose the right ellipse. Word vectors come from a fixed random table, one vector per colour word.
"""

import numpy as np

COLOURS = {'red': (1.0, 0.1, 0.1), 'green': (0.1, 0.9, 0.1), 'blue': (0.1, 0.2, 1.0),
           'yellow': (1.0, 0.9, 0.1)}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def word_table(word_dim: int, seed: int = 1234) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {word: rng.standard_normal(word_dim).astype(np.float32) for word in ('the', 'object', *COLOURS)}


def _ellipse(height, width, centre, radii):
  y, x = np.mgrid[:height, :width]
  return ((y - centre[0]) / radii[0])**2 + ((x - centre[1]) / radii[1])**2 <= 1


def synthetic_batch(rng: np.random.Generator, batch_size: int, height: int, width: int, max_words: int,
                    word_dim: int) -> dict[str, np.ndarray]:
  """frame, frame_difference [B,H,W,3] float32 (ImageNet-normalised), words [B,N,E], word_mask [B,N] int32,
  mask [B,H,W] uint8."""
  if max_words < 3:
    raise ValueError(f'max_words must be at least 3 for "the <colour> object", got {max_words}')
  table = word_table(word_dim)
  out = {'frame': [], 'frame_difference': [], 'words': [], 'word_mask': [], 'mask': []}
  for _ in range(batch_size):
    colours = rng.choice(list(COLOURS), size=2, replace=False)
    previous = rng.uniform(0.3, 0.5, (height, width, 3)).astype(np.float32)
    current = previous + rng.normal(0, 0.02, previous.shape).astype(np.float32)
    masks = []
    for colour in colours:
      radii = rng.uniform(0.12, 0.22, 2) * (height, width)
      centre = rng.uniform(0.25, 0.75, 2) * (height, width)
      shift = rng.uniform(-0.12, 0.12, 2) * (height, width)
      previous[_ellipse(height, width, centre - shift, radii)] = COLOURS[colour]
      masks.append(_ellipse(height, width, centre, radii))
    for colour, region in zip(colours, masks):
      current[region] = COLOURS[colour]
    target = masks[0] & ~masks[1]  # the second ellipse is drawn on top
    normalise = lambda image: (image - IMAGENET_MEAN) / IMAGENET_STD
    out['frame'].append(normalise(current))
    out['frame_difference'].append(np.abs(current - previous) / IMAGENET_STD)
    sentence = ['the', colours[0], 'object']
    words = np.zeros((max_words, word_dim), np.float32)
    words[:len(sentence)] = [table[w] for w in sentence]
    out['words'].append(words)
    out['word_mask'].append((np.arange(max_words) < len(sentence)).astype(np.int32))
    out['mask'].append(target.astype(np.uint8))
  return {key: np.stack(value) for key, value in out.items()}
