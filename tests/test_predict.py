"""`predict` on a small mp4 and a folder of frames, attention maps, damaged videos, bad input (named, and nothing
written), the pictures it draws, and the model directory round trip."""

import dataclasses
import json
import logging
import pathlib
import subprocess
import sys

import cv2
import imageio.v3 as iio
import jax
import numpy as np
import pytest

from configs import tiny
from data_pipeline import glove
from lbdt_jax import model_dir, predict, train, visualize

FRAMES, HEIGHT, WIDTH = 9, 45, 61  # odd sizes on purpose




@pytest.fixture(scope='module')
def model_directory(tmp_path_factory, tiny_variables):
  directory = tmp_path_factory.mktemp('model')
  config = tiny.get_config()
  model_config = train.model_config(config)
  variables = tiny_variables
  table = glove.learned(glove.vocabulary(['the red square moving left', 'a ball']), dim=model_config.word_dim)
  model_dir.write(directory, model_config, variables, table=table, config=config,
                  manifest=model_dir.manifest_for(config, model_config, table, 0))
  return str(directory)


def video_frames():
  frames = []
  for n in range(FRAMES):
    frame = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    cv2.rectangle(frame, (5 + 4 * n, 10), (20 + 4 * n, 25), (220, 30, 30), -1)
    frames.append(frame)
  return frames


@pytest.fixture(scope='module')
def mp4(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('video') / 'clip.mp4')
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, (WIDTH, HEIGHT))
  for frame in video_frames():
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def test_predict_writes_masks_overlays_json_and_attention(model_directory, mp4, tmp_path):
  sentences = ['the red square moving left', 'a ball']
  summary = predict.predict(model_directory, mp4, sentences, str(tmp_path / 'out'), batch_size=4, attention=True,
                            attention_stage=5, attention_frames=(0, 7))
  assert summary['frames'] == FRAMES
  saved = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
  capture = cv2.VideoCapture(mp4)
  size = capture.read()[1].shape[:2]  # the mp4 encoder may round odd sizes to even ones
  capture.release()
  for k, entry in enumerate(saved['sentences']):
    assert entry['sentence'] == sentences[k] and len(entry['frames']) == FRAMES
    for record in entry['frames']:
      mask = cv2.imread(f'{entry["masks"]}/{record["frame"]:05d}.png', cv2.IMREAD_UNCHANGED)
      assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
      assert record['area'] == int((mask > 0).sum())
      assert 0.0 <= record['mean_foreground_probability'] <= 1.0
      assert (record['area'] == 0) == (record['mean_foreground_probability'] == 0.0)
  assert saved['unreadable_frames'] == []
  capture = cv2.VideoCapture(saved['overlay_video'])
  codec = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, 'little').decode().lower()
  assert codec in ('h264', 'avc1')  # what browsers play; OpenCV's own writer gives MPEG-4 Part 2 ('mp4v')
  assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
  assert sum(capture.read()[0] for _ in range(FRAMES + 1)) == FRAMES
  capture.release()
  assert iio.imread(saved['overlay_gif']).shape[0] == FRAMES
  assert len(saved['attention_maps']) == 2 * len(sentences)  # frames 0 and 7, each sentence
  grid = cv2.imread(saved['attention_maps'][0])
  assert grid.shape[0] > grid.shape[1]  # one row per word: "the red square moving left" has 5


