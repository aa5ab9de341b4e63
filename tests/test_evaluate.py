"""Evaluation from a model directory on the fake DAVIS and YouTube-VOS releases; configs and the command line."""

import subprocess
import sys
import zipfile

import cv2
import jax
import numpy as np
import pytest

import data_fakes as fakes
from conftest import ROOT
from configs import default, tiny
from data_pipeline import glove
from lbdt_jax import evaluate, model_dir, train
from lbdt_jax.models import LBDT


@pytest.fixture(scope='module')
def model_directory(tmp_path_factory):
  """A freshly initialised tiny model written as a model directory (what an export or a conversion gives)."""
  directory = tmp_path_factory.mktemp('model')
  config = tiny.get_config()
  model_config = train.model_config(config)
  shapes = train._input_shapes(config)
  inputs = [np.zeros(shape, dtype) for shape, dtype in shapes.values()]
  words = np.zeros((*inputs[2].shape, model_config.word_dim), np.float32)
  variables = jax.jit(LBDT(model_config).init)(jax.random.key(0), inputs[0], inputs[1], words, inputs[3])
  model_dir.write(directory, model_config, variables, table=glove.learned(['a', 'dog', 'car'],
                                                                          dim=model_config.word_dim))
  return str(directory)


def evaluation_config(tmp_path, model_directory, dataset, split, write_release):
  write_release(tmp_path / 'release')
  config = tiny.get_config()
  config.data.train = ''
  config.data.evaluate = (f'{dataset}:{split}',)
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dirs[dataset] = str(tmp_path / 'release')
  config.init.checkpoint = model_directory
  return config


def test_davis_j_and_f_per_expression_set(tmp_path, model_directory):
  config = evaluation_config(tmp_path, model_directory, 'ref_davis17', 'validation', fakes.write_davis)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_davis17:validation']
  assert result['num_samples'] == 12
  assert set(result['per_set']) == {'annotator1_first_frame', 'annotator2_full_video'}
  for key in ('J', 'F', 'J&F'):
    assert 0.0 <= result[key] <= 1.0
  assert result['J&F'] == pytest.approx((result['J'] + result['F']) / 2)


def test_youtube_vos_validation_becomes_a_submission_zip(tmp_path, model_directory):
  config = evaluation_config(tmp_path, model_directory, 'ref_youtube_vos', 'validation', fakes.write_youtube_vos)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_youtube_vos:validation']
  with zipfile.ZipFile(result['submission']) as archive:
    names = sorted(archive.namelist())
    assert names == [f'Annotations/v_valid/0/{n:05d}.png' for n in (0, 5, 10, 15, 20, 25)]
    mask = cv2.imdecode(np.frombuffer(archive.read(names[0]), np.uint8), cv2.IMREAD_UNCHANGED)
  assert mask.shape == (fakes.HEIGHT, fakes.WIDTH) and set(np.unique(mask)) <= {0, 255}


def test_reference_protocol_needs_the_reference_ground_truth(tmp_path, model_directory):
  config = evaluation_config(tmp_path, model_directory, 'ref_youtube_vos', 'train', fakes.write_youtube_vos)
  config.eval.protocol = 'reference'
  with pytest.raises(ValueError, match="mask_resize='bilinear_threshold'"):
    evaluate.evaluate(config, str(tmp_path / 'work'))
  config.data.mask_resize = 'bilinear_threshold'
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_youtube_vos:train']
  assert result['num_samples'] == 11 and 0.0 <= result['mean_IoU'] <= 1.0


def test_nothing_to_evaluate_is_a_clear_error(tmp_path):
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='Nothing to evaluate'):
    evaluate.evaluate(config, str(tmp_path / 'empty'))


@pytest.mark.parametrize('options, expected', [
    ('lbdt1', {'num_lbdt_layers': 1}),
    ('lbdt4,direct', {'num_lbdt_layers': 4, 'bridge': 'direct'}),
    ('t2s_only,no_denoiser', {'transfer_spatial_to_temporal': False, 'language_denoiser': False}),
    ('stages=345,single_stream', {'lbdt_stages': (3, 4, 5), 'temporal_encoder': False}),
])
def test_config_options(options, expected):
  config = default.get_config(options)
  for key, value in expected.items():
    assert config.model[key] == value
  train.model_config(config)  # a valid model config


def test_config_options_for_data_and_evaluation():
  config = default.get_config('delta=3,adam,reference_eval')
  assert (config.data.delta, config.optimizer.name, config.eval.protocol) == (3, 'adam', 'reference')
  with pytest.raises(ValueError, match="Unknown config option 'lbdt9'"):
    default.get_config('lbdt9')


def test_command_line_reports_bad_values(tmp_path):
  result = subprocess.run([sys.executable, 'main.py', '--config=configs/tiny.py', '--config.model.bridge=words',
                           f'--workdir={tmp_path}', f'--config.data.data_dir={tmp_path}/tfds'], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "bridge='words'" in result.stderr
