"""C-MAML on the stream (docs/ALGORITHMS.md 5.3, 5.5): every piece against hand-derived numpy in float64, and tracing.

The reference is a direct numpy transcription of OSAKA's `observe_accumulate` on a softmax-regression model
(tests/tiny.py): accuracy before adapting, prolonged adaptation, the loss-jump boundary rule, the buffer, the
meta-update on a boundary or a full buffer (support step i paired with query step h + i), the update modulation
w = 1 - exp(-lambda L), the dropped boundary batch and re-adaptation from theta. With plain SGD (lr 1) as the outer
optimizer, theta and m after the stream are theta - sum of w * (mean task gradient), so every gradient is checked.
"""
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiny
from wtl_tf import inner_loop, modulation
from wtl_tf.learners.online import cmaml
from wtl_tf.learners.online.cmaml import ContinualMAML
from wtl_tf.learners.online.baselines import OnlineAdam
from wtl_tf.models.conv4 import conv4


# -- the rules ------------------------------------------------------------------------------------------------

def test_boundary_rule():
  assert cmaml.boundary_detected(3.0, 0.5, 2.5)          # 0.5 + 2.5 <= 3.0
  assert not cmaml.boundary_detected(2.9, 0.5, 2.5)
  assert cmaml.boundary_detected(3.0, 1.0, 2.0)          # Equality counts as a boundary.
  for gamma in (None, 0.0, -1.0, 100.0, 1000.0):        # Detection is on only for 0 < gamma < 100 (OSAKA).
    assert not cmaml.boundary_detected(50.0, 0.0, gamma)


def test_buffer_pairs_support_i_with_query_h_plus_i():
  assert cmaml.buffer_pairs(1) == [(0, 0)]               # A single buffered step is used twice.
  assert cmaml.buffer_pairs(2) == [(0, 1)]
  assert cmaml.buffer_pairs(3) == [(0, 2)]               # h = 2; odd n: support step 1 is unused.
  assert cmaml.buffer_pairs(4) == [(0, 2), (1, 3)]
  assert cmaml.buffer_pairs(5) == [(0, 3), (1, 4)]
  pairs = cmaml.buffer_pairs(101)                        # A full OSAKA buffer: 2 * 50 + 1 steps.
  assert len(pairs) == 50 and pairs[0] == (0, 51) and pairs[-1] == (49, 100)


def test_update_weight():
  assert cmaml.update_weight(2.0, 0.25) == pytest.approx(1 - np.exp(-0.5))
  assert cmaml.update_weight(0.0, 0.25) == 0.0 and cmaml.update_weight(7.0, None) == 1.0


# -- a numpy transcription of observe_accumulate ------------------------------------------------------------

KINDS = {
    'c_maml': lambda: modulation.PerTensorStepSize(step_size=0.4),
    'sparse_c_maml': lambda: modulation.ScaledBinaryMask(step_size=0.4),
    'sparse_relu_c_maml': lambda: modulation.ReluStraightThrough(step_size=0.4),
}


def np_sizes(kind, masks, alpha0=0.4):
  if kind == 'c_maml':
    return [m for m in masks]
  if kind == 'sparse_c_maml':
    return [alpha0 * (m >= 0) for m in masks]
  return [np.maximum(m, 0.0) for m in masks]


def np_mask_grad(kind, g_out, grad_sum, alpha0=0.4):
  """dL/dm for phi_K = theta - S(m) * sum_k g_k with straight-through S' (docs/ALGORITHMS.md 1.4)."""
  if kind == 'c_maml':
    return [-np.sum(go * gs) for go, gs in zip(g_out, grad_sum)]   # One scalar per tensor.
  scale = alpha0 if kind == 'sparse_c_maml' else 1.0
  return [-scale * go * gs for go, gs in zip(g_out, grad_sum)]


def np_accuracy(theta, x, y):
  return float(np.mean(np.argmax(x @ theta[0] + theta[1], axis=1) == y))


