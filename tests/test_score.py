"""`python -m lbdt_jax.tools.score`: prediction folders scored as the official tools score them, on splits written in
the releases' formats, with values worked out by hand."""

import json

import cv2
import PIL.Image
import numpy as np
import pytest
from pycocotools import mask as coco_mask

import data_fakes as fakes
from lbdt_jax import metrics
from lbdt_jax.tools import score

HEIGHT, WIDTH = 20, 30
FRAMES = ('00000', '00001', '00002', '00003')


def box(top, left, bottom, right):
  mask = np.zeros((HEIGHT, WIDTH), bool)
  mask[top:bottom, left:right] = True
  return mask


def rle(mask):
  encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': encoded['size'], 'counts': encoded['counts'].decode()}


# Two objects of video "cats": object 0 (annotation 10) in every frame, object 1 (annotation 11) absent from frame 3.
CAT = box(2, 2, 10, 12)  # 80 pixels
DOG = box(12, 15, 17, 25)  # 50 pixels


def write_split(root):
  split = root / 'valid_u'
  (split / 'JPEGImages' / 'cats').mkdir(parents=True)
  (split / 'JPEGImages' / 'birds').mkdir(parents=True)
  for video in ('cats', 'birds'):
    for frame in FRAMES:
      cv2.imwrite(str(split / 'JPEGImages' / video / f'{frame}.jpg'), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  meta = {'videos': {
      'cats': {'frames': list(FRAMES), 'expressions': {
          '0': {'exp': 'the cat sitting still', 'obj_id': [0], 'anno_id': [10]},
          '1': {'exp': 'the two animals', 'obj_id': [0, 1], 'anno_id': [10, 11]},
          '2': {'exp': 'the dog running away', 'obj_id': [1], 'anno_id': [11]}}},
      'birds': {'frames': list(FRAMES), 'expressions': {
          '0': {'exp': 'the bird flying off', 'obj_id': [0], 'anno_id': [20]}}}}}
  masks = {'10': [rle(CAT)] * 4, '11': [rle(DOG)] * 3 + [None], '20': [rle(box(0, 0, 5, 5))] * 4}
  (split / 'meta_expressions.json').write_text(json.dumps(meta))
  (split / 'mask_dict.json').write_text(json.dumps(masks))
  return split


def write_prediction(directory, video, exp_id, frame, mask):
  folder = directory / video / exp_id
  folder.mkdir(parents=True, exist_ok=True)
  cv2.imwrite(str(folder / f'{frame}.png'), mask.astype(np.uint8) * 255)


@pytest.fixture
def split(tmp_path):
  return write_split(tmp_path)


def test_scores_follow_the_official_conventions(split, tmp_path):
  predictions = tmp_path / 'predictions'
  for frame in FRAMES:
    write_prediction(predictions, 'cats', '0', frame, CAT)  # exact: J = F = 1
    write_prediction(predictions, 'cats', '1', frame, CAT)  # the cat of "the two animals"
    write_prediction(predictions, 'cats', '2', frame, np.zeros((HEIGHT, WIDTH), bool))  # nothing
  # "birds" has no folder: its expression scores 0, as the official tool scores it.
  result = score.score('mevis', split, predictions)
  per_expression = result['per_expression']
  assert list(per_expression) == ['cats_0', 'cats_1', 'cats_2', 'birds_0']
  assert per_expression['cats_0'] == [1.0, 1.0]
  # The union of both objects on frames 0-2 (130 pixels, the cat's 80 predicted), the cat alone on frame 3.
  assert per_expression['cats_1'][0] == pytest.approx((3 * 80 / 130 + 1) / 4)
  two_animals_f = metrics.boundary_f(CAT, CAT | DOG)
  assert 0 < two_animals_f < 1 and per_expression['cats_1'][1] == pytest.approx((3 * two_animals_f + 1) / 4)
  # An empty prediction: J = F = 0 where the dog is, 1 on frame 3 where it is absent.
  assert per_expression['cats_2'] == [0.25, 0.25]
  assert per_expression['birds_0'] == [0.0, 0.0]
  j = np.mean([s[0] for s in per_expression.values()])
  f = np.mean([s[1] for s in per_expression.values()])
  assert (result['J'], result['F'], result['J&F']) == (pytest.approx(j), pytest.approx(f), pytest.approx((j + f) / 2))
  assert result['problems'] == {'missing_videos': [str(predictions / 'birds')]}


def test_damaged_folders_are_counted_and_scored_without_stopping(split, tmp_path, capsys):
  predictions = tmp_path / 'predictions'
  for video, expressions in (('cats', ('0', '1')), ('birds', ('0',))):
    for exp_id in expressions:
      for frame in FRAMES:
        write_prediction(predictions, video, exp_id, frame, np.ones((HEIGHT, WIDTH), bool))
  (predictions / 'cats' / '0' / '00001.png').unlink()
  (predictions / 'cats' / '0' / '00002.png').write_bytes(b'not a png')
  write_prediction(predictions, 'cats', '1', '00003', np.ones((HEIGHT // 2, WIDTH), bool))
  write_prediction(predictions, 'cats', '1', '00009', np.ones((HEIGHT, WIDTH), bool))
  (predictions / 'notes.txt').write_text('')
  out = tmp_path / 'scores.json'
  status = score.main(['--dataset', 'mevis', '--ground-truth', str(split), '--predictions', str(predictions),
                       '--json', str(out)])
  assert status == 1
  result = json.loads(out.read_text())
  problems = result['problems']
  assert problems['missing_frames'] == [str(predictions / 'cats' / '0' / '00001.png')]
  assert problems['unreadable_frames'] == [str(predictions / 'cats' / '0' / '00002.png')]
  assert problems['wrong_size_frames'] == [f'{predictions / "cats" / "1" / "00003.png"} (10x30, frame 20x30)']
  assert problems['missing_expressions'] == [str(predictions / 'cats' / '2')]
  assert problems['extra_files'] == sorted([str(predictions / 'cats' / '1' / '00009.png'),
                                            str(predictions / 'notes.txt')])
  # Missing, unreadable and wrong-size frames are empty predictions; the others cover the whole frame.
  whole = box(0, 0, HEIGHT, WIDTH)
  j_full = metrics.jaccard(whole, CAT)
  assert result['per_expression']['cats_0'][0] == pytest.approx((2 * j_full + 0 + 0) / 4)
  assert result['per_expression']['cats_2'] == [0.25, 0.25]
  captured = capsys.readouterr()
  assert 'J&F: ' in captured.out and '4 expressions scored' in captured.out
  assert '1 PNG files of another size than their frame' in captured.err


def test_ground_truth_errors_name_the_file(split, tmp_path, capsys):
  predictions = tmp_path / 'predictions'
  predictions.mkdir()
  (split / 'mask_dict.json').unlink()
  assert score.main(['--dataset', 'mevis', '--ground-truth', str(split), '--predictions', str(predictions)]) == 2
  assert f'MeViS masks (only train and valid_u have them) not found: {split / "mask_dict.json"}' in \
      capsys.readouterr().err
  (split / 'mask_dict.json').write_text('{"10": [')
  with pytest.raises(score.ScoreError, match=r'mask_dict.json is not a JSON object'):
    score.score('mevis', split, predictions)
  masks = {'10': [rle(CAT)] * 4, '11': [rle(DOG)] * 3, '20': [rle(CAT)] * 4}
  (split / 'mask_dict.json').write_text(json.dumps(masks))
  with pytest.raises(score.ScoreError, match=r"has 3 masks for annotation '11'; video 'cats' has 4 frames"):
    score.score('mevis', split, predictions)
  del masks['11']
  (split / 'mask_dict.json').write_text(json.dumps(masks))
  with pytest.raises(score.ScoreError, match=r"has no masks for annotation '11' \(video 'cats', expression '1'\)"):
    score.score('mevis', split, predictions)
  masks['11'] = [{'size': [HEIGHT, WIDTH], 'counts': 7}] * 4
  (split / 'mask_dict.json').write_text(json.dumps(masks))
  write_prediction(predictions, 'cats', '1', '00000', CAT)
  with pytest.raises(score.ScoreError, match=r"annotation '11', frame 0: not a COCO RLE"):
    score.score('mevis', split, predictions)
  (split / 'meta_expressions.json').write_text('{"videos": {"cats": {"frames": []}}}')
  with pytest.raises(score.ScoreError, match='video .cats. lacks "frames" or an expression'):
    score.score('mevis', split, predictions)
  with pytest.raises(score.ScoreError, match='prediction folder not found'):
    score.score('mevis', split, tmp_path / 'nowhere')


def test_youtube_vos_train_is_scored_on_its_annotated_frames(tmp_path):
  """The fake train video annotates frames 0, 5, ..., 25; object 2 is absent from frame 0, object 3 everywhere."""
  fakes.write_youtube_vos(tmp_path / 'release')
  annotations = tmp_path / 'release' / 'train' / 'Annotations' / 'v_train'
  predictions = tmp_path / 'predictions'
  for n in range(0, 30, 5):
    labels = np.array(PIL.Image.open(annotations / f'{n:05d}.png'))
    write_prediction(predictions, 'v_train', '0', f'{n:05d}', labels == 1)  # exact
    write_prediction(predictions, 'v_train', '1', f'{n:05d}', np.zeros_like(labels, bool))
    write_prediction(predictions, 'v_train', '2', f'{n:05d}', np.zeros_like(labels, bool))
  result = score.score('ref_youtube_vos', tmp_path / 'release' / 'train', predictions)  # meta_expressions/train/
  assert result['per_expression'] == {'v_train_0': [1.0, 1.0], 'v_train_1': [pytest.approx(1 / 6)] * 2,
                                      'v_train_2': [1.0, 1.0], 'v_train_3': [0.0, 0.0]}
  assert result['problems'] == {'missing_expressions': [str(predictions / 'v_train' / '3')]}
  with pytest.raises(score.ScoreError, match=r'ground truth .*valid/Annotations/v_valid not found'):
    score.score('ref_youtube_vos', tmp_path / 'release' / 'valid', predictions)
