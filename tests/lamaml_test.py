"""La-MAML / sparse-La-MAML glance against a hand-derived float64 numpy implementation, plus memory and metrics."""
import numpy as np
import pytest
import tensorflow as tf

from wtl_tf import modulation
from wtl_tf.experiments.continual import ra_bti
from wtl_tf.learners.continual.base import Reservoir, padded_batch
from wtl_tf.learners.continual.lamaml import LaMAML
from wtl_tf.models.mlp import mlp

D, H, C, B, R = 6, 5, 3, 3, 2


# -- numpy reference: a one-hidden-layer ReLU MLP with weighted mean cross-entropy -----------------------

def np_loss_grad(p, x, y, w):
  w1, b1, w2, b2 = p
  pre = x @ w1 + b1
  h = np.maximum(pre, 0)
  z = h @ w2 + b2
  z = z - z.max(1, keepdims=True)
  prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  ce = -np.log(prob[np.arange(len(y)), y])
  denom = max(w.sum(), 1.0)
  dz = (prob - np.eye(C)[y]) * (w / denom)[:, None]
  dh = dz @ w2.T * (pre > 0)
  return (ce * w).sum() / denom, [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]


def clip(grads, c):
  norm = np.sqrt(sum((g ** 2).sum() for g in grads))
  return [g * min(1.0, c / norm) for g in grads]


def np_glance(theta, m, x, y, xw, bx, by, bw, s_fn, ds_fn, lr_m, c):
  """One La-MAML glance: S(m) from s_fn, dS/dm (straight-through where applicable) from ds_fn."""
  s = [s_fn(mi) for mi in m]
  grad_sum = [np.zeros_like(p) for p in theta]
  g_theta = [np.zeros_like(p) for p in theta]
  g_m = [np.zeros_like(p) for p in theta]
  losses = []
  for i in range(len(x)):
    fast = [p - si * gs for p, si, gs in zip(theta, s, grad_sum)]
    _, g = np_loss_grad(fast, x[i:i + 1], y[i:i + 1], xw[i:i + 1])
    grad_sum = [gs + gi for gs, gi in zip(grad_sum, g)]
    fast = [p - si * gs for p, si, gs in zip(theta, s, grad_sum)]
    loss, g_meta = np_loss_grad(fast, bx, by, bw)
    losses.append(xw[i] * loss)
    for k in range(len(theta)):
      g_theta[k] += xw[i] * g_meta[k]
      g_m[k] += xw[i] * g_meta[k] * (-grad_sum[k]) * ds_fn(m[k])
  n = xw.sum()
  g_theta = clip([g / n for g in g_theta], c)
  g_m = clip([g / n for g in g_m], c)
  m_new = [mi - lr_m * g for mi, g in zip(m, g_m)]
  theta_new = [p - s_fn(mi) * g for p, mi, g in zip(theta, m_new, g_theta)]
  return sum(losses) / n, theta_new, m_new


def _setup(mod, seed=0):
  rng = np.random.default_rng(seed)
  learner = LaMAML(mlp(input_size=D, hidden_sizes=(H,), num_classes=C, seed=seed), modulation=mod, glances=1,
                   memories=10, replay_size=R, batch_size=B, lr_m=0.7, clip=0.5, jit_compile=False)
  # Mixed-sign logits so that dead / masked coordinates and the ReLU kink are exercised.
  m = [rng.normal(0.05, 0.1, size=v.shape).astype(np.float32) for v in learner.mask_logits]
  for v, mi in zip(learner.mask_logits, m):
    v.assign(mi)
  x = rng.uniform(0, 1, (B, D)).astype(np.float32)
  y = rng.integers(0, C, B)
  bx = rng.uniform(0, 1, (B + R, D)).astype(np.float32)
  by = rng.integers(0, C, B + R)
  return learner, m, x, y, bx, by


