"""The synthetic referring-video data set: layout, files, expressions, compositional split, determinism, config."""

import dataclasses
import json
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from data_pipeline import synthetic_rvos
from data_pipeline.synthetic_rvos import SyntheticConfig, generate, is_generated

TINY = SyntheticConfig(seed=3, height=48, width=40, num_frames=6,
                       num_videos=(('train', 4), ('validation', 3), ('test', 3), ('test_compositional', 3)))
APPEARANCE_KEYS = ('colour', 'shape', 'size')
MOTION_WORDS = {'moving', 'going', 'jumping', 'bouncing', 'still', 'static', 'left', 'right', 'up', 'down'}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic') / 'rvos'
  summary = generate(root, TINY)
  return root, summary


def _meta(root, split):
  with open(root / 'meta_expressions' / split / 'meta_expressions.json') as f:
    return json.load(f)['videos']


def _videos(root):
  for split in synthetic_rvos.SPLITS:
    for video_id, video in _meta(root, split).items():
      yield split, video_id, video


def _labels(root, split, video_id, frames):
  return np.stack([np.array(Image.open(root / split / 'Annotations' / video_id / f'{name}.png')) for name in frames])


def _files(root):
  return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


def _matching(objects, attributes):
  return [obj_id for obj_id, obj in objects.items() if all(obj[k] == v for k, v in attributes.items())]


def test_layout_and_file_names(dataset):
  root, summary = dataset
  assert sorted(p.name for p in root.iterdir()) == sorted([*synthetic_rvos.SPLITS, 'meta_expressions',
                                                           'synthetic_rvos.json'])
  assert not list(root.parent.glob('.rvos.*')), 'temporary directories left behind'
  for split, count in TINY.num_videos:
    meta = _meta(root, split)
    expected_ids = [f'syn_{split}_{i:04d}' for i in range(count)]
    assert list(meta) == expected_ids
    assert sorted(p.name for p in (root / split / 'JPEGImages').iterdir()) == expected_ids
    assert sorted(p.name for p in (root / split / 'Annotations').iterdir()) == expected_ids
    for video_id, video in meta.items():
      names = [f'{t:05d}' for t in range(TINY.num_frames)]
      assert video['frames'] == names
      assert sorted(p.name for p in (root / split / 'JPEGImages' / video_id).iterdir()) == [f'{n}.jpg' for n in names]
      assert sorted(p.name for p in (root / split / 'Annotations' / video_id).iterdir()) == [f'{n}.png' for n in names]
      assert 1 <= len(video['expressions']) <= 3
      assert list(video['expressions']) == [str(i) for i in range(len(video['expressions']))]
      assert list(video['objects']) == [str(i) for i in range(1, len(video['objects']) + 1)]
      assert TINY.min_objects <= len(video['objects']) <= TINY.max_objects
    assert summary['splits'][split]['videos'] == count
  with open(root / 'synthetic_rvos.json') as f:
    assert json.load(f) == summary
  assert summary['config'] == dataclasses.asdict(TINY) | {'num_videos': [list(p) for p in TINY.num_videos]}


def test_frames_and_annotations(dataset):
  root, _ = dataset
  for split, video_id, video in _videos(root):
    for name in video['frames']:
      with Image.open(root / split / 'JPEGImages' / video_id / f'{name}.jpg') as image:
        assert (image.format, image.mode, image.size) == ('JPEG', 'RGB', (TINY.width, TINY.height))
      with Image.open(root / split / 'Annotations' / video_id / f'{name}.png') as annotation:
        assert (annotation.format, annotation.mode, annotation.size) == ('PNG', 'P', (TINY.width, TINY.height))
    labels = _labels(root, split, video_id, video['frames'])
    ids = {int(obj_id) for obj_id in video['objects']}
    assert set(np.unique(labels).tolist()) == {0} | ids
    for frame in labels:
      assert 0 in frame and set(np.unique(frame).tolist()) <= {0} | ids
    for expression in video['expressions'].values():
      assert (labels == int(expression['obj_id'])).any()


