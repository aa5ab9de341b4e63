"""Evaluation from a model directory on the fake DAVIS and YouTube-VOS releases; configs and the command line."""

import zipfile

import cv2
import numpy as np
import pytest

import data_fakes as fakes
from conftest import ROOT, run_main
from configs import default, tiny
from data_pipeline import glove
from lbdt_jax import evaluate, model_dir, train




@pytest.fixture(scope='module')
def model_directories(tmp_path_factory, tiny_variables):
  """Tiny model directories (what an export or a conversion gives) whose masks are known: the logits' bias moved
  far below or above the rest, every pixel is background, or every pixel is foreground."""
  config = tiny.get_config()
  model_config = train.model_config(config)
  table = glove.learned(['a', 'dog', 'car'], dim=model_config.word_dim)
  directories = {}
  for name, bias in (('background', -1e4), ('foreground', 1e4)):
    directory = tmp_path_factory.mktemp(name)
    logits = {**tiny_variables['params']['decoder']['logits'], 'bias': np.full((1,), bias, np.float32)}
    params = {**tiny_variables['params'], 'decoder': {**tiny_variables['params']['decoder'], 'logits': logits}}
    model_dir.write(directory, model_config, {**tiny_variables, 'params': params}, table=table)
    directories[name] = str(directory)
  return directories


def evaluation_config(tmp_path, model_directory, dataset, split, write_release):
  write_release(tmp_path / 'release')
  config = tiny.get_config()
  config.data.train = ''
  config.data.evaluate = (f'{dataset}:{split}',)
  config.data.data_dir = str(tmp_path / 'data')
  config.data.manual_dirs[dataset] = str(tmp_path / 'release')
  config.init.checkpoint = model_directory
  return config


def test_davis_j_and_f_per_expression_set(tmp_path, model_directories):
  """Empty masks everywhere. The validation video (tests/data_fakes.py) has two expressions over its 6 frames:
  annotator 1's (first-frame set) refers to object 2, present in frames 0-3 only; annotator 2's (full-video set) to
  object 1, present in all. J and F of a frame are 1 where both masks are empty, 0 where only the prediction is."""
  config = evaluation_config(tmp_path, model_directories['background'], 'ref_davis17', 'validation',
                             fakes.write_davis)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_davis17:validation']
  assert result['num_samples'] == 12
  per_set = result['per_set']
  assert set(per_set) == {'annotator1_first_frame', 'annotator2_full_video'}
  for key in ('J', 'F', 'J&F'):
    assert per_set['annotator1_first_frame'][key] == pytest.approx(2 / 6)  # frames 4 and 5 of 6
    assert per_set['annotator2_full_video'][key] == 0.0
    assert result[key] == pytest.approx((2 / 6 + 0) / 2)  # the mean over the sets


def test_youtube_vos_validation_becomes_a_submission_zip(tmp_path, model_directories):
  config = evaluation_config(tmp_path, model_directories['foreground'], 'ref_youtube_vos', 'validation',
                             fakes.write_youtube_vos)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_youtube_vos:validation']
  with zipfile.ZipFile(result['submission']) as archive:
    names = sorted(archive.namelist())
    assert names == [f'Annotations/v_valid/0/{n:05d}.png' for n in (0, 5, 10, 15, 20, 25)]
    masks = [cv2.imdecode(np.frombuffer(archive.read(name), np.uint8), cv2.IMREAD_UNCHANGED) for name in names]
  for mask in masks:  # every pixel foreground, at the frame's own size
    assert mask.shape == (fakes.HEIGHT, fakes.WIDTH) and mask.dtype == np.uint8 and (mask == 255).all()


def test_reference_protocol_needs_the_reference_ground_truth(tmp_path, model_directories):
  config = evaluation_config(tmp_path, model_directories['background'], 'ref_youtube_vos', 'train',
                             fakes.write_youtube_vos)
  config.eval.protocol = 'reference'
  with pytest.raises(ValueError, match="mask_resize='bilinear_threshold'"):
    evaluate.evaluate(config, str(tmp_path / 'work'))
  config.data.mask_resize = 'bilinear_threshold'
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['ref_youtube_vos:train']
  # Every sample's object is present and every prediction empty.
  assert result['num_samples'] == 11 and result['mean_IoU'] < 1e-6 and result['P@0.5'] == 0.0


def test_nothing_to_evaluate_is_a_clear_error(tmp_path):
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path / 'data')
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


def test_command_line_reports_bad_values(tmp_path, capsys):
  status = run_main(f'--config={ROOT / "configs" / "tiny.py"}', '--config.model.bridge=words',
                    f'--workdir={tmp_path}', f'--config.data.data_dir={tmp_path}/data')
  assert status == 1 and "bridge='words'" in capsys.readouterr().err
