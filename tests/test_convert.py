"""Converter: strict accounting, file readers, torchvision weights, and the convert command."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REFERENCE, ROOT, random_variables, run_main
from lbdt_jax import convert, model_dir
from lbdt_jax.models import LBDTConfig
from lbdt_jax.tools.check_reference import regenerate_state_dict


@pytest.fixture(scope='module')
def official_state_dict():
  manifest = json.loads((REFERENCE / 'case_lbdt4_eval' / 'manifest.json').read_text())
  return regenerate_state_dict(manifest)


@pytest.fixture(scope='module')
def converted(official_state_dict):
  """(config, variables) of the official LBDT-4 state dict."""
  return convert.convert_official(official_state_dict)


def lbdt1(state_dict):
  """The LBDT-1 layout: one transformer layer per stage."""
  return {k: v for k, v in state_dict.items() if not any(f'.layers.{i}.' in k for i in (1, 2, 3))}


@pytest.fixture(scope='module')
def converted_lbdt1(official_state_dict):
  return convert.convert_official(lbdt1(official_state_dict))


def test_official_checkpoint_converts_and_infers_layer_count(official_state_dict, converted, converted_lbdt1):
  config, variables = converted
  assert config.num_lbdt_layers == 4 and config.lbdt_stages == (4, 5)
  kernel = variables['params']['spatial_encoder']['conv1']['kernel']
  np.testing.assert_array_equal(kernel, official_state_dict['conv1_1.weight'].transpose(2, 3, 1, 0))
  config1, variables1 = converted_lbdt1
  assert config1.num_lbdt_layers == 1 and 'layer1' not in variables1['params']['lbdt_stage4']


def test_ddp_prefix_and_wrappers_are_removed(official_state_dict, converted):
  wrapped = {'state_dict': {f'module.{k}': v for k, v in official_state_dict.items()}}
  _, variables = convert.convert_official(wrapped)
  jax.tree.map(np.testing.assert_array_equal, variables, converted[1])


def test_missing_unexpected_and_misshapen_tensors_are_listed(official_state_dict):
  broken = dict(official_state_dict)
  del broken['decoder.fusion.img_txt_fc.bias']
  broken['decoder.extra.weight'] = np.zeros(3)
  with pytest.raises(ValueError) as error:
    convert.convert_official(broken)
  assert 'decoder.fusion.img_txt_fc.bias' in str(error.value) and 'decoder.extra.weight' in str(error.value)
  misshapen = dict(official_state_dict)
  misshapen['res2_1.0.conv1.weight'] = np.zeros((64, 64, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r'shape mismatch.*res2_1\.0\.conv1\.weight'):
    convert.convert_official(misshapen)


def test_unused_reference_modules_are_explicitly_ignored(official_state_dict, converted):
  assert any(k.startswith('decoder.mask_head') for k in official_state_dict)
  without = {k: v for k, v in official_state_dict.items() if not convert.IGNORED_OFFICIAL.search(k)}
  jax.tree.map(np.testing.assert_array_equal, convert.convert_official(without)[1], converted[1])


def test_configs_without_official_counterpart_are_refused(official_state_dict):
  with pytest.raises(ValueError, match='bridge'):
    convert.convert_official(official_state_dict, LBDTConfig(bridge='direct'))


def test_gradient_names_round_trip(official_state_dict, converted):
  config, variables = converted
  rules = convert.official_rules(config)
  for name in ('transformer.stage5.layers.0.cross_attn_img.in_proj_weight', 'text_encoder.lstm.weight_ih_l0',
               'conv1_2.weight', 'decoder.fuse_tower.4.bias', 'bn1_1.running_var'):
    np.testing.assert_array_equal(convert.to_torch_layout(rules, variables, name), official_state_dict[name])


def torchvision_state_dict(config):
  """A torchvision-layout ResNet state dict built from the names and shapes our rules expect."""
  target = traverse_util.flatten_dict(model_dir.abstract_variables(config))
  rng = np.random.default_rng(0)
  state_dict = {'fc.weight': np.zeros((1000, 2048), np.float32), 'fc.bias': np.zeros(1000, np.float32)}
  for rule in convert._resnet(convert._torchvision_names(), ('spatial_encoder',), config):
    ours = [rng.standard_normal(target[p].shape).astype(np.float32) for p in rule.paths]
    state_dict.update(zip(rule.torch_names, rule.to_torch(ours)))
    state_dict[rule.torch_names[0].rsplit('.', 1)[0] + '.num_batches_tracked'] = np.zeros((), np.int64)
  return state_dict


def test_torchvision_weights_go_into_both_encoders():
  config = LBDTConfig(resnet_depth=18, model_dim=32, num_heads=4, ffn_dim=32, decoder_dim=16, num_lbdt_layers=1)
  state_dict = torchvision_state_dict(config)
  assert convert.is_torchvision_resnet(state_dict)
  variables = random_variables(config)
  loaded = convert.load_imagenet_backbone(variables, state_dict, config)
  for stream in ('spatial', 'temporal'):
    np.testing.assert_array_equal(loaded['params'][f'{stream}_encoder']['layer2_0']['conv1']['kernel'],
                                  state_dict['layer2.0.conv1.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded['batch_stats'][f'{stream}_encoder']['bn1']['var'],
                                  state_dict['bn1.running_var'])
  np.testing.assert_array_equal(loaded['params']['decoder']['logits']['kernel'],
                                variables['params']['decoder']['logits']['kernel'])
  with pytest.raises(ValueError, match='layer4.1.bn2.bias'):
    convert.load_imagenet_backbone(variables, {k: v for k, v in state_dict.items() if k != 'layer4.1.bn2.bias'},
                                   config)


def test_readers_for_npz_pth_and_bad_files(tmp_path, official_state_dict):
  import torch
  small = {k: v for k, v in list(official_state_dict.items())[:5]}
  np.savez(tmp_path / 'weights.npz', **small)
  torch.save({'state_dict': {f'module.{k}': torch.from_numpy(np.asarray(v)) for k, v in small.items()}},
             tmp_path / 'weights.ckpt')
  for name in ('weights.npz', 'weights.ckpt'):
    loaded = convert.load_state_dict(str(tmp_path / name))
    assert loaded.keys() == small.keys()
    for key in small:
      np.testing.assert_array_equal(loaded[key], small[key])
  (tmp_path / 'corrupt.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='corrupt.pth'):
    convert.load_state_dict(str(tmp_path / 'corrupt.pth'))
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    convert.load_state_dict(str(tmp_path / 'missing.pth'))


def test_convert_command_writes_the_official_variables_as_a_model_directory(tmp_path, official_state_dict,
                                                                           converted_lbdt1):
  state_dict = lbdt1(official_state_dict)
  np.savez(tmp_path / 'lbdt1.npz', **state_dict)
  assert run_main(f'--config={ROOT / "configs" / "default.py"}', '--mode=convert',
                  f'--checkpoint={tmp_path / "lbdt1.npz"}', f'--workdir={tmp_path / "model"}') == 0
  converted = model_dir.read(str(tmp_path / 'model'), word_table=False)
  config, variables = converted.model_config, converted.variables
  assert config.num_lbdt_layers == 1 and converted.table is None and converted.manifest['input_size'] == [320, 320]
  expected_config, expected = converted_lbdt1
  assert config == expected_config  # the same model with the same variables: the same logits
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  with pytest.raises(FileNotFoundError, match='model_config.json'):
    model_dir.read(str(tmp_path))
