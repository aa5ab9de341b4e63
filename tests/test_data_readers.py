"""Every reader on fake releases in the official layouts: every field of every example, skips and errors."""

import json
import shutil

import cv2
import numpy as np
import pytest

import data_fakes as fakes
from data_pipeline import readers

SIZE = [fakes.HEIGHT, fakes.WIDTH]


def decoded_value(encoded: bytes) -> float:
  """The grey level of a fake frame (frame n is flat grey frame_value(n))."""
  return cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR).mean()


def collect(reader, split):
  skipped = readers.SkipReport()
  examples = dict(reader.examples(split, skipped))
  return examples, skipped


def check_example(example, *, video, frame, previous, object_id, expression_id, sentence, split, frame_number=None,
                  previous_number=None, mask=None, tolerance=3.0):
  """frame_number: the fake frame drawn at that index (YouTube-VOS stores every 5th frame: number = index // 5)."""
  assert example['video_id'] == video and example['split'] == split and example['sentence'] == sentence
  assert (example['frame_index'], example['prev_frame_index']) == (frame, previous)
  assert (example['object_id'], example['expression_id']) == (object_id, expression_id)
  assert example['orig_size'].tolist() == SIZE
  number = frame if frame_number is None else frame_number
  previous_number = previous if previous_number is None else previous_number
  assert abs(decoded_value(example['frame']) - fakes.frame_value(number)) < tolerance
  assert abs(decoded_value(example['prev_frame']) - fakes.frame_value(previous_number)) < tolerance
  expected = fakes.object_mask(object_id, frame) if mask is None else mask
  np.testing.assert_array_equal(example['mask'][..., 0], expected)
  assert example['mask'].dtype == np.uint8 and example['has_mask']


def test_previous_frame_rule():
  assert readers.previous_frame(range(1, 20), 10, 6) == 4
  assert readers.previous_frame(range(1, 20), 3, 6) == 1  # clamped at the start
  assert readers.previous_frame(range(1, 20), 1, 6) == 1  # the first frame is its own previous frame
  assert readers.previous_frame([0, 5, 10, 15], 15, 6) == 10  # sparse frames: the nearest to 15 - 6
  assert readers.previous_frame([0, 5, 10, 15], 5, 6) == 0
  assert readers.previous_frame([0, 5, 10, 15], 10, 5) == 5
  assert readers.previous_frame([0, 4, 8], 8, 6) == 0  # tie between 0 and 4 (both 2 away from 2) goes earlier


def test_a2d_release(tmp_path):
  fakes.write_a2d_release(tmp_path)
  reader = readers.A2DSentencesReader(tmp_path, delta=6)
  assert reader.splits() == ('train', 'test')
  train, skipped = collect(reader, 'train')
  assert sorted(train) == ['vid_train/4/1/0', 'vid_train/4/2/1', 'vid_train/9/1/0']
  common = dict(video='vid_train', split='train', tolerance=5.0)  # mp4 compression shifts the grey a little
  check_example(train['vid_train/4/1/0'], frame=4, previous=1, object_id=1, expression_id=0,
                sentence='the man on the left', **common)
  check_example(train['vid_train/9/1/0'], frame=9, previous=3, object_id=1, expression_id=0,
                sentence='the man on the left', **common)
  check_example(train['vid_train/4/2/1'], frame=4, previous=1, object_id=2, expression_id=1,
                sentence='a dog, running', **common)
  assert dict(skipped.counts) == {'instance id is not a number': 1, 'video listed in a2d_missed_videos.txt': 1,
                                  'object absent from every mask': 1, 'empty sentence': 1}
  test, _ = collect(reader, 'test')
  check_example(test['vid_test/7/1/4'], video='vid_test', frame=7, previous=1, object_id=1, expression_id=4,
                sentence='a bird flying', split='test', tolerance=5.0)
  assert len(test) == 1


def test_a2d_delta_is_configurable(tmp_path):
  fakes.write_a2d_release(tmp_path)
  train, _ = collect(readers.A2DSentencesReader(tmp_path, delta=2), 'train')
  assert train['vid_train/9/1/0']['prev_frame_index'] == 7
  assert abs(decoded_value(train['vid_train/9/1/0']['prev_frame']) - fakes.frame_value(7)) < 5


