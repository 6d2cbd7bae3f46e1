"""The few-shot ConvNet-4; on 28x28x1 with 10 classes also OSAKA's ConvNet (docs/ALGORITHMS.md 2.1, 2.4).

4 x [Conv3x3 with bias -> BatchNorm -> ReLU -> MaxPool 2 (floor)] -> flatten -> Linear head with bias, PyTorch
default inits; groups conv1/kernel, conv1/bias, bn1/gamma, ..., head/bias. `bias=False` is for experiments only.
"""
from typing import Optional, Sequence

import gin
import keras

from wtl_tf.models import layers
from wtl_tf.errors import ConfigError


@gin.register
def conv4(input_shape: Sequence[int] = (84, 84, 3), num_classes: int = 5, hidden_size: int = 64,
          num_blocks: int = 4, bias: bool = True, seed: int = 0, fused_bn: Optional[bool] = None,
          first_conv_by_patches: bool = False) -> keras.Model:
  """A built Keras ConvNet-4; images are NHWC float32 (84x84 gives 1600 features, 28x28 gives 64)."""
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3 or min(input_shape) <= 0 or num_classes <= 0 or hidden_size <= 0 or num_blocks <= 0:
    raise ConfigError(f'conv4 needs an HxWxC input and positive sizes, got input {input_shape}, classes '
                     f'{num_classes}, hidden {hidden_size}, blocks {num_blocks}')
  if min(input_shape[:2]) < 2 ** num_blocks:
    raise ConfigError(f'conv4: a {input_shape[0]}x{input_shape[1]} input is too small for {num_blocks} 2x2 poolings')
  inputs = keras.Input(input_shape)
  x, channels = inputs, input_shape[-1]
  for i in range(num_blocks):
    fan_in = 9 * channels
    conv = layers.Conv2DByPatches if (i == 0 and first_conv_by_patches) else keras.layers.Conv2D
    x = conv(hidden_size, 3, padding='same', use_bias=bias,
                            kernel_initializer=layers.torch_uniform(fan_in, seed * 1000 + 2 * i),
                            bias_initializer=layers.torch_uniform(fan_in, seed * 1000 + 2 * i + 1),
                            name=f'conv{i + 1}')(x)
    x = layers.BatchNorm(fused=fused_bn, name=f'bn{i + 1}')(x)
    x = keras.layers.ReLU(name=f'relu{i + 1}')(x)
    x = keras.layers.MaxPooling2D(2, name=f'pool{i + 1}')(x)
    channels = hidden_size
  x = keras.layers.Flatten(name='flatten')(x)
  feature_size = int(x.shape[-1])
  outputs = keras.layers.Dense(num_classes, use_bias=bias,
                               kernel_initializer=layers.torch_uniform(feature_size, seed * 1000 + 900),
                               bias_initializer=layers.torch_uniform(feature_size, seed * 1000 + 901),
                               name='head')(x)
  return keras.Model(inputs, outputs, name='conv4')