def test_expressions_refer_uniquely_with_their_cue(dataset):
  root, summary = dataset
  counted = {split: dict.fromkeys(synthetic_rvos.CUES, 0) for split in synthetic_rvos.SPLITS}
  for split, _, video in _videos(root):
    objects = video['objects']
    for obj in objects.values():
      assert obj['colour'] in synthetic_rvos.COLOURS and obj['shape'] in synthetic_rvos.SHAPES
      assert obj['size'] in synthetic_rvos.SIZES and obj['motion'] in synthetic_rvos.MOTIONS
    for expression in video['expressions'].values():
      sentence, attributes, obj_id, cue = (expression[k] for k in ('exp', 'attributes', 'obj_id', 'cue'))
      counted[split][cue] += 1
      assert re.fullmatch(r'the( [a-z]+)+', sentence), sentence
      words = set(sentence.split())
      assert {'colour', 'shape'} <= set(attributes) <= {'colour', 'shape', 'size', 'motion'}
      assert {attributes['colour'], attributes['shape']} <= words
      assert ('size' in attributes) == bool(words & set(synthetic_rvos.SIZES)), sentence
      if 'size' in attributes:
        assert attributes['size'] in words
      assert ('motion' in attributes) == bool(words & MOTION_WORDS), sentence
      assert _matching(objects, attributes) == [obj_id], (sentence, objects)
      looks = _matching(objects, {k: objects[obj_id][k] for k in APPEARANCE_KEYS})
      mentioned_looks = _matching(objects, {k: v for k, v in attributes.items() if k != 'motion'})
      if cue == 'appearance':
        assert 'motion' not in attributes and mentioned_looks == [obj_id]
      else:
        assert len(looks) >= 2, 'a motion/both expression needs an identical-looking object'
        assert len(mentioned_looks) >= 2
        same_motion = _matching(objects, {'motion': attributes['motion']})
        assert (same_motion == [obj_id]) == (cue == 'motion'), (cue, sentence, objects)
  for split in synthetic_rvos.SPLITS:
    assert summary['splits'][split]['cues'] == counted[split]
  totals = {cue: sum(c[cue] for c in counted.values()) for cue in synthetic_rvos.CUES}
  assert summary['cues'] == totals
  assert all(totals[cue] > 0 for cue in synthetic_rvos.CUES), totals


def test_cues_roughly_balanced_for_the_default_sizes(tmp_path):
  config = dataclasses.replace(TINY, num_videos=(('train', 30),))
  cues = generate(tmp_path / 'rvos', config)['cues']
  total = sum(cues.values())
  assert all(0.2 <= cues[cue] / total <= 0.5 for cue in synthetic_rvos.CUES), cues


def test_compositional_split(dataset):
  root, summary = dataset
  held = {tuple(combo) for combo in summary['held_out_combinations']}
  assert held == set(synthetic_rvos.held_out_combinations(TINY))
  combos = len(synthetic_rvos.COLOURS) * len(synthetic_rvos.SHAPES)
  assert len(held) == round(TINY.held_out_fraction * combos)
  allowed = {(c, s) for c in synthetic_rvos.COLOURS for s in synthetic_rvos.SHAPES} - held
  assert {c for c, _ in allowed} == set(synthetic_rvos.COLOURS)
  assert {s for _, s in allowed} == set(synthetic_rvos.SHAPES)
  for split, _, video in _videos(root):
    pairs = {obj_id: (obj['colour'], obj['shape']) for obj_id, obj in video['objects'].items()}
    if split == 'test_compositional':
      assert all(pairs[e['obj_id']] in held for e in video['expressions'].values())
    else:
      assert not set(pairs.values()) & held, (split, pairs)
  other = synthetic_rvos.held_out_combinations(dataclasses.replace(TINY, seed=TINY.seed + 1))
  assert set(other) != held


