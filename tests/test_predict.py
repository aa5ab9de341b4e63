"""`predict` on a small mp4 and a folder of frames, attention maps, bad input, and the model directory round trip."""

import json
import logging

import cv2
import imageio.v3 as iio
import jax
import numpy as np
import pytest

from configs import tiny
from data_pipeline import glove
from lbdt_jax import model_dir, predict, train
from lbdt_jax.models import LBDT

FRAMES, HEIGHT, WIDTH = 9, 45, 61  # odd sizes on purpose


@pytest.fixture(scope='module')
def model_directory(tmp_path_factory):
  directory = tmp_path_factory.mktemp('model')
  config = tiny.get_config()
  model_config = train.model_config(config)
  inputs = [np.zeros(shape, dtype) for shape, dtype in train._input_shapes(config).values()]
  words = np.zeros((*inputs[2].shape, model_config.word_dim), np.float32)
  variables = jax.jit(LBDT(model_config).init)(jax.random.key(0), inputs[0], inputs[1], words, inputs[3])
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
  capture = cv2.VideoCapture(saved['overlay_video'])
  assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
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
  with caplog.at_level(logging.WARNING):
    predict.predict(model_directory, mp4, ['zebra giraffe'], str(tmp_path / 'out'), batch_size=16)
  assert 'None of the words' in caplog.text and 'zebra, giraffe' in caplog.text


def test_model_directory_round_trip_gives_identical_logits(model_directory):
  loaded = predict.load_model(model_directory)
  assert loaded.manifest['variant'] == 'LBDT-1' and loaded.input_size == (64, 64) and loaded.manifest['delta'] == 6
  config = tiny.get_config()
  model_config = train.model_config(config)
  inputs = [np.zeros(shape, dtype) for shape, dtype in train._input_shapes(config).values()]
  words = np.zeros((*inputs[2].shape, model_config.word_dim), np.float32)
  model = LBDT(model_config)
  original = jax.jit(model.init)(jax.random.key(0), inputs[0], inputs[1], words, inputs[3])
  rng = np.random.default_rng(0)
  frame = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  ids = rng.integers(0, len(loaded.table.words), (2, 6)).astype(np.int32)
  batch = (frame, np.abs(frame), loaded.table.vectors[ids], np.ones((2, 6), np.int32))
  expected = model.apply({'params': original['params'], 'batch_stats': original['batch_stats']}, *batch)
  actual = LBDT(loaded.model_config).apply(loaded.variables, *batch)
  np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