class NumpyCMAML:
  """docs/ALGORITHMS.md 5.3 line by line, outer optimizer SGD(lr)."""

  def __init__(self, kind, theta, masks, num_steps, gamma, update_lambda, buffer_limit, lr=1.0):
    self.kind, self.theta, self.masks = kind, [t.copy() for t in theta], [m.copy() for m in masks]
    self.k, self.gamma, self.lam, self.limit, self.lr = num_steps, gamma, update_lambda, buffer_limit, lr
    self.phi, self.buffer, self.last_tbd, self.started = None, [], False, False
    self.updates = []

  def adapt(self, start, batch):
    return tiny.np_inner_loop(start, batch, np_sizes(self.kind, self.masks), self.k)

  def meta_update(self):
    pairs = cmaml.buffer_pairs(len(self.buffer))
    loss, g_theta, g_m = 0.0, [np.zeros_like(t) for t in self.theta], [np.zeros_like(m) for m in self.masks]
    for i, q in pairs:
      phi, grads = self.adapt(self.theta, self.buffer[i])
      task_loss, g_out = tiny.np_loss_and_grad(phi, *self.buffer[q])
      loss += task_loss / len(pairs)
      g_theta = [a + g / len(pairs) for a, g in zip(g_theta, g_out)]
      g_m = [a + g / len(pairs) for a, g in
             zip(g_m, np_mask_grad(self.kind, g_out, [sum(g[j] for g in grads) for j in range(2)]))]
    w = 1.0 - np.exp(-self.lam * loss)
    self.theta = [t - self.lr * w * g for t, g in zip(self.theta, g_theta)]
    self.masks = [m - self.lr * w * g for m, g in zip(self.masks, g_m)]
    self.updates.append((len(self.buffer), loss, w))

  def observe(self, x, y):
    if not self.started:
      self.phi, _ = self.adapt(self.theta, (x, y))
      self.buffer, self.started = [(x, y)], True
      return {'accuracy': 0.0, 'tbd': False, 'meta_update': False}
    loss_before, _ = tiny.np_loss_and_grad(self.phi, x, y)
    acc = np_accuracy(self.phi, x, y)
    self.phi, _ = self.adapt(self.theta if self.last_tbd else self.phi, (x, y))
    loss_after, _ = tiny.np_loss_and_grad(self.phi, x, y)
    tbd = 0 < self.gamma < 100 and loss_after + self.gamma <= loss_before
    update = (tbd and self.buffer) or len(self.buffer) > self.limit
    if update:
      self.meta_update()
      self.buffer = []
    else:
      self.buffer.append((x, y))
    self.last_tbd = tbd
    return {'accuracy': acc, 'loss': loss_before, 'tbd': bool(tbd), 'meta_update': bool(update)}


def tiny_stream(seed=0):
  """Steps of 9 samples from a few linear 'tasks' (one teacher each), switching now and then."""
  rng = np.random.default_rng(seed)
  teachers = [rng.normal(size=(tiny.D, tiny.C)) * 3 for _ in range(3)]
  schedule = [0] * 6 + [1] * 4 + [2] * 7 + [0] * 3 + [1] * 6
  steps = []
  for task in schedule:
    x = rng.normal(size=(tiny.N, tiny.D))
    steps.append((x, np.argmax(x @ teachers[task], axis=1)))
  return steps


def make_tiny_learner(kind, masks, gamma, update_lambda, buffer_limit, num_steps=3):
  model, _ = tiny.softmax_model()
  learner = ContinualMAML(lambda: model, modulation=KINDS[kind](),
                          inner_loop=inner_loop.InnerLoop(num_steps=num_steps, first_order=True, adapt_bn=False),
                          optimizer=lambda: keras.optimizers.SGD(learning_rate=1.0), gamma=gamma,
                          update_lambda=update_lambda, buffer_limit=buffer_limit, images_per_step=tiny.N,
                          image_shape=(tiny.D,), dtype='float64', name=kind)
  for v, m in zip(learner.mask_logits, masks):
    v.assign(m)
  return learner