def _track(labels, obj_id):
  """Per-frame centroid (x, y), area, and whether the object touches no other object (so is unoccluded)."""
  mask = labels == obj_id
  area = mask.sum((1, 2))
  ys, xs = np.mgrid[:mask.shape[1], :mask.shape[2]]
  safe = np.maximum(area, 1)
  centres = np.stack([(mask * xs).sum((1, 2)) / safe, (mask * ys).sum((1, 2)) / safe], -1)
  grown = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
  grown = np.any([grown[:, 1 + dy:grown.shape[1] - 1 + dy, 1 + dx:grown.shape[2] - 1 + dx]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
  isolated = (area > 0) & ~(grown & (labels != obj_id) & (labels != 0)).any((1, 2))
  return centres, area, isolated


def test_objects_move_as_labelled(dataset):
  root, summary = dataset
  checked = dict.fromkeys(synthetic_rvos.MOTIONS, 0)
  direction = {'moving left': (0, -1), 'moving right': (0, 1), 'moving up': (1, -1), 'moving down': (1, 1)}
  slowest = 0.8 * summary['speed_pixels_per_frame']  # each object moves at speed x U(0.8, 1.2)
  total = 0
  for split, video_id, video in _videos(root):
    labels = _labels(root, split, video_id, video['frames'])
    for obj_id, obj in video['objects'].items():
      total += 1
      centres, area, isolated = _track(labels, int(obj_id))
      frames = np.flatnonzero(isolated)
      if len(frames) < 2:
        continue
      motion, where = obj['motion'], (video_id, obj_id, obj['motion'], centres, isolated)
      if motion == 'static':
        assert np.ptp(centres[frames], 0).max() < 1e-6 and np.ptp(area[frames]) == 0, where
      elif motion == 'jumping':
        assert np.ptp(centres[area >= 0.5 * area.max(), 1]) > 1, where
        assert np.ptp(centres[frames, 0]) < 1.5, where
      else:
        axis, sign = direction[motion]
        shift = centres[frames[-1]] - centres[frames[0]]
        assert sign * shift[axis] > max(0.0, slowest * (frames[-1] - frames[0]) - 1.0), where  # 1: rasterisation
        assert abs(shift[1 - axis]) < 1, where
      checked[motion] += 1
  assert sum(checked.values()) >= 0.3 * total, checked
  linear = sum(checked[motion] for motion in direction)
  assert checked['static'] and checked['jumping'] and linear, checked


def test_deterministic_and_seed_dependent(dataset, tmp_path):
  root, _ = dataset
  again = tmp_path / 'again'
  generate(again, TINY)
  reference = _files(root)
  assert _files(again) == reference
  other = tmp_path / 'other'
  generate(other, dataclasses.replace(TINY, seed=TINY.seed + 1))
  changed = _files(other)
  assert changed.keys() == reference.keys()
  jpegs = [path for path in reference if path.suffix == '.jpg']
  assert sum(changed[p] != reference[p] for p in jpegs) > 0.9 * len(jpegs)
  assert changed[pathlib.Path('meta_expressions/train/meta_expressions.json')] != reference[
      pathlib.Path('meta_expressions/train/meta_expressions.json')]


def test_is_generated_and_replacement(tmp_path):
  config = dataclasses.replace(TINY, num_videos=(('train', 1), ('test_compositional', 1)))
  root = tmp_path / 'rvos'
  assert not is_generated(root, config)
  generate(root, config)
  assert is_generated(root, config)
  assert not is_generated(root, dataclasses.replace(config, seed=config.seed + 1))
  assert not is_generated(root, dataclasses.replace(config, speed=2.0))
  assert not is_generated(root, TINY)
  bigger = dataclasses.replace(config, num_videos=(('train', 2),))
  generate(root, bigger)  # replaces the earlier set
  assert is_generated(root, bigger) and not is_generated(root, config)
  assert sorted(p.name for p in (root / 'train' / 'JPEGImages').iterdir()) == ['syn_train_0000', 'syn_train_0001']
  assert not (root / 'test_compositional').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['rvos']
  (tmp_path / 'unrelated').mkdir()
  (tmp_path / 'unrelated' / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError):
    generate(tmp_path / 'unrelated', config)
  assert (tmp_path / 'unrelated' / 'keep.txt').read_text() == 'mine'


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
  config = dataclasses.replace(TINY, num_videos=(('train', 3),))
  calls = []
  original = synthetic_rvos._write_video

  def failing(*args):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return original(*args)

  monkeypatch.setattr(synthetic_rvos, '_write_video', failing)
  with pytest.raises(KeyboardInterrupt):
    generate(tmp_path / 'rvos', config)
  assert not is_generated(tmp_path / 'rvos', config)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('field, value', [
    ('seed', -1), ('height', 16), ('width', 0), ('height', 48.0), ('num_frames', 2), ('min_objects', 1),
    ('max_objects', 9), ('speed', 0.0), ('speed', -2.0), ('speed', float('nan')), ('held_out_fraction', 0.0),
    ('held_out_fraction', 0.9), ('num_videos', (('training', 2),)), ('num_videos', (('train', -1),)),
    ('num_videos', (('train', 2), ('train', 3))), ('num_videos', (('train', 0),)), ('num_videos', 5)])
def test_bad_config_values_raise(field, value):
  with pytest.raises(ValueError, match=re.escape(field)):
    SyntheticConfig(**{field: value})


def test_min_above_max_objects_raises():
  with pytest.raises(ValueError, match='min_objects'):
    SyntheticConfig(min_objects=4, max_objects=3)
