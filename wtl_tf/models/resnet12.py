"""ResNet-12 as in the reference (docs/ALGORITHMS.md 2.2, gotcha 12).

Stage: [conv3x3 -> BN -> LeakyReLU] x 2 -> conv3x3 -> BN, plus a conv1x1 -> BN shortcut, then LeakyReLU and a pool.
Groups: stage1_conv1/kernel, stage1_bn1/gamma, ..., stage1_shortcut_conv/kernel, ..., head/kernel, head/bias.
"""
from typing import Optional, Sequence

import gin
import keras

from wtl_tf.models import layers
from wtl_tf.errors import ConfigError

WIDTHS = (64, 128, 256, 512)
BIG_WIDTHS = (64, 160, 320, 640)
LEAKY_SLOPE = 0.01  # Keras' LeakyReLU defaults to 0.3 and tf.nn.leaky_relu to 0.2.


def _conv(width, size, name, seed):
  return keras.layers.Conv2D(width, size, padding='same', use_bias=False,
                             kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name=name)


@gin.register
def resnet12(input_shape: Sequence[int] = (84, 84, 3), num_classes: int = 5, big: bool = False,
             widths: Optional[Sequence[int]] = None, seed: int = 0, fused_bn: Optional[bool] = None) -> keras.Model:
  """A built Keras ResNet-12; `widths` overrides the stage widths (default WIDTHS, or BIG_WIDTHS with `big`)."""
  widths = tuple(widths) if widths is not None else (BIG_WIDTHS if big else WIDTHS)
  input_shape = tuple(int(d) for d in input_shape)
  if len(widths) != 4 or min(widths) <= 0 or num_classes <= 0 or len(input_shape) != 3:
    raise ConfigError(f'resnet12 needs 4 positive stage widths, positive classes and an HxWxC input, got widths '
                     f'{widths}, classes {num_classes}, input {input_shape}')
  inputs = keras.Input(input_shape)
  x = inputs
  for stage, width in enumerate(widths, start=1):
    prefix = f'stage{stage}'
    s = seed * 1000 + 10 * stage
    h = x
    for j in range(1, 4):
      h = _conv(width, 3, f'{prefix}_conv{j}', s + j)(h)
      h = layers.BatchNorm(fused=fused_bn, name=f'{prefix}_bn{j}')(h)
      if j < 3:
        h = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f'{prefix}_act{j}')(h)
    shortcut = _conv(width, 1, f'{prefix}_shortcut_conv', s)(x)
    shortcut = layers.BatchNorm(fused=fused_bn, name=f'{prefix}_shortcut_bn')(shortcut)
    x = keras.layers.Add(name=f'{prefix}_add')([h, shortcut])
    x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f'{prefix}_out')(x)
    if stage in (1, 2):
      x = keras.layers.MaxPooling2D(2, name=f'{prefix}_pool')(x)
    elif stage == 3:
      x = layers.NegInfPaddedMaxPool(2, 2, padding=1, name=f'{prefix}_pool')(x)
  x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 1000 + 1),
                               bias_initializer='zeros', name='head')(x)
  return keras.Model(inputs, outputs, name='resnet12')
