"""Deterministic synthetic referring-video data set, written in the Refer-YouTube-VOS layout.

Each video shows 2-4 flat-coloured shapes on a textured background (in some videos part of the background moves
too: a scrolling band or a drifting textured patch, both labelled 0). Objects have a colour, a shape, a size and a
motion, are drawn in a random depth order and may occlude each other; the annotation of a frame is its rendered
label map (visible pixels only). Every referring expression names exactly one object of its video and carries a
`cue`:

* `appearance`: colour and shape (plus size where it is needed) identify the object; no motion words.
* `motion`: another object looks identical; the motion words alone would identify the object.
* `both`: another object looks identical and another one moves the same way; only the combination identifies it.

Size words are used only when they narrow the objects matched by colour and shape. The `attributes` of an
expression hold exactly the attributes its sentence mentions (motion as its canonical name from `MOTIONS`).

Layout under `root`::

  <split>/JPEGImages/<video_id>/00000.jpg ...     RGB frames, JPEG quality 95
  <split>/Annotations/<video_id>/00000.png ...    palette PNGs, pixel value = object id, 0 = background
  meta_expressions/<split>/meta_expressions.json  YouTube-VOS schema plus `cue`, `attributes` per expression
                                                  and `objects` (the attributes of every object) per video
  synthetic_rvos.json                             parameters, held-out (colour, shape) pairs, counts

Compositional split: a seed-dependent set of (colour, shape) pairs (`held_out_fraction` of them, keeping every
colour and every shape available elsewhere) never appears in train/validation/test; in test_compositional every
referred object has a held-out pair.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import secrets
import shutil
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from PIL import Image

SPLITS = ('train', 'validation', 'test', 'test_compositional')
COLOURS = {'red': (225, 35, 35), 'green': (40, 185, 55), 'blue': (35, 85, 235), 'yellow': (240, 215, 30),
           'purple': (145, 55, 200), 'white': (245, 245, 245)}  # RGB
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'star')
SIZES = ('small', 'big')
MOTIONS = ('static', 'moving left', 'moving right', 'moving up', 'moving down', 'jumping')
CUES = ('appearance', 'motion', 'both')
FORMAT_VERSION = 1
JPEG_QUALITY = 95

_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
_REFERENCE_SIDE = 96  # `speed` is in pixels per frame at this min(height, width)
_RADIUS = {'small': 0.085, 'big': 0.15}  # fraction of min(height, width)
_JUMP_PERIOD = 6  # frames per bounce
_MOTION_PHRASES = {
    'static': (('standing', 'still'), ('not', 'moving')),
    'moving left': (('moving', 'left'), ('moving', 'to', 'the', 'left'), ('going', 'left')),
    'moving right': (('moving', 'right'), ('moving', 'to', 'the', 'right'), ('going', 'right')),
    'moving up': (('moving', 'up'), ('going', 'up')),
    'moving down': (('moving', 'down'), ('going', 'down')),
    'jumping': (('jumping',), ('bouncing', 'up', 'and', 'down')),
}
_TEXTURES = ('noise', 'stripes', 'checker', 'gradient')
_BACKGROUND_MOTIONS = ('none', 'scrolling band', 'drifting patch')


def _star(points: int = 5, inner: float = 0.5) -> np.ndarray:
  angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
  radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
  return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], -1)


# Outlines for a unit radius, (x, y) with y pointing down; the circle is drawn with cv2.circle.
_OUTLINES = {
    'square': 0.88 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64),
    'triangle': 1.15 * np.array([[0, -1], [math.cos(math.pi / 6), 0.5], [-math.cos(math.pi / 6), 0.5]]),
    'diamond': np.array([[0, -1.2], [1.0, 0], [0, 1.2], [-1.0, 0]]),
    'star': 1.25 * _star(),
}
_EXTENT = {'circle': 1.0, **{shape: float(np.abs(outline).max()) for shape, outline in _OUTLINES.items()}}


def _palette() -> list[int]:
  """256 RGB entries: 0 black, then well separated hues."""
  hsv = np.zeros((1, 256, 3), np.uint8)
  hsv[0, :, 0] = (np.arange(256) * 47) % 180
  hsv[0, :, 1] = 210
  hsv[0, :, 2] = 255
  rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
  rgb[0] = 0
  return rgb.reshape(-1).astype(int).tolist()


_PALETTE = _palette()


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Generator parameters. `speed` is in pixels per frame for min(height, width) = 96 and scales linearly with it;
  each object moves at speed x U(0.8, 1.2), slowed where needed so that its path stays inside the frame."""
  seed: int = 0
  height: int = 96
  width: int = 96
  num_frames: int = 12
  num_videos: tuple[tuple[str, int], ...] = (('train', 48), ('validation', 12), ('test', 12),
                                             ('test_compositional', 12))
  min_objects: int = 2
  max_objects: int = 4
  speed: float = 3.0
  held_out_fraction: float = 0.2

  def __post_init__(self):
    for name, low, high in (('seed', 0, 2**63 - 1), ('height', 32, 1024), ('width', 32, 1024),
                            ('num_frames', 3, 1000), ('min_objects', 2, 8), ('max_objects', 2, 8)):
      object.__setattr__(self, name, _check_int(name, getattr(self, name), low, high))
    if self.min_objects > self.max_objects:
      raise ValueError(f'min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})')
    for name, low, high in (('speed', 0.0, float(max(self.height, self.width))), ('held_out_fraction', 0.0, 0.5)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f'{name} must be a number in ({low}, {high}], got {value!r}')
      object.__setattr__(self, name, float(value))
    pairs = self.num_videos.items() if isinstance(self.num_videos, Mapping) else self.num_videos
    try:
      pairs = tuple((split, count) for split, count in pairs)
    except (TypeError, ValueError):
      raise ValueError(f'num_videos must be a sequence of (split, count) pairs, got {self.num_videos!r}') from None
    seen = set()
    for split, count in pairs:
      if split not in SPLITS:
        raise ValueError(f'num_videos: unknown split {split!r}; expected one of {SPLITS}')
      if split in seen:
        raise ValueError(f'num_videos: split {split!r} given twice')
      seen.add(split)
    pairs = tuple((split, _check_int(f'num_videos[{split!r}]', count, 0, 100_000)) for split, count in pairs)
    if not any(count for _, count in pairs):
      raise ValueError('num_videos must ask for at least one video')
    object.__setattr__(self, 'num_videos', pairs)

  def to_dict(self) -> dict[str, Any]:
    """The parameters as JSON-ready values."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_int(name: str, value: Any, low: int, high: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
    raise ValueError(f'{name} must be an integer in [{low}, {high}], got {value!r}')
  return int(value)


def held_out_combinations(config: SyntheticConfig) -> list[tuple[str, str]]:
  """The (colour, shape) pairs reserved for test_compositional, in vocabulary order."""
  rng = np.random.default_rng([config.seed, 7919])
  combos = [(colour, shape) for colour in COLOURS for shape in SHAPES]
  target = max(1, round(config.held_out_fraction * len(combos)))
  left_colour = {colour: len(SHAPES) for colour in COLOURS}
  left_shape = {shape: len(COLOURS) for shape in SHAPES}
  held = set()
  for index in rng.permutation(len(combos)):
    colour, shape = combos[index]
    if len(held) == target:
      break
    if left_colour[colour] > 1 and left_shape[shape] > 1:  # keep every colour and shape in the other splits
      held.add(combos[index])
      left_colour[colour] -= 1
      left_shape[shape] -= 1
  return [combo for combo in combos if combo in held]


# ----------------------------------------------------------------------------------------------------------------
# Referring logic.


def _matching(objects: Mapping[str, Mapping[str, str]], attributes: Mapping[str, str]) -> list[str]:
  return [obj_id for obj_id, obj in objects.items() if all(obj[key] == value for key, value in attributes.items())]


def _appearance_attributes(objects: Mapping[str, Mapping[str, str]], obj_id: str) -> dict[str, str]:
  """Colour and shape, plus size where size narrows the matches."""
  obj = objects[obj_id]
  base = {'colour': obj['colour'], 'shape': obj['shape']}
  sized = {'size': obj['size'], **base}
  return sized if len(_matching(objects, sized)) < len(_matching(objects, base)) else base


def _classify(objects: Mapping[str, Mapping[str, str]], obj_id: str) -> tuple[str, dict[str, str]] | None:
  """(cue, attributes) of the expression for `obj_id`, or None when no expression refers to it uniquely."""
  appearance = _appearance_attributes(objects, obj_id)
  if len(_matching(objects, appearance)) == 1:
    return 'appearance', appearance
  motion = objects[obj_id]['motion']
  full = {**appearance, 'motion': motion}
  if len(_matching(objects, full)) != 1:
    return None
  return ('motion' if len(_matching(objects, {'motion': motion})) == 1 else 'both'), full


def _verify(objects: Mapping[str, Mapping[str, str]], expression: Mapping[str, Any]) -> None:
  """Raises RuntimeError unless the expression satisfies the uniqueness and minimality rules of its cue."""
  attributes, obj_id, cue = expression['attributes'], expression['obj_id'], expression['cue']
  problems = []
  if _matching(objects, attributes) != [obj_id]:
    problems.append('attributes do not match exactly the referred object')
  obj = objects[obj_id]
  appearance = {key: value for key, value in attributes.items() if key != 'motion'}
  twins = _matching(objects, {key: obj[key] for key in ('colour', 'shape', 'size')})
  if cue == 'appearance':
    if 'motion' in attributes:
      problems.append('appearance expression mentions motion')
  else:
    if 'motion' not in attributes or len(twins) < 2 or len(_matching(objects, appearance)) < 2:
      problems.append(f'{cue} expression without an identical-looking object')
    motion_matches = len(_matching(objects, {'motion': attributes.get('motion')}))
    if (cue == 'motion') != (motion_matches == 1):
      problems.append(f'{cue} expression whose motion matches {motion_matches} objects')
  if problems:
    raise RuntimeError(f'bad expression {expression!r} for objects {objects!r}: {"; ".join(problems)}')


def _sentence(rng: np.random.Generator, attributes: Mapping[str, str]) -> str:
  words = ['the']
  if 'size' in attributes:
    words.append(attributes['size'])
  words += [attributes['colour'], attributes['shape']]
  if 'motion' in attributes:
    phrases = _MOTION_PHRASES[attributes['motion']]
    if rng.random() < 0.3:
      words += ['that', 'is']
    words += phrases[rng.integers(len(phrases))]
  return ' '.join(words)


# ----------------------------------------------------------------------------------------------------------------
# Choosing objects and expressions.


def _pick_appearance(rng: np.random.Generator, pool: list[tuple[str, str]], taken: list[tuple[str, str, str]],
                     avoid: set[tuple[str, str, str]]) -> tuple[str, str, str]:
  """A (colour, shape, size) from `pool`, often sharing colour or shape with an appearance in `taken`."""
  for _ in range(100):
    u = rng.random()
    if taken and u < 0.25:  # same colour and shape, other size: the size word becomes necessary
      colour, shape, size = taken[rng.integers(len(taken))]
      candidate = (colour, shape, SIZES[1 - SIZES.index(size)])
      if (colour, shape) not in pool:
        continue
    else:
      if taken and u < 0.65:  # share the colour or the shape
        colour, shape, _ = taken[rng.integers(len(taken))]
        sharing = [c for c in pool if (c[0] == colour) != (c[1] == shape)]
        combo = sharing[rng.integers(len(sharing))] if sharing else pool[rng.integers(len(pool))]
      else:
        combo = pool[rng.integers(len(pool))]
      candidate = (*combo, SIZES[rng.integers(2)])
    if candidate not in avoid:
      return candidate
  raise RuntimeError('could not pick a new appearance')  # unreachable with the vocabulary sizes used here


def _choose_objects(rng: np.random.Generator, scenario: str, count: int, referable: list[tuple[str, str]],
                    everything: list[tuple[str, str]]) -> list[dict[str, str]]:
  """Objects' attributes for one video; `referable` is the pool for the intended referents, `everything` for the
  other objects."""
  appearances: list[tuple[str, str, str]] = []
  motions: list[str] = []
  if scenario == 'appearance':
    for index in range(count):
      pool = referable if index == 0 or rng.random() < 0.4 else everything
      appearances.append(_pick_appearance(rng, pool, appearances, set(appearances)))
      motions.append(MOTIONS[rng.integers(len(MOTIONS))])
  else:
    twin = _pick_appearance(rng, referable, [], set())
    first, second = rng.choice(len(MOTIONS), 2, replace=False)
    appearances += [twin, twin]
    motions += [MOTIONS[first], MOTIONS[second]]
    others = [m for m in MOTIONS if m not in motions]
    for index in range(2, count):
      appearances.append(_pick_appearance(rng, everything, appearances, set(appearances)))
      if scenario == 'both' and index < 4:
        motions.append(motions[index - 2])  # same motion as a twin, different looks
      else:
        motions.append(others[rng.integers(len(others))])
  order = rng.permutation(count)  # object ids in random order
  return [dict(zip(('colour', 'shape', 'size', 'motion'), (*appearances[i], motions[i]))) for i in order]


def _choose_expressions(rng: np.random.Generator, scenario: str, objects: dict[str, dict[str, str]],
                        may_refer: set[str]) -> list[dict[str, Any]] | None:
  classified = {obj_id: _classify(objects, obj_id) for obj_id in objects if obj_id in may_refer}
  classified = {obj_id: found for obj_id, found in classified.items() if found is not None}
  primary = [obj_id for obj_id, (cue, _) in classified.items() if cue == scenario]
  if not primary:
    return None
  second = {'appearance': 0.35, 'motion': 0.6, 'both': 0.9}[scenario]  # roughly balances the cues overall
  picks = rng.choice(len(primary), min(len(primary), 1 + int(rng.random() < second)), replace=False)
  chosen = [primary[i] for i in picks]
  extra = [obj_id for obj_id in classified if obj_id not in chosen]
  extra = [obj_id for obj_id in extra if classified[obj_id][0] != 'appearance'] or extra
  if extra and rng.random() < 0.35:
    chosen.append(extra[rng.integers(len(extra))])
  expressions = []
  for obj_id in sorted(chosen, key=int):
    cue, attributes = classified[obj_id]
    expression = {'exp': _sentence(rng, attributes), 'obj_id': obj_id, 'cue': cue, 'attributes': attributes}
    _verify(objects, expression)
    expressions.append(expression)
  return expressions


# ----------------------------------------------------------------------------------------------------------------
# Rendering.


def _muted(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(65, 165) + rng.uniform(-30, 30, 3)


def _texture(rng: np.random.Generator, kind: str, height: int, width: int, scale: float,
             colours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """[height, width, 3] float32 texture blending two colours."""
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  theta = rng.uniform(0, np.pi)
  if kind == 'noise':
    cell = rng.uniform(3, 9) * scale
    small = rng.random((int(height / cell) + 2, int(width / cell) + 2), dtype=np.float32)
    blend = np.clip(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
  elif kind == 'stripes':
    period = rng.uniform(5, 14) * scale
    blend = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6))
  elif kind == 'checker':
    cell = max(2.0, rng.uniform(4, 12) * scale)
    blend = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
  else:  # gradient
    projection = xx * np.cos(theta) + yy * np.sin(theta)
    blend = (projection - projection.min()) / max(float(np.ptp(projection)), 1.0)
  low, high = colours
  return (low + (high - low) * blend[..., None]).astype(np.float32)


@dataclasses.dataclass
class _Background:
  base: np.ndarray
  kind: str
  motion: str
  band: tuple[int, int, np.ndarray, np.ndarray] | None = None  # top, bottom, texture, offset per frame
  patch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # texture, mask, top-left per frame [T, 2]

  def frame(self, t: int) -> np.ndarray:
    image = self.base.copy()
    height, width = image.shape[:2]
    if self.band is not None:
      top, bottom, texture, offsets = self.band
      image[top:bottom] = texture[:, offsets[t]:offsets[t] + width]
    if self.patch is not None:
      texture, mask, corners = self.patch
      top, left = corners[t]
      y0, x0 = max(top, 0), max(left, 0)
      y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
      if y0 < y1 and x0 < x1:
        inside = mask[y0 - top:y1 - top, x0 - left:x1 - left]
        image[y0:y1, x0:x1][inside] = texture[y0 - top:y1 - top, x0 - left:x1 - left][inside]
    return image


def _background(rng: np.random.Generator, config: SyntheticConfig, speed: float) -> _Background:
  height, width, frames = config.height, config.width, config.num_frames
  scale = min(height, width) / _REFERENCE_SIDE
  kinds = rng.permutation(len(_TEXTURES))
  kind = _TEXTURES[kinds[0]]
  base = _texture(rng, kind, height, width, scale, (_muted(rng), _muted(rng)))
  motion = _BACKGROUND_MOTIONS[rng.choice(3, p=[0.4, 0.3, 0.3])]
  background = _Background(base, kind, motion)
  t = np.arange(frames)
  if motion == 'scrolling band':
    band_height = max(4, round(rng.uniform(0.2, 0.35) * height))
    top = int(rng.integers(0, height - band_height + 1))
    band_speed = min(speed * rng.uniform(0.7, 1.3), 4 * width / frames)
    offsets = np.round(band_speed * t).astype(int)
    if rng.random() < 0.5:
      offsets = offsets[-1] - offsets
    texture = _texture(rng, _TEXTURES[kinds[1]], band_height, width + int(offsets.max()) + 1, scale,
                       (_muted(rng), _muted(rng)))
    background.band = (top, top + band_height, texture, offsets)
  elif motion == 'drifting patch':
    side = min(height, width)
    patch_h, patch_w = (max(4, round(rng.uniform(0.25, 0.4) * side)) for _ in range(2))
    mask = np.zeros((patch_h, patch_w), np.uint8)
    cv2.ellipse(mask, (((patch_w - 1) / 2, (patch_h - 1) / 2), (patch_w, patch_h), 0), 1, -1)
    contrast = (rng.uniform(20, 110, 3), rng.uniform(150, 240, 3))
    texture = _texture(rng, _TEXTURES[kinds[1 + rng.integers(3)]], patch_h, patch_w, scale, contrast)
    angle = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(0.25, 0.75, 2) * (height, width)
    path = start + speed * rng.uniform(0.7, 1.3) * t[:, None] * (np.sin(angle), np.cos(angle))
    corners = np.round(path - (patch_h / 2, patch_w / 2)).astype(int)
    background.patch = (texture, mask.astype(bool), corners)
  return background


def _trajectory(rng: np.random.Generator, motion: str, extent: float, config: SyntheticConfig,
                speed: float) -> np.ndarray:
  """Centres [T, 2] as (x, y), keeping the shape (half size `extent`) inside the frame."""
  frames = config.num_frames
  low = np.array([extent, extent])
  high = np.array([config.width - 1 - extent, config.height - 1 - extent])
  t = np.arange(frames, dtype=np.float64)
  centre = rng.uniform(low, high)
  path = np.repeat(centre[None], frames, 0)
  velocity = speed * rng.uniform(0.8, 1.2)
  if motion in ('moving left', 'moving right', 'moving up', 'moving down'):
    axis = 0 if motion in ('moving left', 'moving right') else 1
    room = high[axis] - low[axis]
    velocity = min(velocity, 0.9 * room / (frames - 1))
    start = rng.uniform(low[axis], high[axis] - velocity * (frames - 1))
    path[:, axis] = start + velocity * t
    if motion in ('moving left', 'moving up'):
      path[:, axis] = low[axis] + high[axis] - path[:, axis]
  elif motion == 'jumping':
    amplitude = min(velocity * _JUMP_PERIOD, 0.9 * (high[1] - low[1]))
    floor = rng.uniform(low[1] + amplitude, high[1])
    path[:, 1] = floor - amplitude * np.abs(np.sin(np.pi * t / _JUMP_PERIOD))
  return path


def _draw(mask: np.ndarray, shape: str, centre: np.ndarray, radius: float) -> None:
  shift = 4
  one = 1 << shift
  if shape == 'circle':
    point = tuple(int(v) for v in np.round(centre * one))
    cv2.circle(mask, point, int(round(radius * one)), 1, -1, cv2.LINE_8, shift)
  else:
    points = np.round((centre + _OUTLINES[shape] * radius) * one).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, cv2.LINE_8, shift=shift)


def _label_maps(objects: list[dict[str, str]], paths: list[np.ndarray], depth: np.ndarray,
                config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
  """Label maps [T, H, W] uint8 (objects later in `depth` in front; id = index + 1) and each object's unoccluded
  area [objects, T]."""
  side = min(config.height, config.width)
  labels = np.zeros((config.num_frames, config.height, config.width), np.uint8)
  areas = np.zeros((len(objects), config.num_frames), np.int64)
  mask = np.zeros((config.height, config.width), np.uint8)
  for t in range(config.num_frames):
    for index in depth:
      mask[:] = 0
      _draw(mask, objects[index]['shape'], paths[index][t], _RADIUS[objects[index]['size']] * side)
      labels[t][mask > 0] = index + 1
      areas[index, t] = np.count_nonzero(mask)
  return labels, areas


def _well_visible(labels: np.ndarray, areas: np.ndarray) -> bool:
  """Every object shows at least half of itself in at least 3/4 of the frames."""
  needed = math.ceil(0.75 * labels.shape[0])
  for index, full in enumerate(areas):
    visible = np.count_nonzero(labels == index + 1, axis=(1, 2))
    if ((visible >= 0.5 * full) & (full > 0)).sum() < needed:
      return False
  return True


# ----------------------------------------------------------------------------------------------------------------
# Videos and files.


def _video(rng: np.random.Generator, scenario: str, config: SyntheticConfig, referable: list[tuple[str, str]],
           everything: list[tuple[str, str]], compositional: bool) -> dict[str, Any]:
  speed = config.speed * min(config.height, config.width) / _REFERENCE_SIDE
  lowest = max(config.min_objects, 3) if scenario == 'both' else config.min_objects
  held = set(referable)
  for _ in range(100):
    count = int(rng.integers(lowest, config.max_objects + 1))
    chosen = _choose_objects(rng, scenario, count, referable, everything)
    objects = {str(i + 1): obj for i, obj in enumerate(chosen)}
    may_refer = {obj_id for obj_id, obj in objects.items()
                 if not compositional or (obj['colour'], obj['shape']) in held}
    expressions = _choose_expressions(rng, scenario, objects, may_refer)
    if expressions is None:
      continue
    for _ in range(50):
      paths = [_trajectory(rng, obj['motion'], _EXTENT[obj['shape']] * _RADIUS[obj['size']] *
                           min(config.height, config.width), config, speed) for obj in chosen]
      depth = rng.permutation(count)
      labels, areas = _label_maps(chosen, paths, depth, config)
      if _well_visible(labels, areas):
        break
    else:
      continue
    background = _background(rng, config, speed)
    colours = np.array([(0, 0, 0)] + [COLOURS[obj['colour']] for obj in chosen], np.float32)
    return {'objects': objects, 'expressions': expressions, 'labels': labels, 'background': background,
            'colours': colours}
  raise RuntimeError(f'could not lay out a {scenario!r} video; try a larger frame or fewer objects')


def _write_video(split_dir: pathlib.Path, video_id: str, video: dict[str, Any], rng: np.random.Generator) -> list[str]:
  """Renders and writes the frames and annotations; returns the frame names."""
  images = split_dir / 'JPEGImages' / video_id
  annotations = split_dir / 'Annotations' / video_id
  images.mkdir(parents=True)
  annotations.mkdir(parents=True)
  names = []
  for t, labels in enumerate(video['labels']):
    name = f'{t:05d}'
    image = video['background'].frame(t)
    image = np.where(labels[..., None] > 0, video['colours'][labels], image)
    image += rng.normal(0, 2.0, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(images / f'{name}.jpg'), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
      raise OSError(f'could not write {images / name}.jpg')
    annotation = Image.frombytes('P', (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    annotation.putpalette(_PALETTE)
    annotation.save(annotations / f'{name}.png', format='PNG')
    names.append(name)
  return names


def _write_all(root: pathlib.Path, config: SyntheticConfig, progress: bool) -> dict[str, Any]:
  held = held_out_combinations(config)
  everything = [(colour, shape) for colour in COLOURS for shape in SHAPES]
  allowed = [combo for combo in everything if combo not in held]
  scenarios = CUES if config.max_objects >= 3 else CUES[:2]
  summary_splits = {}
  totals = dict.fromkeys(CUES, 0)
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=sum(count for _, count in config.num_videos), unit='video', desc='synthetic rvos')
  else:
    bar = None
  try:
    for split, count in config.num_videos:
      compositional = split == 'test_compositional'
      split_dir = root / split
      (split_dir / 'JPEGImages').mkdir(parents=True)
      (split_dir / 'Annotations').mkdir(parents=True)
      videos = {}
      counts = {'videos': count, 'frames': 0, 'objects': 0, 'expressions': 0, 'cues': dict.fromkeys(CUES, 0)}
      for index in range(count):
        rng = np.random.default_rng([config.seed, _SPLIT_INDEX[split], index])
        scenario = scenarios[index % len(scenarios)]
        video = _video(rng, scenario, config, held if compositional else allowed,
                       everything if compositional else allowed, compositional)
        video_id = f'syn_{split}_{index:04d}'
        frames = _write_video(split_dir, video_id, video, rng)
        expressions = {str(i): expression for i, expression in enumerate(video['expressions'])}
        videos[video_id] = {'frames': frames, 'expressions': expressions, 'objects': video['objects'],
                            'background': {'texture': video['background'].kind,
                                                           'motion': video['background'].motion}}
        counts['frames'] += len(frames)
        counts['objects'] += len(video['objects'])
        counts['expressions'] += len(expressions)
        for expression in expressions.values():
          counts['cues'][expression['cue']] += 1
          totals[expression['cue']] += 1
        if bar is not None:
          bar.update()
      meta_dir = root / 'meta_expressions' / split
      meta_dir.mkdir(parents=True)
      with open(meta_dir / 'meta_expressions.json', 'w') as f:
        json.dump({'videos': videos}, f, indent=1)
      summary_splits[split] = counts
  finally:
    if bar is not None:
      bar.close()
  summary = {
      'format_version': FORMAT_VERSION,
      'config': config.to_dict(),
      'speed_pixels_per_frame': config.speed * min(config.height, config.width) / _REFERENCE_SIDE,
      'held_out_combinations': [list(combo) for combo in held],
      'vocabulary': {'colours': list(COLOURS), 'shapes': list(SHAPES), 'sizes': list(SIZES),
                     'motions': list(MOTIONS)},
      'splits': summary_splits,
      'cues': totals,
  }
  with open(root / 'synthetic_rvos.json', 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def generate(root: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), *,
             progress: bool = False) -> dict[str, Any]:
  """Writes the data set under `root` (replacing an earlier generated set there); returns the summary that is also
  written to root/synthetic_rvos.json. Work happens in a temporary sibling directory renamed into place at the end."""
  root = pathlib.Path(root).absolute()
  if root.exists() and not (root.is_dir() and (not any(root.iterdir()) or (root / 'synthetic_rvos.json').exists())):
    raise FileExistsError(f'{root} exists and is not a generated synthetic data set; not replacing it')
  root.parent.mkdir(parents=True, exist_ok=True)
  temporary = root.with_name(f'.{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}')
  temporary.mkdir()
  try:
    summary = _write_all(temporary, config, progress)
    if root.exists():
      old = root.with_name(f'.{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}')
      root.rename(old)
      temporary.rename(root)
      shutil.rmtree(old)
    else:
      temporary.rename(root)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return summary


def is_generated(root: str | os.PathLike, config: SyntheticConfig = SyntheticConfig()) -> bool:
  """True when root/synthetic_rvos.json exists and records the same config (and generator format version)."""
  try:
    with open(pathlib.Path(root) / 'synthetic_rvos.json') as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return False
  return (isinstance(summary, dict) and summary.get('format_version') == FORMAT_VERSION and
          summary.get('config') == config.to_dict())