def test_a2d_list_layout(tmp_path):
  fakes.write_a2d_lists(tmp_path)
  reader = readers.A2DListReader(tmp_path)
  train, _ = collect(reader, 'train')
  check_example(train['vid_train/8/3/0'], video='vid_train', frame=8, previous=2, object_id=3, expression_id=0,
                sentence='the cat, near the door', split='train')
  check_example(train['vid_train/8/1/1'], video='vid_train', frame=8, previous=2, object_id=1, expression_id=1,
                sentence='a man', split='train')
  test, _ = collect(reader, 'test')
  assert list(test) == ['vid_train/8/1/0']


def test_jhmdb_all_frames_and_sample(tmp_path):
  fakes.write_jhmdb(tmp_path, num_frames=8, num_masks=7)
  examples, _ = collect(readers.JHMDBSentencesReader(tmp_path), 'test')
  assert [e['frame_index'] for e in examples.values()] == list(range(1, 8))  # frame 8 has no mask
  for frame in range(1, 8):
    check_example(examples[f'vid_wave/{frame}/1/0'], video='vid_wave', frame=frame, previous=max(1, frame - 6),
                  object_id=1, expression_id=0, sentence='man waving his hand', split='test')
  sampled, _ = collect(readers.JHMDBSentencesReader(tmp_path, frames='sample3', seed=1), 'test')
  again, _ = collect(readers.JHMDBSentencesReader(tmp_path, frames='sample3', seed=1), 'test')
  assert len(sampled) == 3 and list(sampled) == list(again) and set(sampled) <= set(examples)
  mttr = tmp_path / 'samples.json'
  mttr.write_text('[["vid_wave", "x/Rename_Images/wave/vid_wave/00002.png", "m", 8, "q"], '
                  '["vid_wave", "x/00005.png", "m", 8, "q"], ["vid_wave", "x/00006.png", "m", 8, "q"]]')
  listed, _ = collect(readers.JHMDBSentencesReader(tmp_path, frames='sample3', samples_file=str(mttr)), 'test')
  assert [e['frame_index'] for e in listed.values()] == [2, 5, 6]
  mttr.write_text('[["vid_wave", "x/00008.png", "m", 8, "q"]]')  # frame 8 has no mask
  with pytest.raises(readers.DataError, match=r'lists frames \[8\] of video vid_wave'):
    collect(readers.JHMDBSentencesReader(tmp_path, frames='sample3', samples_file=str(mttr)), 'test')


