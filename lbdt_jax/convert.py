"""PyTorch state dicts -> our variables: official LBDT checkpoints and torchvision ImageNet ResNets.

Every tensor of a state dict is either mapped to exactly one of our variables (with its shape checked) or ignored
by an explicit rule; anything else is an error that lists the offending keys. The same rules map our gradients and
statistics back to PyTorch names, which the parity tool relies on.
"""

import dataclasses
import io
import re
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
from flax import traverse_util

from lbdt_jax import model_dir, paths
from lbdt_jax.models import LBDT, LBDTConfig

Path = tuple[str, ...]  # ('params', 'spatial_encoder', 'conv1', 'kernel')

# Entries of the official state dict that the forward pass never uses, and torchvision's classifier.
IGNORED_OFFICIAL = re.compile(r'(^decoder\.(spa_tower|tem_tower|mask_head)\.|\.num_batches_tracked$)')
IGNORED_TORCHVISION = re.compile(r'(^fc\.|\.num_batches_tracked$)')
STREAM_SUFFIX = {'spatial': '1', 'temporal': '2'}  # the official code's _1 (image) / _2 (flow)


@dataclasses.dataclass(frozen=True)
class Rule:
  """Tensors `torch_names` of a state dict <-> our variables `paths`."""
  torch_names: tuple[str, ...]
  paths: tuple[Path, ...]
  to_ours: Callable  # list of torch arrays -> list of our arrays
  to_torch: Callable | None  # list of our arrays -> list of torch arrays (None: not invertible)


def _identity(tensors):
  return list(tensors)


def _transpose(axes):
  inverse = tuple(np.argsort(axes))
  return (lambda ts: [np.transpose(t, axes) for t in ts], lambda ts: [np.transpose(t, inverse) for t in ts])


_CONV = _transpose((2, 3, 1, 0))  # OIHW -> HWIO
_LINEAR = _transpose((1, 0))  # [out, in] -> [in, out]


def _one(torch_name, path, transform=(_identity, _identity)):
  return Rule((torch_name,), (path,), *transform)


def _conv(torch_prefix: str, path: Path, bias: bool = False) -> Iterator[Rule]:
  yield _one(f'{torch_prefix}.weight', ('params', *path, 'kernel'), _CONV)
  if bias:
    yield _one(f'{torch_prefix}.bias', ('params', *path, 'bias'))


def _batch_norm(torch_prefix: str, path: Path) -> Iterator[Rule]:
  yield _one(f'{torch_prefix}.weight', ('params', *path, 'scale'))
  yield _one(f'{torch_prefix}.bias', ('params', *path, 'bias'))
  yield _one(f'{torch_prefix}.running_mean', ('batch_stats', *path, 'mean'))
  yield _one(f'{torch_prefix}.running_var', ('batch_stats', *path, 'var'))


def _conv_bn(torch_prefix: str, path: Path) -> Iterator[Rule]:
  """nn.Sequential(Conv2d, BatchNorm2d[, ReLU]) -> our ConvBN."""
  yield from _conv(f'{torch_prefix}.0', (*path, 'conv'))
  yield from _batch_norm(f'{torch_prefix}.1', (*path, 'bn'))


def _linear(torch_prefix: str, path: Path) -> Iterator[Rule]:
  yield _one(f'{torch_prefix}.weight', ('params', *path, 'kernel'), _LINEAR)
  yield _one(f'{torch_prefix}.bias', ('params', *path, 'bias'))


def _layer_norm(torch_prefix: str, path: Path) -> Iterator[Rule]:
  yield _one(f'{torch_prefix}.weight', ('params', *path, 'scale'))
  yield _one(f'{torch_prefix}.bias', ('params', *path, 'bias'))


def _attention(torch_prefix: str, path: Path) -> Iterator[Rule]:
  """nn.MultiheadAttention's packed in_proj [q; k; v] -> three Dense layers."""
  projections = ('query', 'key', 'value')
  yield Rule((f'{torch_prefix}.in_proj_weight',),
             tuple(('params', *path, p, 'kernel') for p in projections),
             lambda ts: [w.T for w in np.split(ts[0], 3)],
             lambda ts: [np.concatenate([w.T for w in ts])])
  yield Rule((f'{torch_prefix}.in_proj_bias',), tuple(('params', *path, p, 'bias') for p in projections),
             lambda ts: np.split(ts[0], 3), lambda ts: [np.concatenate(ts)])
  yield from _linear(f'{torch_prefix}.out_proj', (*path, 'out'))


