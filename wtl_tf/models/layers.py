"""Layers the backbones share: PyTorch-default initialisers, a fused batch-statistics BatchNorm, -inf pooling.

`BatchNorm` subclasses Keras' (so `params.describe` sees a normalisation layer); its training-mode forward, run on
every inner step, is TF's one fused op instead of ~10 (docs/PERFORMANCE.md). Its second derivative is off by ~1e-3
(tests/models_test.py), so second-order learners call `set_fused_batchnorm(model, False)` (docs/ALGORITHMS.md 2.5).
"""
import math
from typing import Optional

import keras
import tensorflow as tf


def torch_uniform(fan_in: int, seed: Optional[int]) -> keras.initializers.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d/Linear weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound, seed=seed)


def _default_fused() -> bool:
  # On GPUs the fused kernel clamps epsilon to cuDNN's minimum (just above 1e-5); the plain path keeps 1e-5 exactly.
  return not tf.config.list_physical_devices('GPU')


class BatchNorm(keras.layers.BatchNormalization):
  """BatchNormalization with PyTorch's defaults (epsilon 1e-5, momentum 0.1 in torch terms) and a fused training path.

  Args:
    fused: use the fused kernel in training mode; None = on hosts without a GPU (see `_default_fused`).
    **kwargs: as for keras.layers.BatchNormalization.
  """

  def __init__(self, fused: Optional[bool] = None, epsilon: float = 1e-5, momentum: float = 0.9, **kwargs):
    super().__init__(epsilon=epsilon, momentum=momentum, **kwargs)
    self.fused = _default_fused() if fused is None else bool(fused)

  def _fusable(self, inputs, training, mask) -> bool:
    return (self.fused and training and mask is None and self.center and self.scale and not self.synchronized
            and len(inputs.shape) == 4 and self.axis in (-1, 3) and inputs.dtype == tf.float32
            and self.compute_dtype == 'float32')

  def call(self, inputs, training=None, mask=None):
    if not self._fusable(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    empty = tf.constant([], tf.float32)
    outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=tf.convert_to_tensor(self.gamma), offset=tf.convert_to_tensor(self.beta), mean=empty,
        variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0, data_format='NHWC', is_training=True)
    # The kernel reports the unbiased variance; Keras' moving statistics use the biased one.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
    variance = variance * tf.maximum(count - 1.0, 0.0) / count
    momentum = self.momentum
    self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
    self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
    return outputs

  def get_config(self):
    return {**super().get_config(), 'fused': self.fused}


def set_fused_batchnorm(model: keras.Model, fused: bool) -> int:
  """Switches every BatchNorm of `model` to the fused or the plain path (before tracing); returns how many."""
  count = 0
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, BatchNorm):
      layer.fused = bool(fused)
      count += 1
  return count


class NegInfPaddedMaxPool(keras.layers.Layer):
  """MaxPool after padding every spatial side with -inf (PyTorch's MaxPool2d(padding=p)); 'SAME' pads one side only."""

  def __init__(self, pool_size: int = 2, strides: int = 2, padding: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.pool_size, self.strides, self.pad = int(pool_size), int(strides), int(padding)

  def call(self, inputs):
    p = self.pad
    padded = keras.ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=-math.inf)
    return keras.ops.max_pool(padded, self.pool_size, self.strides, padding='valid')

  def compute_output_shape(self, input_shape):
    def out(size):
      return None if size is None else (size + 2 * self.pad - self.pool_size) // self.strides + 1
    return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

  def get_config(self):
    return {**super().get_config(), 'pool_size': self.pool_size, 'strides': self.strides, 'padding': self.pad}


class Conv2DByPatches(keras.layers.Conv2D):
  """A stride-1 Conv2D computed as image patches times the reshaped kernel (im2col); same function and parameters.

  For speed only: TF's CPU filter gradient for one input channel (OSAKA's 28x28x1) is slow, a patch matmul is not
  (docs/PERFORMANCE.md). Other strides, dilations or groups use the standard kernel.
  """

  def _by_patches(self) -> bool:
    return (self.data_format == 'channels_last' and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1) and self.groups == 1)

  def convolution_op(self, inputs, kernel):
    if not self._by_patches():
      return super().convolution_op(inputs, kernel)
    kh, kw = self.kernel_size
    patches = tf.image.extract_patches(inputs, sizes=[1, kh, kw, 1], strides=[1, 1, 1, 1], rates=[1, 1, 1, 1],
                                       padding=self.padding.upper())
    flat = tf.reshape(patches, [-1, patches.shape[-1]])  # Patch entries are ordered (row, column, channel).
    out = tf.matmul(flat, tf.reshape(kernel, [-1, self.filters]))
    return tf.reshape(out, tf.concat([tf.shape(patches)[:3], [self.filters]], 0))
