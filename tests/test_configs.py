"""The config files and their options; per-device batch sizes and the learning rate (lbdt_jax/batch_sizes.py)."""

import importlib
import math
import pathlib

import ml_collections
import pytest

from configs import default
from lbdt_jax import batch_sizes
from lbdt_jax.models import LBDTConfig

CONFIG_FILES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / 'configs').glob('*.py')
                      if p.stem != '__init__')
OPTIONS = (*default.LAYERS, *default.MODEL_SWITCHES, 'delta=3', 'stages=45', 'adam', 'reference_eval',
           *default.ACCELERATORS)


def test_the_default_is_the_papers_recipe():
  config = default.get_config()
  assert config.train.batch_size == 8 and config.train.per_device_batch_size == 0
  assert config.eval.per_device_batch_size == 0
  assert config.optimizer.name == 'adamw' and config.optimizer.learning_rate == 1e-4
  assert config.optimizer.lr_batch_scaling == 'none'
  assert config.model.dtype == 'float32' and not config.model.remat
  assert LBDTConfig.from_dict(config.model) == LBDTConfig()
  # Resolved on any number of devices it stays the recipe.
  resolved = batch_sizes.resolve(config, 8)
  assert resolved.train.batch_size == 8 and resolved.eval.batch_size == 8
  assert resolved.optimizer.learning_rate == 1e-4


@pytest.mark.parametrize('option', OPTIONS)
def test_every_option_parses_into_a_valid_model(option):
  config = default.get_config(f'lbdt4,{option}')
  LBDTConfig.from_dict(config.model)
  batch_sizes.resolve(config, 4)


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_file_takes_the_accelerator_options(name):
  module = importlib.import_module(f'configs.{name}')
  for accelerator in default.ACCELERATORS:
    config = module.get_config(f'{module.get_config.__defaults__[0]},{accelerator}')
    assert config.model.dtype == 'bfloat16'
    assert batch_sizes.resolve(config, 2).train.batch_size == 2 * config.train.per_device_batch_size



@pytest.mark.parametrize('name', CONFIG_FILES)
def test_options_survive_every_config_file(name):
  """Options are applied after a config file's own settings: a file that rebuilds config.data keeps delta=N."""
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config(f'{module.get_config.__defaults__[0]},delta=3,reference_eval,no_denoiser')
  assert config.data.delta == 3 and config.data.mask_resize == 'bilinear_threshold'
  assert config.eval.protocol == 'reference' and not config.model.language_denoiser


def test_an_unknown_option_lists_the_choices():
  with pytest.raises(ValueError, match=r"Unknown config option 'cuda'.*reference_eval, gpu, tpu"):
    default.get_config('lbdt4,cuda')


@pytest.mark.parametrize('accelerator, train, evaluate', [('gpu', 32, 64), ('tpu', 16, 32)])
def test_accelerator_options_set_what_they_say(accelerator, train, evaluate):
  config = default.get_config(f'lbdt4,{accelerator}')
  paper = default.get_config('lbdt4')
  assert config.model.dtype == 'bfloat16' and not config.model.remat
  assert config.train.per_device_batch_size == train and config.eval.per_device_batch_size == evaluate
  assert config.optimizer.lr_batch_scaling == 'sqrt'
  assert config.data.num_threads == 0  # all host cores
  # Execution settings only: the model is LBDT-4 as released, trained as the recipe otherwise says.
  for field in LBDTConfig.EXECUTION_FIELDS:
    config.model[field] = paper.model[field]
  assert config.model == paper.model
  assert (config.optimizer.learning_rate, config.optimizer.base_batch_size) == (1e-4, 8)
  assert config.train.num_epochs == paper.train.num_epochs and config.data == paper.data
  # On 8 devices: the global batches, and the learning rate scaled by the square root of the batch's growth.
  resolved = batch_sizes.resolve(config, 8)
  assert resolved.train.batch_size == 8 * train and resolved.eval.batch_size == 8 * evaluate
  assert resolved.optimizer.learning_rate == pytest.approx(1e-4 * math.sqrt(train))


def test_global_batch_is_per_device_times_devices_times_accumulation():
  config = default.get_config()
  config.train.update(per_device_batch_size=4, accumulation_steps=3)
  config.eval.per_device_batch_size = 16
  resolved = batch_sizes.resolve(config, 8)
  assert resolved.train.batch_size == 96 and resolved.eval.batch_size == 128
  assert resolved.optimizer.learning_rate == 1e-4  # no scaling unless asked for
  # The config passed in is left as it was.
  assert config.train.batch_size == 8 and config.eval.batch_size == 8


@pytest.mark.parametrize('scaling, factor', [('none', 1.0), ('sqrt', 2.0), ('linear', 4.0)])
def test_learning_rate_follows_the_global_batch(scaling, factor):
  config = default.get_config()
  config.train.batch_size = 32  # 4x the base batch of 8
  config.optimizer.lr_batch_scaling = scaling
  resolved = batch_sizes.resolve(config, 1)
  assert resolved.optimizer.learning_rate == pytest.approx(1e-4 * factor)


def test_resolving_twice_changes_nothing():
  config = default.get_config('lbdt4,gpu')
  once = batch_sizes.resolve(config, 4)
  assert once.optimizer.base_batch_size == 128
  assert batch_sizes.resolve(once, 4).to_dict() == once.to_dict()


def test_resolve_keeps_the_config_type_checked():
  resolved = batch_sizes.resolve(default.get_config(), 2)
  assert isinstance(resolved, ml_collections.ConfigDict)
  with pytest.raises(TypeError):
    resolved.train.batch_size = 'eight'


@pytest.mark.parametrize('change, message', [
    (lambda c: c.train.update(per_device_batch_size=-1), r'config\.train\.per_device_batch_size must be a '
                                                         r'non-negative integer, got -1'),
    (lambda c: c.eval.update(per_device_batch_size=-4), r'config\.eval\.per_device_batch_size .* got -4'),
    (lambda c: c.train.update(per_device_batch_size=4, accumulation_steps=0),
     r'config\.train\.accumulation_steps must be at least 1, got 0'),
    (lambda c: c.train.update(batch_size=0), r'config\.train\.batch_size must be at least 1, got 0'),
    (lambda c: c.optimizer.update(lr_batch_scaling='cubic'),
     r"config\.optimizer\.lr_batch_scaling must be one of \['linear', 'none', 'sqrt'\], got 'cubic'"),
    (lambda c: c.optimizer.update(base_batch_size=0), r'config\.optimizer\.base_batch_size must be at least 1'),
])
def test_bad_values_are_named(change, message):
  config = default.get_config()
  change(config)
  with pytest.raises(ValueError, match=message):
    batch_sizes.resolve(config, 2)


def test_a_non_integer_per_device_batch_is_refused():
  config = ml_collections.ConfigDict(default.get_config().to_dict(), type_safe=False)  # as a plain dict would hold
  config.train.per_device_batch_size = 2.5
  with pytest.raises(ValueError, match=r'per_device_batch_size must be a non-negative integer, got 2\.5'):
    batch_sizes.resolve(config, 2)


@pytest.mark.parametrize('count', [0, -1, 1.5, True])
def test_device_count_must_be_a_positive_integer(count):
  with pytest.raises(ValueError, match='device_count must be a positive integer'):
    batch_sizes.resolve(default.get_config(), count)
