"""Exact-math tests of the modulations: mask gradients against hand-derived numpy (docs/ALGORITHMS.md 1.4)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from wtl_tf import inner_loop
from wtl_tf import modulation as M
from wtl_tf import params

ALPHA, K = 0.1, 3

# name -> (modulation, numpy S(m), numpy dS/dm as the backward pass uses it, c)
VARIANTS = {
    'binary_reference': (M.BinaryMask(ALPHA), lambda m: 0.5 * (np.sign(m) + 1), lambda m: 0.5 + 0 * m, ALPHA),
    'binary_paper': (M.BinaryMask(ALPHA, convention='paper'), lambda m: (m >= 0) * 1.0,
                     lambda m: 1 + 0 * m, ALPHA),
    'relu_ste': (M.ReluStraightThrough(ALPHA), lambda m: np.maximum(m, 0), lambda m: 1 + 0 * m, 1.0),
    'relu_no_ste': (M.Relu(ALPHA), lambda m: np.maximum(m, 0), lambda m: (m > 0) * 1.0, 1.0),
    'exp': (M.Exp(ALPHA), np.exp, np.exp, 1.0),
    'linear': (M.Linear(ALPHA), lambda m: m, lambda m: 1 + 0 * m, 1.0),
}


def _masks(seed=1):
  rng = np.random.default_rng(seed)
  m = [rng.normal(size=(tiny.D, tiny.C)) * 0.3, rng.normal(size=(tiny.C,)) * 0.3]
  m[0][0, 0], m[1][0] = 0.2, -0.2  # both signs for sure
  return m


def _tf_outer(mod, theta, support, query, masks, num_steps=K):
  model, infos = tiny.softmax_model()
  theta_t, masks_t = tiny.to_tf(theta), [tf.Variable(m) for m in masks]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(theta_t)
    sizes = mod.step_sizes(masks_t, infos, dtype=tf.float64)
    fast = inner_loop.adapt(model, theta_t, [], sizes, *map(tf.constant, support), num_steps)
    loss = inner_loop.cross_entropy(query[1], inner_loop.forward(model, fast, [], tf.constant(query[0])))
  return ([f.numpy() for f in fast], [g.numpy() for g in tape.gradient(loss, theta_t)],
          [g.numpy() for g in tape.gradient(loss, masks_t)])


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_mask_gradient_matches_hand_derivation(name):
  mod, s_fn, ds_fn, c = VARIANTS[name]
  theta, support, query = tiny.task()
  masks = _masks()
  phi, grads = tiny.np_inner_loop(theta, support, [c * s_fn(m) for m in masks], K)
  _, g_out = tiny.np_loss_and_grad(phi, *query)
  expected_dm = [-c * go * sum(g[i] for g in grads) * ds_fn(m) for i, (go, m) in enumerate(zip(g_out, masks))]

  fast, d_theta, d_mask = _tf_outer(mod, theta, support, query, masks)
  for a, b in zip(fast, phi):
    np.testing.assert_allclose(a, b, atol=1e-10)
  for a, b in zip(d_mask, expected_dm):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert np.abs(b).max() > 1e-4  # the comparison is not vacuous
  for a, b in zip(d_theta, g_out):  # first order: theta gradient is the query gradient at phi_K
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_closed_masks_freeze_parameters_but_still_learn():
  mod = M.BinaryMask(ALPHA)
  theta, support, query = tiny.task()
  closed = [-np.abs(m) - 0.1 for m in _masks()]
  fast, d_theta, d_mask = _tf_outer(mod, theta, support, query, closed)
  for f, t in zip(fast, theta):
    np.testing.assert_array_equal(f, t)
  _, g_in = tiny.np_loss_and_grad(theta, *support)
  _, g_out = tiny.np_loss_and_grad(theta, *query)
  for dm, gi, go in zip(d_mask, g_in, g_out):  # STE: -alpha * g_out * K * g_in * 0.5
    np.testing.assert_allclose(dm, -ALPHA * go * K * gi * 0.5, atol=1e-10)
    assert np.all(np.abs(dm) > 0)


def test_open_masks_reproduce_fomaml_exactly():
  theta, support, query = tiny.task()
  open_ = [np.abs(m) + 0.1 for m in _masks()]
  for convention in ('reference', 'paper'):
    fast, d_theta, _ = _tf_outer(M.BinaryMask(ALPHA, convention=convention), theta, support, query, open_)
    fast_maml, d_theta_maml, _ = _tf_outer(M.Identity(ALPHA), theta, support, query, [])
    for a, b in zip(fast + d_theta, fast_maml + d_theta_maml):
      np.testing.assert_array_equal(a, b)


def test_value_at_exactly_zero():
  m = tf.constant([-1.0, 0.0, 2.0])
  np.testing.assert_array_equal(M.BinaryMask(0.1).modulate(m), [0, 0.5, 1])
  np.testing.assert_array_equal(M.BinaryMask(0.1, convention='paper').modulate(m), [0, 1, 1])
  with tf.GradientTape() as tape:
    tape.watch(m)
    s = M.BinaryMask(0.1).modulate(m)
  np.testing.assert_array_equal(tape.gradient(s, m), [0.5, 0.5, 0.5])


def _train_mask(mod, steps=40, lr=1.0):
  theta, support, _ = tiny.task()
  masks = [np.full((tiny.D, tiny.C), -0.05), np.full((tiny.C,), -0.05)]
  for _ in range(steps):  # query == support, so the eq.-5 update pushes every m upwards
    _, _, d_mask = _tf_outer(mod, theta, support, support, masks)
    masks = [m - lr * d for m, d in zip(masks, d_mask)]
  return masks


def test_relu_straight_through_recovers_but_plain_relu_dies():
  one_step = _train_mask(M.ReluStraightThrough(ALPHA), steps=1, lr=1e-3)
  assert all(np.all(m > -0.05) for m in one_step)  # every closed rate moves up (g_out . g_in = g^2 > 0)
  recovered = np.concatenate([m.ravel() for m in _train_mask(M.ReluStraightThrough(ALPHA))])
  assert np.mean(recovered > 0) > 0.8, recovered
  dead = _train_mask(M.Relu(ALPHA))
  assert all(np.all(m == -0.05) for m in dead)


def test_scaled_binary_mask_is_alpha0_step():
  mod = M.ScaledBinaryMask(step_size=0.15)
  model, infos = tiny.softmax_model()
  sizes = mod.step_sizes([tf.constant(np.array([[1., -1., 0.]] * tiny.D)), tf.constant(np.array([-1., 1., 0.]))],
                         infos, dtype=tf.float64)
  np.testing.assert_array_equal(sizes[1], [0, 0.15, 0.15])
  assert mod.init_mask_params(infos, 0)[0].min() > 0  # 0% initial sparsity


def test_sparsity_exact_on_hand_built_masks():
  s = M.sparsity({'a': tf.constant([[1.0, 0.0], [0.5, 0.0]]), 'b': tf.constant([0.0, 0.0, 0.0, 2.0, 1.0, 1.0])})
  assert float(s['a']) == 0.5
  assert float(s['b']) == 0.5
  assert abs(float(s['overall']) - 5 / 10) < 1e-12
  s = M.sparsity({'a': tf.zeros([3]), 'b': tf.ones([7])})
  assert abs(float(s['overall']) - 0.3) < 1e-12 and float(s['a']) == 1.0 and float(s['b']) == 0.0
  assert float(M.sparsity({})['overall']) == 0.0


def test_group_sparsity_counts_m_equal_zero_as_active_for_reference_masks():
  model, infos = tiny.softmax_model()
  kernel = np.ones((tiny.D, tiny.C))
  kernel[0] = -1  # 3 of 15 closed
  kernel[1, 0] = 0  # 0.5: active
  stats = M.group_sparsity(M.BinaryMask(0.1), [tf.constant(kernel), tf.constant([-1.0, -2.0, 3.0])], infos)
  kname, bname = infos[0].name, infos[1].name
  assert abs(float(stats[kname]) - 3 / 15) < 1e-12
  assert abs(float(stats[bname]) - 2 / 3) < 1e-12
  assert abs(float(stats['overall']) - 5 / 18) < 1e-12
  relu_stats = M.group_sparsity(M.Relu(0.1), [tf.constant(kernel), tf.constant([0.0, -2.0, 3.0])], infos)
  assert abs(float(relu_stats[kname]) - 4 / 15) < 1e-12  # m <= 0 is closed for ReLU
  assert abs(float(relu_stats[bname]) - 2 / 3) < 1e-12


def _cnn():
  model = keras.Sequential([
      keras.Input((8, 8, 3)),
      keras.layers.Conv2D(4, 3, padding='same'), keras.layers.BatchNormalization(epsilon=1e-5),
      keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(5)])
  return model, params.describe(model)


def test_mask_init_rules():
  rng = np.random.default_rng(0)
  kernel = M.MaskInit(kaiming=True)((3, 3, 64, 64), rng)
  bound = math.sqrt(6 / (3 * 3 * 64))
  assert abs(kernel.mean()) < 1e-12
  assert kernel.max() <= 2 * bound and kernel.max() > 0.9 * bound  # after the mean shift
  bias = M.MaskInit(kaiming=True, init_shift=0.3)((64,), rng)
  assert abs(bias.mean() - 0.3) < 1e-12 and np.ptp(bias) <= 1.0 and np.ptp(bias) > 0.8
  np.testing.assert_array_equal(M.MaskInit(rule='constant', value=0.05)((2, 2), rng), 0.05)
  lr = M.MaskInit(rule='meta_sgd_uniform')((1000,), rng)
  assert lr.min() >= 0.005 and lr.max() <= 0.1
  no_kaiming = M.MaskInit(kaiming=False)((3, 3, 64, 64), rng)
  assert np.ptp(no_kaiming) > 0.9
  with pytest.raises(ValueError, match='rule'):
    M.MaskInit(rule='xavier')
  # Initial sparsity of a binary mask with shift 0 is about one half; a positive shift lowers it.
  model, infos = _cnn()
  masks = M.BinaryMask(0.1).init_mask_params(infos, seed=3)
  overall = float(M.group_sparsity(M.BinaryMask(0.1), [tf.constant(m) for m in masks], infos)['overall'])
  assert 0.4 < overall < 0.6
  shifted = M.BinaryMask(0.1, M.MaskInit(init_shift=0.2)).init_mask_params(infos, seed=3)
  assert float(M.group_sparsity(M.BinaryMask(0.1), [tf.constant(m) for m in shifted], infos)['overall']) < overall


def test_fixed_subsets_anil_and_boil():
  model, infos = _cnn()
  anil = M.FixedSubset('head', 0.1).step_sizes([], infos)
  boil = M.FixedSubset('body', 0.1).step_sizes([], infos)
  assert [s is not None for s in anil] == [i.is_head for i in infos]
  assert [s is not None for s in boil] == [not i.is_head for i in infos]
  assert sum(i.is_head for i in infos) == 2 and sum(i.is_bn for i in infos) == 2


def test_noisy_binary_mask_generates_kernel_masks_per_task():
  model, infos = _cnn()
  mod = M.NoisyBinaryMask(0.1, feature_size=16)
  masks = [tf.Variable(m) for m in mod.init_mask_params(infos, seed=0)]
  assert len(masks) == len(mod.mask_names(infos))
  n_kernel = 3 * 3 * 3 * 4
  assert masks[2].shape == (16, n_kernel)
  a = mod.modulations(masks, infos, noise_seed=tf.constant([1, 2]))
  b = mod.modulations(masks, infos, noise_seed=tf.constant([1, 3]))
  kernel_idx = [i for i, info in enumerate(infos) if info.is_conv_kernel][0]
  bias_idx = [i for i, info in enumerate(infos) if info.role == 'bias' and info.layer_type == 'Conv2D'][0]
  assert a[kernel_idx].shape == infos[kernel_idx].shape
  assert not np.array_equal(a[kernel_idx], b[kernel_idx])  # fresh noise per task
  assert a[bias_idx] is None  # reference quirk: conv biases unmasked...
  sizes = mod.step_sizes(masks, infos, noise_seed=tf.constant([1, 2]))
  assert float(sizes[bias_idx]) == pytest.approx(0.1)  # ...but still adapted with plain alpha
  assert infos[bias_idx].name not in M.group_sparsity(mod, masks, infos, tf.constant([1, 2]))
  with tf.GradientTape() as tape:
    out = tf.add_n([tf.reduce_sum(s) for s in mod.modulations(masks, infos, tf.constant([1, 2]))
                    if s is not None])
  grads = tape.gradient(out, masks)
  assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in grads)  # STE reaches W, b, mu, sigma
  cheap = M.NoisyBinaryMask(0.1, feature_size=16, hidden_size=4)
  assert sum(m.size for m in cheap.init_mask_params(infos, 0)[2:4]) == 16 * 4 + 4 * n_kernel