def test_a_folder_of_frames_works_too(model_directory, tmp_path):
  (tmp_path / 'frames').mkdir()
  for n, frame in enumerate(video_frames()):  # frame_10 sorts after frame_9: natural order
    cv2.imwrite(str(tmp_path / 'frames' / f'frame_{n}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  summary = predict.predict(model_directory, str(tmp_path / 'frames'), ['a ball'], str(tmp_path / 'out'), batch_size=8)
  assert [r['frame'] for r in summary['sentences'][0]['frames']] == list(range(FRAMES))
  mask = cv2.imread(f'{summary["sentences"][0]["masks"]}/00000.png', cv2.IMREAD_UNCHANGED)
  assert mask.shape == (HEIGHT, WIDTH)  # odd sizes come back as they were


def test_bad_input_is_named(model_directory, mp4, tmp_path, caplog):
  with pytest.raises(FileNotFoundError, match='missing.mp4 does not exist'):
    predict.predict(model_directory, str(tmp_path / 'missing.mp4'), ['a ball'], str(tmp_path / 'out'))
  (tmp_path / 'broken.mp4').write_bytes(b'not a video at all')
  with pytest.raises(ValueError, match='broken.mp4'):
    predict.predict(model_directory, str(tmp_path / 'broken.mp4'), ['a ball'], str(tmp_path / 'out'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='holds no image files'):
    predict.predict(model_directory, str(tmp_path / 'empty'), ['a ball'], str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='nowhere does not exist'):
    predict.predict(str(tmp_path / 'nowhere'), mp4, ['a ball'], str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='A sentence is empty'):
    predict.predict(model_directory, mp4, ['   '], str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='batch_size must be positive, got 0'):
    predict.predict(model_directory, mp4, ['a ball'], str(tmp_path / 'out'), batch_size=0)
  with caplog.at_level(logging.WARNING):
    predict.predict(model_directory, mp4, ['zebra giraffe'], str(tmp_path / 'out'))
  assert 'None of the words' in caplog.text and 'zebra, giraffe' in caplog.text


def test_nothing_is_written_when_an_input_is_wrong(model_directory, mp4, damaged_mp4, tmp_path):
  output = tmp_path / 'out'
  (tmp_path / 'texts').mkdir()
  (tmp_path / 'texts' / 'notes.txt').write_text('not a frame')
  (tmp_path / 'fake').mkdir()
  (tmp_path / 'fake' / 'frame_0.png').write_text('a text file named like a frame')
  cases = [((model_directory, str(tmp_path / 'texts'), ['the car']), ValueError, 'holds no image files'),
           ((model_directory, str(tmp_path / 'fake'), ['the car']), ValueError, 'frame_0.png could not be read'),
           ((model_directory, damaged_mp4[0], ['the car']), ValueError, 'damaged.mp4'),
           ((model_directory, mp4, ['.']), ValueError, 'no words the model can use'),
           ((str(tmp_path / 'nowhere'), mp4, ['the car']), FileNotFoundError, 'nowhere does not exist')]
  for arguments, error, message in cases:
    with pytest.raises(error, match=message):
      predict.predict(*arguments, str(output))
    assert not output.exists(), message
  with pytest.raises(ValueError, match='no LBDT module in stage 3'):
    predict.predict(model_directory, mp4, ['a ball'], str(output), attention=True, attention_stage=3)
  assert not output.exists()


def test_sentences_the_model_cannot_read_whole_are_named(model_directory, caplog):
  loaded = predict.load_model(model_directory)
  with caplog.at_level(logging.WARNING):
    _, mask, tokens = predict.encode_sentences(['the red square moving left on the road'], loaded)
  assert tokens[0] == ['the', 'red', 'square', 'moving', 'left', 'on'] and mask.sum() == 6  # max_words is 6
  assert "2 words of 'the red square moving left on the road' are dropped (the road)" in caplog.text
  for punctuation in ['.', '!!', '...?']:
    with pytest.raises(ValueError, match='has no words the model can use'):
      predict.encode_sentences([punctuation], loaded)


def test_unknown_words_get_advice_that_fits_the_model(model_directory, caplog):
  learned = predict.load_model(model_directory)
  with caplog.at_level(logging.WARNING):
    predict.encode_sentences(['the zebra'], learned)
  # the fixture's table: the pad and unknown tokens, the 7 words of its sentences and "right" (mirrored "left")
  assert 'learned vectors for the 8 words it was trained with' in caplog.text and 'word_table.npz' in caplog.text
  assert '--glove_path' not in caplog.text
  caplog.clear()
  glove_model = dataclasses.replace(learned, table=dataclasses.replace(learned.table, trainable=False))
  with caplog.at_level(logging.WARNING):
    predict.encode_sentences(['zebra'], glove_model)
  assert 'None of the words' in caplog.text and '--glove_path' in caplog.text


@pytest.fixture(scope='module')
def damaged_mp4(tmp_path_factory):
  """(path, frame count the container gives, frames OpenCV reads before it stops at the damage)."""
  path = tmp_path_factory.mktemp('damaged') / 'damaged.mp4'
  rng = np.random.default_rng(0)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
  for _ in range(40):  # noise: every frame is large, so damage in the middle of the file hits frames' data
    writer.write(rng.integers(0, 256, (64, 96, 3), np.uint8))
  writer.release()
  data = bytearray(path.read_bytes())
  data[int(len(data) * 0.4):int(len(data) * 0.6)] = bytes(int(len(data) * 0.6) - int(len(data) * 0.4))
  path.write_bytes(bytes(data))
  capture = cv2.VideoCapture(str(path))
  count, before_damage = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
  while capture.read()[0]:
    before_damage += 1
  capture.release()
  assert count == 40 and 0 < before_damage < 20  # OpenCV stops reading at the damage
  return str(path), count, before_damage


def test_damaged_video_is_an_error_unless_unreadable_frames_are_allowed(model_directory, damaged_mp4, tmp_path,
                                                                        caplog):
  path, count, before_damage = damaged_mp4
  with pytest.raises(ValueError, match=rf'Only \d+ of the {count} frames of {path} could be read \(frames '
                     rf'{before_damage}-\d+ are damaged.*--allow_unreadable_frames'):
    predict.predict(model_directory, path, ['a ball'], str(tmp_path / 'out'))
  with caplog.at_level(logging.WARNING):
    summary = predict.predict(model_directory, path, ['a ball'], str(tmp_path / 'out'), allow_unreadable_frames=True)
  unreadable = summary['unreadable_frames']
  assert unreadable[0] == before_damage and len(unreadable) < count - before_damage  # frames after it are read
  assert f'{len(unreadable)} of the {count} frames of {path} could not be read' in caplog.text
  indices = [record['frame'] for record in summary['sentences'][0]['frames']]
  assert indices == sorted(set(range(count)) - set(unreadable)) and summary['frames'] == len(indices)
  masks = sorted(pathlib.Path(summary['sentences'][0]['masks']).iterdir())
  assert [int(mask.stem) for mask in masks] == indices


def test_normalised_frames_match_the_training_pipeline():
  from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for (height, width), size in [((45, 61), (64, 64)), ((720, 1280), (320, 320)), ((101, 77), (64, 96)),
                                ((319, 321), (320, 320))]:
    frames = rng.integers(0, 256, (2, height, width, 3), np.uint8)
    # Measured: at most 1.4e-4 (normalised units, 0.008 of a grey level) from TensorFlow's antialiased bilinear.
    np.testing.assert_allclose(predict.normalised_frames(frames, *size), input_pipeline.normalised_frames(
        frames, *size), atol=5e-4, err_msg=f'{height}x{width} -> {size}')


def test_importing_predict_does_not_import_tensorflow():
  loaded = subprocess.run([sys.executable, '-c', 'import sys, lbdt_jax.predict; '
                           'print(sorted(m for m in sys.modules if m.startswith("tensorflow")))'],
                          capture_output=True, text=True, check=True, cwd=pathlib.Path(__file__).parents[1])
  assert loaded.stdout.strip() == '[]'


def test_outlines_show_on_an_object_of_the_mask_colour():
  red = visualize.COLOURS[0]
  image = np.full((40, 50, 3), red, np.uint8)
  mask = np.zeros((40, 50), bool)
  mask[10:30, 15:35] = True
  shown = visualize.overlay(image, mask, red)
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  outline = contours[0][:, 0]  # (x, y) of the mask's border pixels
  difference = np.abs(shown[outline[:, 1], outline[:, 0]].astype(int) - red).max(axis=1)
  assert (difference > 100).all()


@pytest.mark.parametrize('height, width', [(720, 1280), (45, 61)])
def test_attention_pictures_are_sized_for_reading(height, width):
  tokens = ['the', 'red', 'square', 'moving', 'left']
  maps = {name: np.random.default_rng(0).random((len(tokens), 4 * 4)) for name in ('frame', 'difference')}
  picture = visualize.attention_picture(np.zeros((height, width, 3), np.uint8),
                                        np.zeros((height, width, 3), np.float32), maps, tokens, (4, 4))
  assert 600 <= picture.shape[1] <= 700  # two cells of ATTENTION_CELL_WIDTH, whatever the video's size
  assert picture.shape[0] < len(tokens) * 400


def test_model_directory_round_trip_gives_identical_variables(model_directory, tiny_variables):
  loaded = predict.load_model(model_directory)
  assert loaded.manifest['variant'] == 'LBDT-1' and loaded.input_size == (64, 64) and loaded.manifest['delta'] == 6
  assert loaded.model_config == train.model_config(tiny.get_config())  # the same model, the same variables
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, tiny_variables)