@pytest.mark.parametrize('kind', ['la_maml', 'sparse', 'sparse_relu'])
@pytest.mark.parametrize('short_batch', [False, True])
def test_glance_matches_numpy(kind, short_batch):
  alpha0 = 0.3
  if kind == 'la_maml':
    mod = modulation.Relu(step_size=0.15)
    s_fn, ds_fn = (lambda m: np.maximum(m, 0)), (lambda m: (m > 0).astype(np.float64))
  elif kind == 'sparse':
    mod = modulation.ScaledBinaryMask(step_size=alpha0)
    s_fn, ds_fn = (lambda m: alpha0 * (m >= 0)), (lambda m: alpha0 * np.ones_like(m))
  else:
    mod = modulation.ReluStraightThrough(step_size=0.15)
    s_fn, ds_fn = (lambda m: np.maximum(m, 0)), (lambda m: np.ones_like(m))
  learner, m, x, y, bx, by = _setup(mod)
  xw = np.array([1, 1, 0] if short_batch else [1, 1, 1], np.float32)
  bw = np.ones(B + R, np.float32)
  if short_batch:
    bw[-1] = 0
  theta = [v.numpy().astype(np.float64) for v in learner.theta]
  loss = learner._glance(x, y, xw, bx, by, bw)  # pylint: disable=protected-access
  f64 = lambda a: np.asarray(a, np.float64)
  want_loss, want_theta, want_m = np_glance(theta, [f64(a) for a in m], f64(x), y, f64(xw), f64(bx), by, f64(bw),
                                            s_fn, ds_fn, 0.7, 0.5)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  for got, want in zip(learner.mask_logits, want_m):
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)
  for got, want in zip(learner.theta, want_theta):
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)
  # The update actually moved both (the test would pass vacuously otherwise).
  assert max(np.abs(g.numpy() - t).max() for g, t in zip(learner.theta, theta)) > 1e-3
  assert max(np.abs(g.numpy() - mi).max() for g, mi in zip(learner.mask_logits, m)) > 1e-4


def test_dead_learning_rates_stay_dead_but_masks_can_revive():
  """relu(alpha) <= 0 never recovers (zero gradient); the straight-through binary mask can unfreeze."""
  for mod, revives in ((modulation.Relu(step_size=0.15), False), (modulation.ScaledBinaryMask(step_size=0.3), True)):
    learner, _, x, y, bx, by = _setup(mod, seed=1)
    for v in learner.mask_logits:
      v.assign(tf.fill(v.shape, -1e-4))
    before = [v.numpy() for v in learner.theta]
    for _ in range(3):
      learner._glance(x, y, np.ones(B, np.float32), bx, by, np.ones(B + R, np.float32))  # pylint: disable=protected-access
    moved = any(np.any(v.numpy() != -1e-4) for v in learner.mask_logits)
    assert moved == revives
    if not revives:  # All rates dead: theta is frozen too.
      for v, b in zip(learner.theta, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_reservoir_keeps_every_sample_with_equal_probability():
  counts = np.zeros(100)
  for trial in range(400):
    mem = Reservoir(10, 1, np.random.default_rng(trial))
    mem.push(np.arange(100, dtype=np.float32)[:, None], np.arange(100))
    assert mem.size == 10 and mem.age == 100
    counts[mem.y[:mem.size]] += 1
  # Each of the 100 samples is kept with probability 10/100: 40 of 400 trials on average.
  assert abs(counts[:50].mean() - counts[50:].mean()) < 6
  assert 30 < counts.mean() * 1.0 < 50


def test_padded_batch_weights():
  x, y, w = padded_batch(np.ones((3, 2), np.float32), np.array([1, 2, 0]), 5)
  assert x.shape == (5, 2) and list(w) == [1, 1, 1, 0, 0] and list(y[3:]) == [0, 0]


def test_ra_bti_by_hand():
  r = np.array([[0.9, 0.1, 0.1], [0.8, 0.9, 0.2], [0.7, 0.8, 0.95]])
  ra, bti = ra_bti(r)
  assert ra == pytest.approx((0.7 + 0.8 + 0.95) / 3)
  assert bti == pytest.approx(((0.7 - 0.9) + (0.8 - 0.9) + 0.0) / 3)


def test_bad_settings_are_rejected():
  model = mlp(input_size=D, hidden_sizes=(H,), num_classes=C)
  with pytest.raises(ValueError, match='glances'):
    LaMAML(model, glances=0)
  with pytest.raises(ValueError, match='lr_m'):
    LaMAML(model, lr_m=-0.1)
  with pytest.raises(ValueError, match='step_size'):
    modulation.Relu(step_size=-0.1)