def initial_masks(kind, rng):
  if kind == 'c_maml':
    return [np.float64(0.4), np.float64(0.3)]
  if kind == 'sparse_c_maml':  # Both signs: frozen and active coordinates.
    return [rng.choice([-1.0, 1.0], size=(tiny.D, tiny.C)) * rng.uniform(0.1, 1.0, (tiny.D, tiny.C)),
            np.array([0.5, -0.2, 0.3])]
  return [rng.uniform(-0.2, 0.6, (tiny.D, tiny.C)), np.array([0.4, -0.1, 0.2])]


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_stream_matches_numpy_transcription(kind):
  rng = np.random.default_rng(1)
  theta, _, _ = tiny.task(seed=2)
  masks = initial_masks(kind, rng)
  gamma, update_lambda, buffer_limit = 0.5, 0.5, 3
  learner = make_tiny_learner(kind, masks, gamma, update_lambda, buffer_limit)
  for v, t in zip(learner.theta, theta):
    v.assign(t)
  reference = NumpyCMAML(kind, theta, masks, 3, gamma, update_lambda, buffer_limit)
  for t, (x, y) in enumerate(tiny_stream()):
    ours, expected = learner.observe(x, y), reference.observe(x, y)
    assert ours['accuracy'] == pytest.approx(expected['accuracy'], abs=1e-6), t  # float32 accuracy.
    assert (ours['tbd'], ours['meta_update']) == (expected['tbd'], expected['meta_update']), t
    if t:
      assert ours['loss'] == pytest.approx(expected['loss'], rel=1e-9), t
    if expected['meta_update']:
      assert ours['update_weight'] == pytest.approx(1 - np.exp(-update_lambda * reference.updates[-1][1]),
                                                    rel=1e-9)
    assert learner.buffered == len(reference.buffer), t
  # Both triggers happened: a detected boundary with a non-empty buffer, and a full buffer (> buffer_limit).
  sizes = [n for n, _, _ in reference.updates]
  assert any(n <= buffer_limit for n in sizes) and any(n > buffer_limit for n in sizes), sizes
  for ours, expected in zip(learner.theta + learner.mask_logits, reference.theta + reference.masks):
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-12)
  for ours, expected in zip(learner.fast, reference.phi):
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_one_meta_update_gradient_by_hand():
  """Buffer of 4 steps -> tasks (0 -> 2) and (1 -> 3); sparse masks: frozen coordinates still get an m-gradient."""
  rng = np.random.default_rng(3)
  theta, _, _ = tiny.task(seed=4)
  masks = initial_masks('sparse_c_maml', rng)
  learner = make_tiny_learner('sparse_c_maml', masks, gamma=None, update_lambda=None, buffer_limit=10)
  for v, t in zip(learner.theta, theta):
    v.assign(t)
  steps = tiny_stream(seed=5)[:4]
  for i, (x, y) in enumerate(steps):
    learner._push(tf.constant(x), tf.constant(y, tf.int32), tf.constant(i))  # pylint: disable=protected-access
  loss, weight = learner._meta_update(tf.constant(4))  # pylint: disable=protected-access
  assert float(weight) == 1.0
  sizes = np_sizes('sparse_c_maml', masks)
  expected_loss, g_theta, g_m = 0.0, 0, 0
  for i, q in ((0, 2), (1, 3)):
    phi, grads = tiny.np_inner_loop(theta, steps[i], sizes, 3)
    frozen = masks[0] < 0
    np.testing.assert_array_equal(phi[0][frozen], theta[0][frozen])  # m < 0: the weight does not adapt ...
    task_loss, g_out = tiny.np_loss_and_grad(phi, *steps[q])
    expected_loss += task_loss / 2
    g_theta = g_theta + np.concatenate([g.ravel() for g in g_out]) / 2
    g_m = g_m + np.concatenate([g.ravel() for g in np_mask_grad('sparse_c_maml', g_out, [grads[0][j] + grads[1][j]
                                                                                         + grads[2][j]
                                                                                         for j in range(2)])]) / 2
  assert float(loss) == pytest.approx(expected_loss, rel=1e-12)
  new = np.concatenate([v.numpy().ravel() for v in learner.theta])
  np.testing.assert_allclose(new, np.concatenate([t.ravel() for t in theta]) - g_theta, rtol=1e-10, atol=1e-13)
  new_m = np.concatenate([v.numpy().ravel() for v in learner.mask_logits])
  m_grad = np.concatenate([m.ravel() for m in masks]) - new_m
  np.testing.assert_allclose(m_grad, g_m, rtol=1e-10, atol=1e-13)
  assert np.all(m_grad[:tiny.D * tiny.C][masks[0].ravel() < 0] != 0)  # ... but its m still learns (STE).


# -- compiled once, whatever the task -----------------------------------------------------------------------

def small_convnet():
  return conv4(input_shape=(28, 28, 1), num_classes=10, hidden_size=8, seed=0)


def synthetic_steps(count, seed=0, blocks=(7, 3, 9, 5, 4)):
  """Tasks of varying length; a task repeats its images, alternating Omniglot-like [0, 1] and MNIST-like [0, 255]."""
  rng = np.random.default_rng(seed)
  steps, task = [], 0
  while len(steps) < count:
    scale = 255.0 if task % 2 else 1.0
    x = rng.uniform(0, scale, (50, 28, 28, 1)).astype(np.float32)
    y = rng.permutation(np.repeat(np.arange(10), 5))
    steps += [(x, y)] * blocks[task % len(blocks)]
    task += 1
  return steps[:count]


