"""Few-shot backbones: parameter counts and shapes, PyTorch-style inits, the fused BatchNorm, -inf pooling."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from wtl_tf import inner_loop
from wtl_tf import params
from wtl_tf.models import conv4 as conv4_lib
from wtl_tf.models import layers
from wtl_tf.models import resnet12 as resnet12_lib


def conv4_count(channels, classes, hidden=64, feature=None):
  """docs/ALGORITHMS.md 2.1, counted by hand: 4 x (conv kernel + bias + BN gamma/beta) + head."""
  count, cin = 0, channels
  for _ in range(4):
    count += 9 * cin * hidden + hidden + 2 * hidden
    cin = hidden
  return count + feature * classes + classes


def resnet12_count(channels, classes, widths):
  count, cin = 0, channels
  for w in widths:
    count += 9 * cin * w + 2 * 9 * w * w + cin * w + 4 * 2 * w  # 3 convs, 1x1 shortcut, 4 BNs.
    cin = w
  return count + cin * classes + classes


def feature_shape(model, x):
  features = keras.Model(model.inputs, model.get_layer('head').input)
  return features(x, training=True).shape


@pytest.mark.parametrize('shape,feature', [((84, 84, 3), 1600), ((28, 28, 1), 64)])
def test_conv4_counts_and_shapes(shape, feature):
  model = conv4_lib.conv4(shape, num_classes=5)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == conv4_count(shape[-1], 5, feature=feature)
  infos = params.describe(model)
  assert len(infos) == 18
  assert [i.name for i in infos[:4]] == ['conv1/kernel', 'conv1/bias', 'bn1/gamma', 'bn1/beta']
  assert infos[-1].name == 'head/bias' and infos[-1].is_head and infos[-2].is_head
  x = tf.zeros((3,) + shape)
  assert model(x, training=True).shape == (3, 5)
  assert feature_shape(model, x) == (3, feature)
  if shape == (84, 84, 3):
    assert conv4_count(3, 5, feature=1600) == 121093  # "about 121k" in the spec.


def test_conv4_pytorch_init_and_bn_settings():
  model = conv4_lib.conv4((84, 84, 3), num_classes=5, seed=3)
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      bound = 1 / math.sqrt(np.prod(layer.kernel.shape[:3]))
      for v in (layer.kernel.numpy(), layer.bias.numpy()):
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound  # Uniform, filling its range.
    if isinstance(layer, keras.layers.BatchNormalization):
      assert layer.epsilon == 1e-5
      np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
      np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
  head = model.get_layer('head')
  assert np.abs(head.kernel.numpy()).max() <= 1 / 40 and np.abs(head.bias.numpy()).max() <= 1 / 40
  # Seeded: the same seed gives the same weights, another seed different ones.
  again = conv4_lib.conv4((84, 84, 3), num_classes=5, seed=3)
  other = conv4_lib.conv4((84, 84, 3), num_classes=5, seed=4)
  np.testing.assert_array_equal(model.trainable_variables[0].numpy(), again.trainable_variables[0].numpy())
  assert not np.array_equal(model.trainable_variables[0].numpy(), other.trainable_variables[0].numpy())


def test_osaka_convnet_is_conv4_on_omniglot_with_ten_classes():
  model = conv4_lib.conv4((28, 28, 1), num_classes=10)
  assert model.output_shape == (None, 10)
  assert model.get_layer('head').kernel.shape == (64, 10)


@pytest.mark.parametrize('big,widths', [(False, (64, 128, 256, 512)), (True, (64, 160, 320, 640))])
@pytest.mark.parametrize('shape', [(84, 84, 3), (28, 28, 1)])
def test_resnet12_counts_and_shapes(big, widths, shape):
  model = resnet12_lib.resnet12(shape, num_classes=5, big=big)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == resnet12_count(shape[-1], 5, widths)
  infos = params.describe(model)
  assert sum(i.is_conv_kernel for i in infos) == 16  # 12 main-path convs and 4 shortcuts.
  assert not any(i.role == 'bias' and not i.is_head for i in infos)  # Only the head has a bias.
  x = tf.zeros((2,) + shape)
  assert model(x, training=True).shape == (2, 5)
  spatial = [model.get_layer(f'stage{s}_{"pool" if s < 4 else "out"}').output.shape[1] for s in (1, 2, 3, 4)]
  assert spatial == ([42, 21, 11, 11] if shape[0] == 84 else [14, 7, 4, 4])


def test_resnet12_init_and_leaky_slope():
  model = resnet12_lib.resnet12((84, 84, 3), num_classes=5)
  act = model.get_layer('stage1_act1')
  assert act.negative_slope == pytest.approx(0.01)
  conv = model.get_layer('stage2_conv2').kernel.numpy()
  limit = math.sqrt(6 / (9 * 128 + 9 * 128))  # Glorot uniform.
  assert np.abs(conv).max() <= limit and np.abs(conv).max() > 0.9 * limit
  np.testing.assert_array_equal(model.get_layer('head').bias.numpy(), 0.0)
  assert all(layer.epsilon == 1e-5 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_stage3_pool_pads_with_minus_infinity_on_every_side():
  pool = layers.NegInfPaddedMaxPool(2, 2, padding=1)
  x = -np.arange(1, 26, dtype=np.float32).reshape(1, 5, 5, 1)  # All negative: zero padding would win.
  out = pool(tf.constant(x)).numpy()[0, :, :, 0]
  assert out.shape == (3, 3)
  # Windows start at -1: the first row/column of outputs see only x[0] / x[:, 0].
  np.testing.assert_array_equal(out[0], [x[0, 0, 0, 0], max(x[0, 0, 1:3, 0]), max(x[0, 0, 3:5, 0])])
  assert out[0, 0] == -1.0


def _bn_model(fused, dtype='float32'):
  return keras.Sequential([keras.Input((6, 6, 2), dtype=dtype), keras.layers.Conv2D(3, 3, padding='same', dtype=dtype),
                           layers.BatchNorm(fused=fused, dtype=dtype), keras.layers.ReLU(dtype=dtype),
                           keras.layers.Flatten(dtype=dtype), keras.layers.Dense(4, dtype=dtype)])


def _meta_grads(model, theta, task, first_order):
  xs, ys, xq, yq = task
  dtype = theta[0].dtype
  nt = [v.value for v in model.non_trainable_variables]
  with tf.GradientTape() as tape:
    tape.watch(theta)
    fast = inner_loop.adapt(model, theta, nt, [tf.constant(0.3, dtype)] * len(theta), tf.cast(xs, dtype), ys, 2,
                            first_order=first_order)
    loss = inner_loop.cross_entropy(yq, inner_loop.forward(model, fast, nt, tf.cast(xq, dtype)))
  return loss.numpy(), [g.numpy() for g in tape.gradient(loss, theta)]


def _rel(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def test_fused_batchnorm_values_gradients_statistics_and_second_order_switch():
  fused, plain = _bn_model(True), _bn_model(False)
  plain.set_weights(fused.get_weights())
  rng = np.random.default_rng(0)
  theta = [tf.constant(v.numpy() + rng.normal(size=v.shape).astype(np.float32) * 0.1)
           for v in fused.trainable_variables]
  task = (tf.constant(rng.normal(size=(5, 6, 6, 2)), tf.float32), tf.constant(rng.integers(0, 4, 5)),
          tf.constant(rng.normal(size=(7, 6, 6, 2)), tf.float32), tf.constant(rng.integers(0, 4, 7)))
  loss_f, grad_f = _meta_grads(fused, theta, task, first_order=True)
  loss_p, grad_p = _meta_grads(plain, theta, task, first_order=True)
  np.testing.assert_allclose(loss_f, loss_p, rtol=1e-5)
  for i in (0, 2, 3, 4, 5):  # The conv bias (1) has an exactly-zero gradient before BN: noise only.
    assert _rel(grad_f[i], grad_p[i]) < 1e-5
  # Second order: float64 plain BN is the reference; TF's second derivative of the fused kernel is not exact.
  model64 = _bn_model(False, 'float64')
  _, truth = _meta_grads(model64, [tf.cast(t, tf.float64) for t in theta], task, first_order=False)
  _, second_fused = _meta_grads(fused, theta, task, first_order=False)
  assert layers.set_fused_batchnorm(fused, False) == 1
  _, second = _meta_grads(fused, theta, task, first_order=False)
  switched_errors = [_rel(second[i], truth[i]) for i in (0, 2, 3, 4, 5)]
  assert max(switched_errors) < 1e-5
  # The fused error's size depends on the CPU's kernels (4e-4 on one machine, 9e-5 on another), so the canary is
  # relative: the fused kernel is far worse than the switched path. If this starts failing, TF fixed it: drop the switch.
  assert _rel(second_fused[0], truth[0]) > 20 * max(switched_errors)
  # Moving statistics follow Keras' convention on both paths.
  layers.set_fused_batchnorm(fused, True)
  fused(task[0], training=True)
  plain(task[0], training=True)
  for a, b in zip(fused.non_trainable_variables, plain.non_trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('channels,padding', [(1, 'same'), (3, 'same'), (2, 'valid')])
def test_conv_by_patches_equals_conv2d_values_and_gradients(channels, padding):
  """Conv2DByPatches is Conv2D computed another way: output and every gradient agree in float64."""
  rng = np.random.default_rng(channels)
  x = tf.constant(rng.normal(size=(3, 9, 7, channels)))
  standard = keras.layers.Conv2D(5, 3, padding=padding, dtype='float64')
  patches = layers.Conv2DByPatches(5, 3, padding=padding, dtype='float64')
  standard.build(x.shape)
  patches.build(x.shape)
  kernel = tf.constant(rng.normal(size=standard.kernel.shape))
  bias = tf.constant(rng.normal(size=standard.bias.shape))
  weights = tf.constant(rng.normal(size=(3, 9 if padding == 'same' else 7, 7 if padding == 'same' else 5, 5)))
  outs = []
  for layer in (standard, patches):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel, bias])
      y, _ = layer.stateless_call([kernel, bias], [], x)
      loss = tf.reduce_sum(weights * y)  # A generic linear functional of the output.
    outs.append([y] + tape.gradient(loss, [x, kernel, bias]))
  for a, b in zip(*outs):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
  # A stride-2 layer falls back to the standard kernel (patches assume stride 1).
  strided = layers.Conv2DByPatches(4, 3, strides=2, padding='same', dtype='float64')
  reference = keras.layers.Conv2D(4, 3, strides=2, padding='same', dtype='float64')
  strided.build(x.shape)
  reference.build(x.shape)
  reference.set_weights(strided.get_weights())
  np.testing.assert_allclose(strided(x).numpy(), reference(x).numpy(), rtol=1e-12, atol=1e-12)


def test_osaka_convnet_first_conv_by_patches_same_function():
  from wtl_tf.experiments import online  # pylint: disable=g-import-not-at-top
  fast, plain = online.osaka_convnet(seed=3), online.osaka_convnet(seed=3, first_conv_by_patches=False)
  assert isinstance(fast.get_layer('conv1'), layers.Conv2DByPatches)
  assert type(plain.get_layer('conv1')) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
  assert [v.path for v in fast.weights] == [v.path for v in plain.weights]
  for a, b in zip(fast.weights, plain.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  x = tf.constant(np.random.default_rng(0).uniform(size=(6, 28, 28, 1)), tf.float32)
  np.testing.assert_allclose(fast(x, training=True).numpy(), plain(x, training=True).numpy(), rtol=1e-4, atol=1e-5)