def _resnet(torch_prefixes: Mapping[str, str], path: Path, config: LBDTConfig) -> Iterator[Rule]:
  """torchvision ResNet names; `torch_prefixes` gives the stem and layer names ('conv1', 'bn1', 'layer1'...)."""
  yield from _conv(torch_prefixes['conv1'], (*path, 'conv1'))
  yield from _batch_norm(torch_prefixes['bn1'], (*path, 'bn1'))
  convs = 3 if config.block_type == 'bottleneck' else 2
  for layer, num_blocks in enumerate(config.blocks_per_stage, start=1):
    for block in range(num_blocks):
      torch_block = f'{torch_prefixes[f"layer{layer}"]}.{block}'
      ours = (*path, f'layer{layer}_{block}')
      for i in range(1, convs + 1):
        yield from _conv(f'{torch_block}.conv{i}', (*ours, f'conv{i}'))
        yield from _batch_norm(f'{torch_block}.bn{i}', (*ours, f'bn{i}'))
      if block == 0 and (layer > 1 or config.block_type == 'bottleneck'):
        yield from _conv(f'{torch_block}.downsample.0', (*ours, 'downsample_conv'))
        yield from _batch_norm(f'{torch_block}.downsample.1', (*ours, 'downsample_bn'))


def _torchvision_names(suffix: str = '') -> dict[str, str]:
  if suffix:  # the official JointModel's flattened copies: conv1_1, bn1_1, res2_1 ... res5_1
    return {'conv1': f'conv1_{suffix}', 'bn1': f'bn1_{suffix}',
            **{f'layer{i}': f'res{i + 1}_{suffix}' for i in range(1, 5)}}
  return {'conv1': 'conv1', 'bn1': 'bn1', **{f'layer{i}': f'layer{i}' for i in range(1, 5)}}


def official_rules(config: LBDTConfig) -> list[Rule]:
  """Rules for a state dict of the official `JointModel` (models/LBDT_4.py)."""
  check_official_compatible(config)
  rules = []
  for stream, suffix in STREAM_SUFFIX.items():
    rules += _resnet(_torchvision_names(suffix), (f'{stream}_encoder',), config)
  lstm = ('params', 'text_encoder')
  rules += [_one('text_encoder.lstm.weight_ih_l0', (*lstm, 'input_kernel'), _LINEAR),
            _one('text_encoder.lstm.weight_hh_l0', (*lstm, 'recurrent_kernel'), _LINEAR),
            _one('text_encoder.lstm.bias_ih_l0', (*lstm, 'input_bias')),
            _one('text_encoder.lstm.bias_hh_l0', (*lstm, 'recurrent_bias'))]
  for stage in config.lbdt_stages:
    ours = f'lbdt_stage{stage}'
    for stream, suffix in STREAM_SUFFIX.items():
      rules += _conv_bn(f'conv_r{stage}_{suffix}_reduce', (ours, f'{stream}_reduce'))
      rules += _conv_bn(f'conv_r{stage}_{suffix}_up', (ours, f'{stream}_up'))
    for layer in range(config.num_lbdt_layers):
      torch_layer, our_layer = f'transformer.stage{stage}.layers.{layer}', (ours, f'layer{layer}')
      rules += _attention(f'{torch_layer}.self_attn_words', (*our_layer, 'word_self_attention'))
      rules += _attention(f'{torch_layer}.cross_attn_img', (*our_layer, 'word_source_attention'))
      rules += _attention(f'{torch_layer}.cross_attn_flo', (*our_layer, 'target_word_attention'))
      rules += _linear(f'{torch_layer}.linear1', (*our_layer, 'ffn', 'hidden'))
      rules += _linear(f'{torch_layer}.linear2', (*our_layer, 'ffn', 'output'))
      for torch_norm, our_norm in (('norm_words_1', 'word_norm1'), ('norm_words_2', 'word_norm2'),
                                   ('norm_flo', 'target_norm1'), ('norm_flo2', 'target_norm2')):
        rules += _layer_norm(f'{torch_layer}.{torch_norm}', (*our_layer, our_norm))
  for stream, torch_stream in (('spatial', 'spa'), ('temporal', 'tem')):
    for level in range(4):
      rules += _conv_bn(f'decoder.refine_{torch_stream}.{level}', ('decoder', f'{stream}_refine{level}'))
  bca = ('decoder', 'bca')
  rules += _linear('decoder.fusion.img_flo_fc.0', (*bca, 'consistency'))
  for stream, torch_stream in (('spatial', 'img'), ('temporal', 'flo')):
    rules += _linear(f'decoder.fusion.{torch_stream}_txt_fc', (*bca, f'{stream}_denoiser'))
    rules += _linear(f'decoder.fusion.{torch_stream}_enhance_fc', (*bca, f'{stream}_activator'))
  rules += _conv_bn('decoder.fusion.fusion_cat_conv', (*bca, 'fusion'))
  for level in range(config.decoder_tower_depth):
    rules += _conv_bn(f'decoder.fuse_tower.{level}', ('decoder', f'tower{level}'))
  rules += _conv(f'decoder.fuse_tower.{config.decoder_tower_depth}', ('decoder', 'logits'), bias=True)
  return rules


