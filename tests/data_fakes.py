"""Tiny fake releases of the benchmarks, in their official file formats.

Frame n of every fake video is a flat grey of value `frame_value(n)`, so a test can tell from the decoded pixels
which frame an example holds. Masks are rectangles whose position depends on (object, frame).
"""

import json
import os

import cv2
import h5py
import numpy as np
import PIL.Image
import scipy.io

HEIGHT, WIDTH = 32, 48


def frame_value(number: int) -> int:
  return 20 + 10 * number


def frame_image(number: int, height=HEIGHT, width=WIDTH) -> np.ndarray:
  return np.full((height, width, 3), frame_value(number), np.uint8)


def object_mask(object_id: int, frame: int, height=HEIGHT, width=WIDTH) -> np.ndarray:
  mask = np.zeros((height, width), np.uint8)
  top, left = 2 + object_id * 3, (2 * frame + object_id * 9) % (width - 8)
  mask[top:top + 6, left:left + 8] = 1
  return mask


def _write_lines(path, lines, encoding='utf-8'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding=encoding, newline='') as f:
    f.write(''.join(line + '\n' for line in lines))


def _write_image(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  assert cv2.imwrite(path, image)


def write_palette_png(path, labels: np.ndarray):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = PIL.Image.fromarray(labels.astype(np.uint8), mode='P')
  image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [128] * (252 * 3))
  image.save(path)


def write_a2d_h5(path, instances: dict[int, np.ndarray]):
  """MATLAB v7.3 style: an HDF5 file with a 512-byte user block, arrays stored transposed."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ids = sorted(instances)
  masks = np.stack([instances[i].T for i in ids]).astype(np.float64)
  with h5py.File(path, 'w', userblock_size=512) as f:
    f['instance'] = np.array(ids, np.float64)[:, None]
    f['reMask'] = masks[0] if len(ids) == 1 else masks
  with open(path, 'r+b') as f:
    f.write(b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 .')


def write_a2d_release(root, num_frames=12):
  """Videos: vid_train (train, 2 instances), vid_test (test), vid_missed (listed as missed)."""
  _write_lines(os.path.join(root, 'Release', 'videoset.csv'), [
      'vid_train,11,0,1,320,480,12,2,0', 'vid_test,22,0,1,320,480,12,1,1', 'vid_missed,33,0,1,320,480,12,1,0'])
  for video in ('vid_train', 'vid_test'):
    path = os.path.join(root, 'Release', 'clips320H', f'{video}.mp4')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 24, (WIDTH, HEIGHT))
    for n in range(1, num_frames + 1):
      writer.write(frame_image(n))
    writer.release()
  annotations = os.path.join(root, 'text_annotations')
  _write_lines(os.path.join(annotations, 'a2d_annotation.txt'), [
      'video_id,instance_id,query',
      'vid_train,1,the man on the left',           # expression 0: instance 1 in frames 4 and 9
      'vid_train,2,"a dog, running"',              # expression 1: instance 2 in frame 4 only
      'vid_train,1 (copy),the man on the left',    # the release's bad row
      'vid_train,5,a ghost',                       # instance 5 has no mask
      'vid_test,1,a bird flying',                  # expression 4
      'vid_missed,1,nobody',
      'vid_train,2,   ',                           # empty sentence
  ])
  _write_lines(os.path.join(annotations, 'a2d_missed_videos.txt'), ['vid_missed'])
  masks = os.path.join(annotations, 'a2d_annotation_with_instances')
  write_a2d_h5(os.path.join(masks, 'vid_train', '00004.h5'), {1: object_mask(1, 4), 2: object_mask(2, 4)})
  write_a2d_h5(os.path.join(masks, 'vid_train', '00009.h5'), {1: object_mask(1, 9)})
  write_a2d_h5(os.path.join(masks, 'vid_test', '00007.h5'), {1: object_mask(1, 7)})


def write_a2d_lists(root, num_frames=12):
  """The official LBDT code's layout: images/, masks/, train.txt, val.txt."""
  for n in range(1, num_frames + 1):
    _write_image(os.path.join(root, 'images', 'vid_train', f'{n:05d}.jpg'), frame_image(n))
  write_a2d_h5(os.path.join(root, 'masks', 'vid_train', '00008.h5'), {1: object_mask(1, 8), 3: object_mask(3, 8)})
  _write_lines(os.path.join(root, 'train.txt'), [
      f'vid_train/00008,{HEIGHT},{WIDTH},3,the cat, near the door,cat_walking',
      f'vid_train/00008,{HEIGHT},{WIDTH},1,a man,adult_walking'])
  _write_lines(os.path.join(root, 'val.txt'), [f'vid_train/00008,{HEIGHT},{WIDTH},1,a man,adult_walking'])


