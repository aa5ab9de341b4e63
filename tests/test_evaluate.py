"""Evaluation from a model directory on the fake DAVIS, YouTube-VOS and MeViS releases; configs and the command
line."""

import zipfile

import cv2
import numpy as np
import pytest

import data_fakes as fakes
from conftest import ROOT, run_main
from configs import default, tiny
from data_pipeline import glove
from lbdt_jax import evaluate, model_dir, train
from lbdt_jax.tools import score




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



def test_mevis_j_and_f_per_expression_as_the_scoring_tool(tmp_path, model_directories):
  """Empty masks everywhere, on the fake MeViS train split: of its four scored expressions, only "the dog running
  away" has frames without its object (4 and 5 of 6), where J = F = 1; the other frames score 0. The scoring tool
  gives the same figures for a folder of empty PNGs."""
  config = evaluation_config(tmp_path, model_directories['background'], 'mevis', 'train', fakes.write_mevis)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['mevis:train']
  assert result['num_samples'] == 4 * fakes.MEVIS_FRAMES and result['num_expressions'] == 4
  assert result['per_expression'] == {'m_train_0': [0.0, 0.0], 'm_train_1': [pytest.approx(2 / 6)] * 2,
                                      'm_train_2': [0.0, 0.0], 'm_train_3': [0.0, 0.0]}
  for key in ('J', 'F', 'J&F'):
    assert result[key] == pytest.approx(2 / 6 / 4)
  predictions = tmp_path / 'empty_predictions'
  for expression in range(4):
    folder = predictions / 'm_train' / str(expression)
    folder.mkdir(parents=True)
    for frame in range(fakes.MEVIS_FRAMES):
      cv2.imwrite(str(folder / f'{frame:05d}.png'), np.zeros((fakes.HEIGHT, fakes.WIDTH), np.uint8))
  scored = score.score('mevis', tmp_path / 'release' / 'train', predictions)
  # The tool also scores the skipped expressions (the one-frame video, the empty sentence): compare the others.
  assert {k: scored['per_expression'][k] for k in result['per_expression']} == result['per_expression']


def test_mevis_valid_becomes_a_submission_zip(tmp_path, model_directories, capsys):
  config = evaluation_config(tmp_path, model_directories['foreground'], 'mevis', 'valid', fakes.write_mevis)
  result = evaluate.evaluate(config, str(tmp_path / 'work'))['mevis:valid']
  with zipfile.ZipFile(result['submission']) as archive:
    names = sorted(archive.namelist())
    assert names == [f'm_valid/0/{n:05d}.png' for n in range(fakes.MEVIS_FRAMES)]  # video folders at the top
    masks = [cv2.imdecode(np.frombuffer(archive.read(name), np.uint8), cv2.IMREAD_UNCHANGED) for name in names]
  assert all(mask.shape == (fakes.HEIGHT, fakes.WIDTH) and (mask == 255).all() for mask in masks)
  assert result['submission_check'] == ('6 masks of 1 expressions in 1 videos, every frame of the split present '
                                        'at its size')
  assert result['submission_check'] in capsys.readouterr().out


def test_a_submission_that_would_be_rejected_is_not_written():
  samples = {'video_id': np.array(['v', 'v']), 'expression_id': np.array([0, 0]), 'frame_index': np.array([0, 1]),
             'orig_size': np.array([[4, 6], [4, 6]])}
  record = lambda frame, size=(4, 6): {'video_id': 'v', 'expression_id': 0, 'frame_index': frame,
                                       'prediction': {'size': list(size), 'counts': ''}}
  assert evaluate.check_submission('mevis', [record(0), record(1)], samples) == {'v/0/00000.png': (4, 6),
                                                                               'v/0/00001.png': (4, 6)}
  with pytest.raises(ValueError, match=r"1 files missing, e.g. \['v/0/00001.png'\]"):
    evaluate.check_submission('mevis', [record(0)], samples)
  with pytest.raises(ValueError, match=r'Annotations/v/0/00001.png is 3x6, its frame 4x6'):
    evaluate.check_submission('ref_youtube_vos', [record(0), record(1, (3, 6))], samples)
  with pytest.raises(ValueError, match=r"v/0/00000.png predicted twice; 1 files that belong to no sample, e.g. "
                                       r"\['v/0/00002.png'\]"):
    evaluate.check_submission('mevis', [record(0), record(0), record(1), record(2)], samples)
  with pytest.raises(ValueError, match='no submission layout for a2d_sentences'):
    evaluate.check_submission('a2d_sentences', [record(0)], samples)


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
