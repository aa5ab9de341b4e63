"""Spatial and temporal encoders (paper §3.1): torchvision-compatible ResNet v1.5 run stage by stage.

Stages follow the paper's numbering: stage 1 is the stem (conv 7x7/2, BN, ReLU), stages 2-5 are torchvision's
layer1-layer4 (stage 2 starts with the 3x3/2 max-pool). Parameter names follow torchvision so that converted
ImageNet and LBDT checkpoints map one to one.
"""

import functools
from typing import Any

import flax.linen as nn

from lbdt_jax.models.config import LBDTConfig
from lbdt_jax.models.layers import BatchNorm, Conv


class BasicBlock(nn.Module):
  planes: int
  stride: int
  downsample: bool
  dtype: Any
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, dtype=self.dtype)
    bn = functools.partial(BatchNorm, dtype=self.dtype)
    identity = x
    y = nn.relu(bn(name='bn1')(conv(self.planes, 3, self.stride, name='conv1')(x), train))
    y = bn(name='bn2')(conv(self.planes, 3, name='conv2')(y), train)
    if self.downsample:
      identity = bn(name='downsample_bn')(conv(self.planes, 1, self.stride, name='downsample_conv')(x), train)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""
  planes: int
  stride: int
  downsample: bool
  dtype: Any
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, dtype=self.dtype)
    bn = functools.partial(BatchNorm, dtype=self.dtype)
    identity = x
    y = nn.relu(bn(name='bn1')(conv(self.planes, 1, name='conv1')(x), train))
    y = nn.relu(bn(name='bn2')(conv(self.planes, 3, self.stride, name='conv2')(y), train))
    y = bn(name='bn3')(conv(self.planes * 4, 1, name='conv3')(y), train)
    if self.downsample:
      identity = bn(name='downsample_bn')(conv(self.planes * 4, 1, self.stride, name='downsample_conv')(x), train)
    return nn.relu(y + identity)


class ResNetEncoder(nn.Module):
  """A ResNet whose stages can be run one at a time, so that LBDT can sit between them."""
  config: LBDTConfig

  def setup(self):
    cfg = self.config
    dtype = cfg.compute_dtype
    block = Bottleneck if cfg.block_type == 'bottleneck' else BasicBlock
    if cfg.remat:
      block = nn.remat(block, static_argnums=(2,))  # argument 2 is `train` (self is 0)
    self.conv1 = Conv(cfg.resnet_width, 7, 2, dtype=dtype)
    self.bn1 = BatchNorm(dtype=dtype)
    in_channels = cfg.resnet_width
    layers = []
    for index, num_blocks in enumerate(cfg.blocks_per_stage):
      planes = cfg.resnet_width * 2**index
      stride = 1 if index == 0 else 2
      blocks = []
      for j in range(num_blocks):
        downsample = j == 0 and (stride != 1 or in_channels != planes * block.expansion)
        blocks.append(block(planes, stride if j == 0 else 1, downsample, dtype))
        in_channels = planes * block.expansion
      layers.append(blocks)
    # Attribute names give torchvision's parameter names: layer1_0, layer1_1, ...
    self.layer1, self.layer2, self.layer3, self.layer4 = layers

  def stem(self, x, train: bool):
    """Stage 1: conv 7x7/2 -> BN -> ReLU (the max-pool belongs to stage 2)."""
    return nn.relu(self.bn1(self.conv1(x), train))

  def stage(self, x, stage: int, train: bool):
    """Runs encoder stage 2, 3, 4 or 5 (torchvision layer1..layer4)."""
    if stage == 2:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # padding is -inf, as in PyTorch
    for block in (self.layer1, self.layer2, self.layer3, self.layer4)[stage - 2]:
      x = block(x, train)
    return x

  def __call__(self, x, train: bool = False):
    """All stages; returns the outputs of stages 2-5."""
    x = self.stem(x, train)
    outputs = []
    for stage in (2, 3, 4, 5):
      x = self.stage(x, stage, train)
      outputs.append(x)
    return outputs