def write_jhmdb(root, num_frames=8, num_masks=7):
  """One video (`wave/vid_wave`) with more frames than masks, as some J-HMDB videos have."""
  for n in range(1, num_frames + 1):
    _write_image(os.path.join(root, 'Rename_Images', 'wave', 'vid_wave', f'{n:05d}.png'), frame_image(n))
  part_mask = np.stack([object_mask(1, n) for n in range(1, num_masks + 1)], axis=-1)
  path = os.path.join(root, 'puppet_mask', 'wave', 'vid_wave', 'puppet_mask.mat')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.savemat(path, {'part_mask': part_mask})  # a v5 .mat, as released
  _write_lines(os.path.join(root, 'jhmdb_annotation.txt'), ['video_id,query', 'vid_wave,man waving his hand'])


def write_youtube_vos(root, frames=(0, 5, 10, 15, 20, 25)):
  """train/v_train (objects 1 and 2; 2 is absent from frame 0); valid/v_valid; test/v_test (excluded)."""
  for split, video in (('train', 'v_train'), ('valid', 'v_valid'), ('valid', 'v_test')):
    for n in frames:
      _write_image(os.path.join(root, split, 'JPEGImages', video, f'{n:05d}.jpg'), frame_image(n // 5))
  for n in frames:
    labels = object_mask(1, n)
    if n > 0:
      labels = np.where(object_mask(2, n) > 0, 2, labels)
    write_palette_png(os.path.join(root, 'train', 'Annotations', 'v_train', f'{n:05d}.png'), labels)
  names = [f'{n:05d}' for n in frames]
  meta = {
      'train': {'v_train': {'frames': names, 'expressions': {
          '0': {'exp': 'a person on the left', 'obj_id': '1'},
          '1': {'exp': 'a skateboard', 'obj_id': '2'},
          '2': {'exp': 'a missing object', 'obj_id': '3'},
          '3': {'exp': '', 'obj_id': '1'}}}},
      # The competition's valid/test files name no object.
      'valid': {v: {'frames': names, 'expressions': {'0': {'exp': 'a cat'}}} for v in ('v_valid', 'v_test')},
      'test': {'v_test': {'frames': names, 'expressions': {'0': {'exp': 'a cat'}}}},
  }
  for split, videos in meta.items():
    path = os.path.join(root, 'meta_expressions', split, 'meta_expressions.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'videos': videos}, f)


def write_davis(root, num_frames=6):
  """classic-car (train, objects 1-2, object 2 gone after frame 3) and dogs-scale (val); the text files use the
  release's misspelled names, and annotator 2's files are latin-1."""
  for split, video in (('train', 'classic-car'), ('val', 'dogs-scale')):
    _write_lines(os.path.join(root, 'DAVIS', 'ImageSets', '2017', f'{split}.txt'), [video])
    for n in range(num_frames):
      _write_image(os.path.join(root, 'DAVIS', 'JPEGImages', '480p', video, f'{n:05d}.jpg'), frame_image(n))
      labels = object_mask(1, n)
      if n <= 3:
        labels = np.where(object_mask(2, n) > 0, 2, labels)
      write_palette_png(os.path.join(root, 'DAVIS', 'Annotations_unsupervised', '480p', video, f'{n:05d}.png'),
                        labels)
  texts = os.path.join(root, 'davis_text_annotations')
  _write_lines(os.path.join(texts, 'Davis17_annot1.txt'), ['clasic-car 1 "a red  car"', 'dog-scale 2 "a small dog"',
                                                           'unknown-video 1 "a ghost"'])
  _write_lines(os.path.join(texts, 'Davis17_annot1_full_video.txt'), ['clasic-car 2 "a man in a café"'])
  _write_lines(os.path.join(texts, 'Davis17_annot2.txt'), ['clasic-car 1 "the café car"'], encoding='latin-1')
  _write_lines(os.path.join(texts, 'Davis17_annot2_full_video.txt'), ['dog-scale 1 "a big dog"'],
               encoding='latin-1')


def coco_rle(mask: np.ndarray) -> dict:
  """A mask as mask_dict.json stores it: COCO RLE with the counts as a string."""
  from pycocotools import mask as coco_mask  # pylint: disable=import-outside-toplevel
  encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': [int(x) for x in encoded['size']], 'counts': encoded['counts'].decode()}


MEVIS_FRAMES = 6


def write_mevis(root, num_frames=MEVIS_FRAMES):
  """train/m_train: annotations 101 (object 1, every frame) and 102 (object 2, absent from frames 4-5); expressions
  naming one, the other, both, both again (sharing the target), and an empty sentence. train/m_single: one frame
  (skipped in training). valid_u/m_valid_u: 201 (object 1). valid/m_valid: no masks."""
  videos = {'train': {'m_train': num_frames, 'm_single': 1}, 'valid_u': {'m_valid_u': num_frames},
            'valid': {'m_valid': num_frames}}
  for split, split_videos in videos.items():
    for video, count in split_videos.items():
      for n in range(count):
        _write_image(os.path.join(root, split, 'JPEGImages', video, f'{n:05d}.jpg'), frame_image(n))
  names = lambda count: [f'{n:05d}' for n in range(count)]
  meta = {
      'train': {
          'm_train': {'frames': names(num_frames), 'expressions': {
              '0': {'exp': 'the cat walking left', 'obj_id': [1], 'anno_id': [101]},
              '1': {'exp': 'the dog running away', 'obj_id': [2], 'anno_id': [102]},
              '2': {'exp': 'the two animals moving', 'obj_id': [1, 2], 'anno_id': [102, 101]},
              '3': {'exp': 'both moving apart', 'obj_id': [1, 2], 'anno_id': [101, 102]},
              '4': {'exp': '', 'obj_id': [1], 'anno_id': [101]}}},
          'm_single': {'frames': names(1), 'expressions': {
              '0': {'exp': 'the still bird', 'obj_id': [1], 'anno_id': [103]}}}},
      'valid_u': {'m_valid_u': {'frames': names(num_frames), 'expressions': {
          '0': {'exp': 'the cat turning around', 'obj_id': [1], 'anno_id': [201]}}}},
      'valid': {'m_valid': {'frames': names(num_frames), 'expressions': {'0': {'exp': 'the fastest car'}}}},
  }
  masks = {
      'train': {'101': [coco_rle(object_mask(1, n)) for n in range(num_frames)],
                '102': [coco_rle(object_mask(2, n)) if n < 4 else None for n in range(num_frames)],
                '103': [coco_rle(object_mask(1, 0))]},
      'valid_u': {'201': [coco_rle(object_mask(1, n)) for n in range(num_frames)]},
  }
  for split, split_meta in meta.items():
    with open(os.path.join(root, split, 'meta_expressions.json'), 'w') as f:
      json.dump({'videos': split_meta}, f)
    if split in masks:
      with open(os.path.join(root, split, 'mask_dict.json'), 'w') as f:
        json.dump(masks[split], f)


def write_glove(path, words: dict[str, np.ndarray], extra_lines=()):
  """A GloVe-format text file (word and space-separated components per line)."""
  with open(path, 'w', encoding='utf-8') as f:
    for word, vector in words.items():
      f.write(word + ' ' + ' '.join(f'{v:.6f}' for v in vector) + '\n')
    for line in extra_lines:
      f.write(line + '\n')