def test_stream_functions_trace_once_over_task_changes():
  learner = ContinualMAML(small_convnet, modulation=modulation.ScaledBinaryMask(step_size=0.1),
                          inner_loop=inner_loop.InnerLoop(num_steps=2, first_order=True, adapt_bn=False),
                          mask_optimizer=functools.partial(keras.optimizers.Adam, 1e-3), gamma=0.3,
                          buffer_limit=4)
  outs = [learner.observe(x, y) for x, y in synthetic_steps(30)]
  updates = [o.get('meta_tasks') for o in outs if o['meta_update']]
  assert len(set(updates)) >= 2, updates  # Meta-updates over different numbers of task pairs ...
  assert any(o['tbd'] for o in outs) and not all(o['tbd'] for o in outs[1:])
  compiled = (learner._loss_acc, learner._adapt, learner._meta_update, learner._push)  # pylint: disable=protected-access
  for fn in compiled:
    assert fn.experimental_get_tracing_count() == 1  # ... and task switches, yet one trace each.
  baseline = OnlineAdam(small_convnet)
  for x, y in synthetic_steps(12):
    baseline.observe(x, y)
  assert baseline._train_step.experimental_get_tracing_count() == 1  # pylint: disable=protected-access


def test_step_zero_scores_zero_and_never_retrain_keeps_theta():
  learner = ContinualMAML(small_convnet, inner_loop=inner_loop.InnerLoop(num_steps=2, adapt_bn=False),
                          meta_learning=False, prolonged=False, gamma=None)
  before = [v.numpy() for v in learner.theta]
  steps = synthetic_steps(6)
  first = learner.observe(*steps[0])
  assert first['accuracy'] == 0.0 and first['loss'] is None
  for x, y in steps[1:]:
    out = learner.observe(x, y)
    assert not out['meta_update'] and not out['tbd']
  for a, b in zip(before, learner.theta):
    np.testing.assert_array_equal(a, b.numpy())
  # phi is Adapt(theta, last step), never a prolonged adaptation.
  expected = learner.adapt(learner.read(learner.theta), tf.constant(steps[-1][0]),  # pylint: disable=protected-access
                           tf.constant(steps[-1][1], tf.int32))
  for a, b in zip(expected, learner.fast):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_bn_is_outer_loop_only_and_step_sizes_are_per_tensor():
  learner = ContinualMAML(small_convnet, modulation=modulation.PerTensorStepSize(step_size=0.1),
                          inner_loop=inner_loop.InnerLoop(num_steps=1, adapt_bn=False))
  assert len(learner.mask_logits) == 10 and all(m.shape == () for m in learner.mask_logits)  # 4 conv + head, kernel and bias.
  assert not any(name.startswith('bn') for name in learner.mask_names)
  sizes = learner.step_sizes(learner.mask_logits)
  assert [s is None for s in sizes] == [info.is_bn for info in learner.infos]
  assert learner.step_size_values()['conv1/kernel'] == pytest.approx(0.1)


@pytest.mark.parametrize('buffered', [5, 7])  # 2 and 3 task pairs: with 2 in flight, the last slot may be empty.
def test_tasks_in_flight_do_not_change_the_meta_update(buffered):
  rng = np.random.default_rng(6)
  theta, _, _ = tiny.task(seed=7)
  masks = initial_masks('sparse_relu_c_maml', rng)
  results = []
  for width in (1, 2):
    learner = make_tiny_learner('sparse_relu_c_maml', masks, gamma=None, update_lambda=0.5, buffer_limit=10)
    learner.tasks_in_flight = width
    learner._meta_update = learner._compile(  # pylint: disable=protected-access
        learner._meta_update_fn, (tf.TensorSpec((), tf.int32),))  # pylint: disable=protected-access
    for v, t in zip(learner.theta, theta):
      v.assign(t)
    for i, (x, y) in enumerate(tiny_stream(seed=8)[:buffered]):
      learner._push(tf.constant(x), tf.constant(y, tf.int32), tf.constant(i))  # pylint: disable=protected-access
    loss, _ = learner._meta_update(tf.constant(buffered))  # pylint: disable=protected-access
    results.append([float(loss)] + [v.numpy() for v in learner.theta + learner.mask_logits])
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_second_order_pretraining_step_runs_repeatedly():
  """Regression: a second-order step of a 64-channel Conv4 failed on its second call (Grappler, see online_base)."""
  learner = ContinualMAML(functools.partial(conv4, (28, 28, 1), 10), modulation=modulation.Identity(0.1),
                          inner_loop=inner_loop.InnerLoop(num_steps=2, first_order=False, adapt_bn=False),
                          meta_learning=False, gamma=None)
  rng = np.random.default_rng(0)
  tasks = [tf.constant(rng.uniform(size=(1, 50, 28, 28, 1)).astype(np.float32)),
           tf.constant(np.repeat(np.arange(10), 5)[None].astype(np.int32)),
           tf.constant(rng.uniform(size=(1, 150, 28, 28, 1)).astype(np.float32)),
           tf.constant(np.repeat(np.arange(10), 15)[None].astype(np.int32))]
  losses = [float(learner._pretrain_step(*tasks)[0]) for _ in range(3)]  # pylint: disable=protected-access
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
