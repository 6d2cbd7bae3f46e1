"""The La-MAML MLP (docs/ALGORITHMS.md 2.3): 784 -> h -> ReLU -> h -> ReLU -> 10, single-headed, groups fc1..fc3.

Weights as PyTorch's `kaiming_normal_`: untruncated normal, std sqrt(2 / fan_in) (Keras' HeNormal truncates); biases 0.
"""
import math
from typing import Sequence

import gin
import keras
from wtl_tf.errors import ConfigError


@gin.register
def mlp(input_size: int = 784, hidden_sizes: Sequence[int] = (100, 100), num_classes: int = 10,
        seed: int = 0) -> keras.Model:
  """A built Keras MLP; `hidden_sizes` is Figure 3 (right)'s width switch."""
  if input_size <= 0 or num_classes <= 0 or any(h <= 0 for h in hidden_sizes):
    raise ConfigError(f'mlp sizes must be positive, got input {input_size}, hidden {hidden_sizes}, '
                     f'classes {num_classes}')
  inputs = keras.Input((input_size,))
  x = inputs
  fan_in = input_size
  widths = list(hidden_sizes) + [num_classes]
  for i, width in enumerate(widths):
    init = keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / fan_in), seed=seed * 1000 + i)
    x = keras.layers.Dense(width, kernel_initializer=init, bias_initializer='zeros', name=f'fc{i + 1}')(x)
    if i < len(widths) - 1:
      x = keras.layers.ReLU()(x)
    fan_in = width
  return keras.Model(inputs, x, name='mlp')