def test_youtube_vos(tmp_path):
  fakes.write_youtube_vos(tmp_path)
  reader = readers.YouTubeVOSReader(tmp_path, delta=6)
  train, skipped = collect(reader, 'train')
  for frame in (0, 5, 10, 15, 20, 25):
    previous = max(0, frame - 5)  # every 5th frame on disk: δ = 6 picks the stored frame 5 earlier
    check_example(train[f'v_train/{frame}/1/0'], video='v_train', frame=frame, previous=previous, object_id=1,
                  expression_id=0, sentence='a person on the left', split='train', frame_number=frame // 5,
                  previous_number=previous // 5)
  # Object 2 is absent from frame 0.
  assert {k for k in train if k.endswith('/2/1')} == {f'v_train/{f}/2/1' for f in (5, 10, 15, 20, 25)}
  check_example(train['v_train/10/2/1'], video='v_train', frame=10, previous=5, object_id=2, expression_id=1,
                sentence='a skateboard', split='train', frame_number=2, previous_number=1)
  assert dict(skipped.counts) == {'object absent from every mask': 1, 'empty sentence': 1}
  validation, _ = collect(reader, 'validation')
  assert {e['video_id'] for e in validation.values()} == {'v_valid'}  # v_test is in the test set
  example = validation['v_valid/10/0/0']  # no object named: object_id 0
  assert not example['has_mask'] and not example['mask'].any() and example['orig_size'].tolist() == SIZE
  assert len(validation) == 6


def test_davis(tmp_path):
  fakes.write_davis(tmp_path)
  reader = readers.DAVISReader(tmp_path, delta=2)
  train, _ = collect(reader, 'train')
  sets = {e['expression_set'] for e in train.values()}
  assert sets == {'annotator1_first_frame', 'annotator1_full_video', 'annotator2_first_frame'}
  _, skipped = collect(reader, 'train')
  assert dict(skipped.counts) == {'video in neither ImageSets/2017 list': 1}
  red_car = [e for e in train.values() if e['sentence'] == 'a red car']  # spaces collapsed, quotes removed
  assert [e['frame_index'] for e in red_car] == list(range(6))
  check_example(red_car[3], video='classic-car', frame=3, previous=1, object_id=1, expression_id=1,
                sentence='a red car', split='train')
  man = [e for e in train.values() if e['object_id'] == 2]
  assert [e['frame_index'] for e in man] == [0, 1, 2, 3]  # training keeps frames where the object is visible
  assert man[0]['sentence'] == 'a man in a café'
  assert [e['sentence'] for e in train.values() if e['expression_set'] == 'annotator2_first_frame'][0] == \
      'the café car'  # latin-1
  validation, _ = collect(reader, 'validation')
  small_dog = [e for e in validation.values() if e['object_id'] == 2]
  assert [e['frame_index'] for e in small_dog] == list(range(6))  # evaluation keeps frames where it is absent
  assert not small_dog[5]['mask'].any() and small_dog[5]['has_mask']
  assert {e['video_id'] for e in validation.values()} == {'dogs-scale'}  # "dog-scale" fixed



def test_mevis(tmp_path):
  fakes.write_mevis(tmp_path)
  reader = readers.MevisReader(tmp_path, delta=2)
  assert reader.splits() == ('train', 'valid_u', 'valid')
  train, skipped = collect(reader, 'train')
  # Every frame of the video is a target frame; the one-frame video and the empty sentence are skipped.
  assert dict(skipped.counts) == {'video of fewer than 2 frames': 1, 'empty sentence': 1}
  assert {e['video_id'] for e in train.values()} == {'m_train'}
  frames = range(fakes.MEVIS_FRAMES)
  assert [e['anno_ids'] for e in train.values() if e['expression_id'] == 1] == ['102'] * 6
  dog = [train[f'm_train/{n}/2/1'] for n in frames]  # targets: (101,) is 0, (101, 102) is 1, (102,) is 2
  for n, example in enumerate(dog):
    expected = fakes.object_mask(2, n) if n < 4 else np.zeros(SIZE, np.uint8)  # absent from frames 4-5: empty
    check_example(example, video='m_train', frame=n, previous=max(0, n - 2), object_id=2, expression_id=1,
                  sentence='the dog running away', split='train', mask=expected)
  # Two objects: the union of their masks; both expressions naming them share the target.
  for expression_id in (2, 3):
    both = train[f'm_train/3/1/{expression_id}']
    assert both['anno_ids'] == '101,102'
    check_example(both, video='m_train', frame=3, previous=1, object_id=1, expression_id=expression_id,
                  sentence=both['sentence'], split='train', mask=fakes.object_mask(1, 3) | fakes.object_mask(2, 3))
  check_example(train['m_train/5/1/2'], video='m_train', frame=5, previous=3, object_id=1, expression_id=2,
                sentence='the two animals moving', split='train', mask=fakes.object_mask(1, 5))
  check_example(train['m_train/0/0/0'], video='m_train', frame=0, previous=0, object_id=0, expression_id=0,
                sentence='the cat walking left', split='train', mask=fakes.object_mask(1, 0))
  valid_u, _ = collect(reader, 'valid_u')
  assert len(valid_u) == fakes.MEVIS_FRAMES and valid_u['m_valid_u/4/0/0']['mask'].any()
  (tmp_path / 'valid_u' / 'mask_dict.json').write_text(json.dumps({'201': [None] * fakes.MEVIS_FRAMES}))
  absent, _ = collect(readers.MevisReader(tmp_path), 'valid_u')  # the object in no frame: empty targets
  assert len(absent) == fakes.MEVIS_FRAMES and not any(e['mask'].any() for e in absent.values())
  valid, _ = collect(reader, 'valid')  # no masks: every frame, empty targets
  assert len(valid) == fakes.MEVIS_FRAMES
  assert all(not e['has_mask'] and not e['mask'].any() and e['anno_ids'] == '' for e in valid.values())


@pytest.mark.parametrize('damage, match', [
    (lambda root: (root / 'train/mask_dict.json').write_text('{"101": ['), r'train/mask_dict.json is not a readable'),
    (lambda root: (root / 'train/mask_dict.json').write_text('{}'),
     r"mask_dict.json lacks the masks of annotations \['101', '102', '103'\] \(3 in all\)"),
    (lambda root: (root / 'train/meta_expressions.json').write_text('{"videos": []}'),
     r'meta_expressions.json is not a meta_expressions file'),
    (lambda root: (root / 'train/JPEGImages/m_train/00003.jpg').unlink(),
     r'JPEGImages/m_train lacks frames \[3\] that meta_expressions.json lists'),
    (lambda root: (root / 'train/mask_dict.json').write_text(
        '{"101": [{"size": [32, 48], "counts": 7}, null, null, null, null, null], "102": [null, null, null, null, '
        'null, null], "103": [null]}'), r'annotation 101, frame 0 is not a COCO RLE.*example m_train/0/0/0'),
    (lambda root: (root / 'train/mask_dict.json').write_text(json.dumps(
        {'101': [fakes.coco_rle(np.ones((10, 10)))] * 6, '102': [None] * 6, '103': [None]})),
     r'the masks of frame 0 are \(10, 10\), the frame is \(32, 48\).*example m_train/0/0/0'),
    (lambda root: (root / 'train/mask_dict.json').write_text('{"101": [null], "102": [null], "103": [null]}'),
     r'annotation 10[12] has 1 masks, video m_train has 6 frames'),
])
def test_mevis_bad_input(tmp_path, damage, match):
  fakes.write_mevis(tmp_path)
  damage(tmp_path)
  with pytest.raises(readers.DataError, match=match):
    collect(readers.MevisReader(tmp_path), 'train')


@pytest.mark.parametrize('damage, match', [
    (lambda root: (root / 'train/JPEGImages/v_train/00010.jpg').write_bytes(b'not a jpeg'),
     r'00010.jpg is not a readable image.*example v_train/10/1/0'),
    (lambda root: (root / 'train/JPEGImages/v_train/00010.jpg').unlink(), r'missing frame 10.*example v_train/10'),
    (lambda root: (root / 'train/Annotations/v_train/00015.png').write_bytes(b'\x89PNG broken'),
     r'00015.png is not a readable PNG'),
    (lambda root: shutil.rmtree(root / 'train/JPEGImages/v_train'), r'missing .*JPEGImages/v_train'),
    (lambda root: (root / 'meta_expressions/train/meta_expressions.json').write_text('{'),
     r'meta_expressions.json is not a meta_expressions file'),
])
def test_youtube_vos_bad_input(tmp_path, damage, match):
  fakes.write_youtube_vos(tmp_path)
  damage(tmp_path)
  with pytest.raises(readers.DataError, match=match):
    collect(readers.YouTubeVOSReader(tmp_path), 'train')


@pytest.mark.parametrize('damage, match', [
    (lambda root: (root / 'Release/clips320H/vid_train.mp4').write_bytes(b'garbage'),
     r'vid_train.mp4 has no decodable frames'),
    (lambda root: (root / 'text_annotations/a2d_annotation_with_instances/vid_train/00004.h5').write_bytes(b'x'),
     r'00004.h5 is not a readable A2D mask file.*expression 0 \(.*a2d_annotation.txt line 2\)'),
    (lambda root: (root / 'Release/videoset.csv').unlink(), r'missing .*videoset.csv'),
])
def test_a2d_bad_input(tmp_path, damage, match):
  fakes.write_a2d_release(tmp_path)
  damage(tmp_path)
  with pytest.raises(readers.DataError, match=match):
    collect(readers.A2DSentencesReader(tmp_path), 'train')


def test_jhmdb_corrupt_mat_and_list_layout_missing_instance(tmp_path):
  fakes.write_jhmdb(tmp_path / 'jhmdb')
  (tmp_path / 'jhmdb/puppet_mask/wave/vid_wave/puppet_mask.mat').write_bytes(b'garbage')
  with pytest.raises(readers.DataError, match='puppet_mask.mat is not a readable J-HMDB mask file'):
    collect(readers.JHMDBSentencesReader(tmp_path / 'jhmdb'), 'test')
  fakes.write_a2d_lists(tmp_path / 'lists')
  with open(tmp_path / 'lists/train.txt', 'a') as f:
    f.write(f'vid_train/00008,{fakes.HEIGHT},{fakes.WIDTH},7,a ghost,none\n')
  with pytest.raises(readers.DataError, match=r'instance 7 has no mask in masks/vid_train/00008.h5'):
    collect(readers.A2DListReader(tmp_path / 'lists'), 'train')


def test_bad_arguments(tmp_path):
  with pytest.raises(readers.DataError, match='does not exist'):
    readers.YouTubeVOSReader(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='delta'):
    readers.YouTubeVOSReader(tmp_path, delta=0)
  with pytest.raises(ValueError, match="'all' or 'sample3'"):
    readers.JHMDBSentencesReader(tmp_path, frames='some')
  fakes.write_youtube_vos(tmp_path)
  with pytest.raises(ValueError, match='not .test.'):
    collect(readers.YouTubeVOSReader(tmp_path), 'test')