def check_official_compatible(config: LBDTConfig) -> None:
  """The official code has one architecture up to the layer count, stages and backbone depth."""
  official = LBDTConfig(resnet_depth=config.resnet_depth, lbdt_stages=config.lbdt_stages,
                        num_lbdt_layers=config.num_lbdt_layers, dropout_rate=config.dropout_rate,
                        dtype=config.dtype)
  different = [f.name for f in dataclasses.fields(LBDTConfig)
               if getattr(config, f.name) != getattr(official, f.name)]
  if different:
    raise ValueError(f'The official LBDT architecture has no counterpart for these settings: {different}')


def infer_num_lbdt_layers(state_dict: Mapping[str, np.ndarray]) -> int:
  """LBDT-1 and LBDT-4 checkpoints differ only in `transformer.stageS.layers.L`."""
  layers = {int(m.group(1)) for k in state_dict if (m := re.match(r'transformer\.stage\d\.layers\.(\d+)\.', k))}
  if not layers:
    raise ValueError('No transformer.stage*.layers.* entries: this is not an LBDT state dict')
  return max(layers) + 1


def infer_lbdt_stages(state_dict: Mapping[str, np.ndarray]) -> tuple[int, ...]:
  return tuple(sorted({int(m.group(1)) for k in state_dict if (m := re.match(r'transformer\.stage(\d)\.', k))}))


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: list[Rule], target, ignored: re.Pattern,
                what: str) -> dict:
  """Maps `state_dict` onto the abstract variables `target` strictly; returns a nested dict of numpy arrays."""
  used = {name for rule in rules for name in rule.torch_names}
  missing = sorted(used - set(state_dict))
  unexpected = sorted(k for k in state_dict if k not in used and not ignored.search(k))
  if missing or unexpected:
    raise ValueError(
        f'{what} does not match the model: {len(missing)} missing key(s) {missing[:20]}, '
        f'{len(unexpected)} unexpected key(s) {unexpected[:20]}')
  targets = traverse_util.flatten_dict(target)
  variables, mismatched = {}, []
  for rule in rules:
    values = rule.to_ours([np.asarray(state_dict[name]) for name in rule.torch_names])
    for path, value in zip(rule.paths, values, strict=True):
      expected = targets[path].shape
      if value.shape != expected:
        mismatched.append(f'{"/".join(path)} <- {rule.torch_names}: {value.shape} != {expected}')
      variables[path] = value.astype(np.float32)
  if mismatched:
    raise ValueError(f'{what}: shape mismatch for {len(mismatched)} tensor(s): ' + '; '.join(mismatched[:20]))
  unfilled = sorted('/'.join(p) for p in targets.keys() - variables.keys())
  if unfilled:
    raise ValueError(f'{what}: no tensor for {len(unfilled)} model variable(s): {unfilled[:20]}')
  return traverse_util.unflatten_dict(variables)


def strip_wrappers(state_dict: Mapping) -> dict[str, np.ndarray]:
  """Unwraps {'state_dict': ...} / {'model': ...} checkpoints and the 'module.' prefix of DDP/DataParallel."""
  for key in ('state_dict', 'model', 'model_state_dict'):
    if key in state_dict and isinstance(state_dict[key], Mapping):
      state_dict = state_dict[key]
  return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}


