"""Tests of the functional inner loop: second order vs finite differences, compilation, CNN/MLP, BN."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from wtl_tf import inner_loop
from wtl_tf import modulation as M
from wtl_tf import params


def _tanh_mlp():
  model = keras.Sequential([keras.Input((tiny.D,), dtype='float64'),
                            keras.layers.Dense(4, activation='tanh', dtype='float64'),
                            keras.layers.Dense(tiny.C, dtype='float64')])
  return model, params.describe(model)


def _meta_loss(model, theta, support, query, first_order, num_steps=3, alpha=0.3):
  sizes = [tf.constant(alpha, tf.float64)] * len(theta)
  fast = inner_loop.adapt(model, theta, [], sizes, *support, num_steps, first_order=first_order)
  return inner_loop.cross_entropy(query[1], inner_loop.forward(model, fast, [], query[0]))


def test_second_order_matches_central_finite_differences():
  model, _ = _tanh_mlp()
  _, support, query = tiny.task(3)
  support, query = tuple(map(tf.constant, support)), tuple(map(tf.constant, query))
  rng = np.random.default_rng(0)
  theta = [rng.normal(size=v.shape) * 0.7 for v in model.trainable_variables]
  theta_t = tiny.to_tf(theta)
  with tf.GradientTape() as tape:
    tape.watch(theta_t)
    loss = _meta_loss(model, theta_t, support, query, first_order=False)
  analytic = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, theta_t)])
  with tf.GradientTape() as tape:
    tape.watch(theta_t)
    loss = _meta_loss(model, theta_t, support, query, first_order=True)
  first_order = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, theta_t)])

  flat = np.concatenate([t.ravel() for t in theta])
  sizes = [t.size for t in theta]

  def loss_at(vec):
    parts = np.split(vec, np.cumsum(sizes)[:-1])
    return float(_meta_loss(model, [tf.constant(p.reshape(t.shape)) for p, t in zip(parts, theta)],
                            support, query, first_order=False))

  eps = 1e-5
  numeric = np.array([(loss_at(flat + eps * e) - loss_at(flat - eps * e)) / (2 * eps)
                      for e in np.eye(flat.size)])
  rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
  assert rel < 1e-5, rel
  # The first-order gradient is a different quantity here, so this test separates the two modes.
  assert np.linalg.norm(first_order - numeric) / np.linalg.norm(numeric) > 1e-2


def _cnn(width=4):
  model = keras.Sequential([
      keras.Input((8, 8, 3)),
      keras.layers.Conv2D(width, 3, padding='same'), keras.layers.BatchNormalization(epsilon=1e-5),
      keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(5)])
  return model, params.describe(model)


def _mlp():
  model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                            keras.layers.Dense(16, activation='relu'), keras.layers.Dense(5)])
  return model, params.describe(model)


def _episode(seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(5, 8, 8, 3))
  sy, qy = np.repeat(np.arange(5), 2), np.repeat(np.arange(5), 3)
  sx = centers[sy] + 0.3 * rng.normal(size=(10, 8, 8, 3))
  qx = centers[qy] + 0.3 * rng.normal(size=(15, 8, 8, 3))
  return tuple(tf.constant(a, dtype) for a, dtype in
               ((sx, tf.float32), (sy, tf.int32), (qx, tf.float32), (qy, tf.int32)))


def _outer(model, infos, mod, loop, masks, episode, noise_seed=None):
  """Query loss at phi_K and its gradients for theta and the masks."""
  theta = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]
  sx, sy, qx, qy = episode
  with tf.GradientTape() as tape:
    tape.watch(theta)
    sizes = mod.step_sizes(masks, infos, noise_seed)
    if not loop.adapt_bn:  # What the learner core does with adapt_bn=False (wtl_tf/learners/core.py).
      sizes = [None if info.is_bn else s for info, s in zip(infos, sizes)]
    fast = loop.adapt(model, theta, non_trainable, sizes, sx, sy)
    loss = inner_loop.cross_entropy(qy, inner_loop.forward(model, fast, non_trainable, qx))
  g_theta, g_masks = tape.gradient(loss, (theta, list(masks)))
  return loss, g_theta, g_masks, fast


@pytest.mark.parametrize('build', [_cnn, _mlp])
def test_adaptation_learns_and_first_order_gradient_is_query_gradient(build):
  model, infos = build()
  mod, loop = M.BinaryMask(0.5), inner_loop.InnerLoop(num_steps=5)
  masks = [tf.Variable(tf.cast(m, tf.float32)) for m in mod.init_mask_params(infos, 0)]
  episode = _episode(0)
  theta = [v.value for v in model.trainable_variables]
  support_before = float(inner_loop.cross_entropy(episode[1], inner_loop.forward(model, theta, [v.value for v in model.non_trainable_variables], episode[0])))
  loss, g_theta, g_masks, fast = _outer(model, infos, mod, loop, masks, episode)
  nt = [v.value for v in model.non_trainable_variables]
  support_after = float(inner_loop.cross_entropy(episode[1], inner_loop.forward(model, fast, nt, episode[0])))
  assert support_after < support_before - 0.1
  with tf.GradientTape() as tape:
    tape.watch(fast)
    q = inner_loop.cross_entropy(episode[3], inner_loop.forward(model, fast, nt, episode[2]))
  for a, b in zip(g_theta, tape.gradient(q, fast)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in g_masks)


def test_batchnorm_statistics_untouched_and_bn_freeze_switch():
  model, infos = _cnn()
  before = [v.numpy().copy() for v in model.variables]
  mod = M.Identity(0.5)
  _, _, _, fast = _outer(model, infos, mod, inner_loop.InnerLoop(num_steps=2), [], _episode(1))
  _, _, _, fast_frozen = _outer(model, infos, mod, inner_loop.InnerLoop(num_steps=2, adapt_bn=False), [],
                                _episode(1))
  for v, b in zip(model.variables, before):
    np.testing.assert_array_equal(v.numpy(), b)  # nothing is assigned on the inner-loop path
  for info, p, pf, t in zip(infos, fast, fast_frozen, model.trainable_variables):
    assert not np.array_equal(p, t.numpy())
    if info.is_bn:
      np.testing.assert_array_equal(pf, t.numpy())
    else:
      assert not np.array_equal(pf, t.numpy())


def test_eager_and_compiled_agree_and_trace_once():
  model, infos = _cnn()
  mod, loop = M.BinaryMask(0.3), inner_loop.InnerLoop(num_steps=4)
  masks = [tf.Variable(tf.cast(m, tf.float32)) for m in mod.init_mask_params(infos, 0)]

  def step(sx, sy, qx, qy):
    loss, g_theta, g_masks, _ = _outer(model, infos, mod, loop, masks, (sx, sy, qx, qy))
    return loss, g_theta, g_masks

  graph = tf.function(step)
  xla = tf.function(step, jit_compile=True)
  for seed in range(3):
    episode = _episode(seed)
    eager_out = step(*episode)
    for compiled in (graph, xla):
      out = compiled(*episode)
      for a, b in zip(tf.nest.flatten(eager_out), tf.nest.flatten(out)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  assert graph.experimental_get_tracing_count() == 1
  assert xla.experimental_get_tracing_count() == 1


def test_second_order_runs_compiled_on_cnn():
  model, infos = _cnn()
  loop = inner_loop.InnerLoop(num_steps=2, first_order=False)

  @tf.function
  def step(*episode):
    return _outer(model, infos, M.Identity(0.3), loop, [], episode)[1]

  grads_so = step(*_episode(0))
  grads_fo = _outer(model, infos, M.Identity(0.3), inner_loop.InnerLoop(num_steps=2), [], _episode(0))[1]
  assert all(np.all(np.isfinite(g)) for g in grads_so)
  assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(grads_so, grads_fo)) > 1e-5


def test_zero_steps_and_bad_input():
  model, infos = _mlp()
  theta = [v.value for v in model.trainable_variables]
  out = inner_loop.adapt(model, theta, [], [tf.constant(0.1)] * len(theta), *_episode(0)[:2], 0)
  assert all(a is b or np.array_equal(a, b) for a, b in zip(out, theta))
  with pytest.raises(ValueError, match='step sizes'):
    inner_loop.adapt(model, theta, [], [tf.constant(0.1)], *_episode(0)[:2], 2)
  with pytest.raises(ValueError, match='num_steps'):
    inner_loop.InnerLoop(num_steps=-1)
  with pytest.raises(ValueError, match='bn_mode'):
    inner_loop.InnerLoop(bn_mode='running')


@pytest.mark.parametrize('first_order', [True, False])
def test_unrolled_loop_equals_while_loop(first_order):
  """InnerLoop.unroll writes the K steps out: phi_K and the meta-gradient must not change (float64)."""
  model, _ = _tanh_mlp()
  _, support, query = tiny.task(5)
  support, query = tuple(map(tf.constant, support)), tuple(map(tf.constant, query))
  rng = np.random.default_rng(1)
  theta = tiny.to_tf([rng.normal(size=v.shape) * 0.7 for v in model.trainable_variables])
  results = []
  for unroll in (False, True):
    with tf.GradientTape() as tape:
      tape.watch(theta)
      sizes = [tf.constant(0.3, tf.float64)] * len(theta)
      fast = inner_loop.adapt(model, theta, [], sizes, *support, 4, first_order=first_order, unroll=unroll)
      loss = inner_loop.cross_entropy(query[1], inner_loop.forward(model, fast, [], query[0]))
    results.append([t.numpy() for t in fast] + [g.numpy() for g in tape.gradient(loss, theta)])
  moved = max(np.abs(a - t.numpy()).max() for a, t in zip(results[0], theta))
  assert moved > 1e-2  # The loop did adapt, so agreement below is not trivial.
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