def load_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a state dict from `.npz` (numpy) or `.pth`/`.pt`/`.ckpt`/`.bin` (PyTorch, needs the `torch` extra);
  local or in a bucket."""
  path = paths.path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No checkpoint file at {path}')
  if path.suffix == '.npz':
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
      return strip_wrappers({k: data[k] for k in data.files})
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f'Reading {path} needs PyTorch: pip install "lbdt-jax[torch]" '
                      '(or save the state dict as .npz)') from error
  try:
    loaded = torch.load(io.BytesIO(path.read_bytes()), map_location='cpu', weights_only=True)
  except Exception as error:  # torch raises many types for corrupt or foreign files
    raise ValueError(f'Could not read {path} as a PyTorch checkpoint: {error}') from error
  if not isinstance(loaded, Mapping):
    raise ValueError(f'{path} holds a {type(loaded).__name__}, not a state dict')
  return {k: v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)
          for k, v in strip_wrappers(loaded).items()}


def convert_official(state_dict: Mapping[str, np.ndarray], config: LBDTConfig | None = None):
  """An official LBDT state dict -> (config, {'params', 'batch_stats'}). The layer count and stages are read
  from the checkpoint; other settings come from `config` (default: the official architecture)."""
  state_dict = strip_wrappers(state_dict)
  config = dataclasses.replace(config or LBDTConfig(), num_lbdt_layers=infer_num_lbdt_layers(state_dict),
                               lbdt_stages=infer_lbdt_stages(state_dict))
  variables = apply_rules(state_dict, official_rules(config), model_dir.abstract_variables(config), IGNORED_OFFICIAL,
                          'LBDT state dict')
  return config, variables


def load_imagenet_backbone(variables, state_dict: Mapping[str, np.ndarray], config: LBDTConfig):
  """Copies a torchvision ResNet state dict into every encoder of `variables` (a new tree is returned)."""
  state_dict = strip_wrappers(state_dict)
  variables = jax.tree.map(np.asarray, variables)
  for stream in config.streams:
    rules = list(_resnet(_torchvision_names(), (f'{stream}_encoder',), config))
    target = {c: {f'{stream}_encoder': variables[c][f'{stream}_encoder']} for c in ('params', 'batch_stats')}
    encoder = apply_rules(state_dict, rules, target, IGNORED_TORCHVISION, 'torchvision ResNet')
    for collection in ('params', 'batch_stats'):
      variables[collection][f'{stream}_encoder'] = encoder[collection][f'{stream}_encoder']
  return variables


def to_torch_layout(rules: list[Rule], tree, torch_name: str) -> np.ndarray:
  """Reads the tensor `torch_name` in PyTorch layout from our tree (params, grads or batch_stats)."""
  for rule in rules:
    if torch_name in rule.torch_names:
      if rule.to_torch is None:
        raise ValueError(f'{torch_name} has no inverse mapping')
      flat = traverse_util.flatten_dict(tree)
      values = rule.to_torch([np.asarray(flat[p]) for p in rule.paths])
      return values[rule.torch_names.index(torch_name)]
  raise KeyError(f'No rule maps {torch_name}')


def is_torchvision_resnet(state_dict: Mapping) -> bool:
  return 'layer1.0.conv1.weight' in strip_wrappers(state_dict)


def convert_checkpoint(checkpoint: str, output_dir: str, config) -> LBDTConfig:
  """`--mode=convert`: an official LBDT checkpoint, or torchvision ImageNet weights (loaded into both encoders of
  a freshly initialised model from `config`), written with `save_converted`."""
  state_dict = load_state_dict(checkpoint)
  model_config = LBDTConfig.from_dict(config.model.to_dict())
  if is_torchvision_resnet(state_dict):
    variables = jax.jit(LBDT(model_config).init)(jax.random.key(config.seed),
                                                 *model_dir.example_inputs(model_config))
    variables = load_imagenet_backbone(variables, state_dict, model_config)
  else:
    model_config, variables = convert_official(state_dict, model_config)
  manifest = {**model_dir.manifest_for(config, model_config, None, None), 'trained_on': f'converted from {checkpoint}'}
  output_dir = model_dir.write(output_dir, model_config, variables, manifest=manifest)
  print(f'Converted {checkpoint} -> {output_dir} (LBDT-{model_config.num_lbdt_layers}, stages '
        f'{model_config.lbdt_stages})')
  return model_config
