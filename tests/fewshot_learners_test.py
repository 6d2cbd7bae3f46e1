"""Few-shot learners: the base checks of docs/ARCHITECTURE.md (Conventions) for all nine, plus exact-math checks of
the meta-update and options."""
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from wtl_tf import inner_loop
from wtl_tf import modulation as M
from wtl_tf import optimizers
from wtl_tf.data.fewshot import SyntheticData
from wtl_tf.learners.fewshot import FewShotLearner
from wtl_tf.models.conv4 import conv4

WAYS, SHOTS, QUERIES, SHAPE = 5, 2, 5, (16, 16, 1)
STEP = 0.3

# The nine learners as the gin files configure them (tiny Conv4 and K; learning rates raised for short tests).
LEARNERS = {
    'maml': dict(inner_loop=inner_loop.InnerLoop(2, first_order=False)),
    'fomaml': dict(),
    'anil': dict(modulation=M.FixedSubset('head', step_size=STEP)),
    'boil': dict(modulation=M.FixedSubset('body', step_size=STEP)),
    'meta_sgd': dict(modulation=M.Linear(step_size=STEP)),
    'exp_maml': dict(modulation=M.Exp(step_size=STEP)),
    'sparse_maml': dict(modulation=M.BinaryMask(step_size=STEP)),
    'sparse_relu_maml': dict(modulation=M.ReluStraightThrough(step_size=STEP)),
    'sparse_maml_plus': dict(modulation=M.NoisyBinaryMask(step_size=STEP, feature_size=16),
                             theta_optimizer=functools.partial(optimizers.sgd, 0.01),
                             mask_optimizer=functools.partial(optimizers.sgd, 0.0075)),
}


def tiny_conv4(**kwargs):
  return conv4(SHAPE, num_classes=WAYS, hidden_size=8, **kwargs)


def make(name, **overrides):
  kwargs = dict(modulation=M.Identity(step_size=STEP), inner_loop=inner_loop.InnerLoop(2),
                theta_optimizer=functools.partial(optimizers.adam, 1e-2))
  kwargs.update(LEARNERS[name])
  kwargs.update(overrides)
  return FewShotLearner(tiny_conv4, name=name, **kwargs)


@pytest.fixture(scope='module')
def split():
  return SyntheticData(SHAPE, noise=1.5).split('train', WAYS, SHOTS, QUERIES)


def support_loss(learner, params, task):
  return float(inner_loop.cross_entropy(task.support_labels, learner.logits(params, task.support_images)))


# MAML, ANIL and sparse-MAML (one of each kind of theta/mask split) by default; the others with -m slow (~20 s
# each). Every learner still steps, restores and traces once by default in learner_contract_test.
@pytest.mark.parametrize('name', [pytest.param(n, marks=[] if n in ('maml', 'anil', 'sparse_maml')
                                               else [pytest.mark.slow]) for n in sorted(LEARNERS)])
def test_learner_base_checks(name, split):
  learner = make(name)
  tasks, positions = split.episodes(seed=0, start=0, count=8)
  theta = [tf.convert_to_tensor(v) for v in learner.theta]
  one = type(tasks)(*(x[0] for x in tasks))
  # Output shape.
  assert learner.logits(theta, one.query_images).shape == (WAYS * QUERIES, WAYS)
  acc, loss = learner.eval_step(tasks, positions)
  assert acc.shape == (8,) and loss.shape == (8,)
  # Random-init accuracy (before adaptation) is chance level: labels are a fresh permutation per episode.
  chance = np.mean([np.mean(np.argmax(learner.logits(theta, tasks.query_images[i]), -1) == tasks.query_labels[i])
                    for i in range(8)])
  assert abs(chance - 1 / WAYS) < 0.1, chance
  # The support loss drops after adaptation.
  fast = learner.adapt(one.support_images, one.support_labels, position=0)
  assert support_loss(learner, fast, one) < support_loss(learner, theta, one) - 1e-3
  # Meta-training on one fixed episode overfits it.
  fixed_tasks = type(tasks)(*(np.stack([x[0]] * 2) for x in tasks))
  fixed_positions = np.array([0, 0])
  first = float(learner.train_step(fixed_tasks, fixed_positions)['loss'])
  for _ in range(60):
    last = float(learner.train_step(fixed_tasks, fixed_positions)['loss'])
  acc, _ = learner.eval_step(fixed_tasks, fixed_positions, split='train')
  assert last < 0.3 * first, (first, last)
  assert float(acc[0]) >= 0.9, acc.numpy()
  assert learner._train_step.experimental_get_tracing_count() == 1  # pylint: disable=protected-access


def _hand_meta_gradients(learner, tasks):
  """Per task: phi_K by hand-written first-order SGD, the query gradient at phi_K and the summed support gradients."""
  theta = [tf.convert_to_tensor(v) for v in learner.theta]
  sizes = learner.step_sizes([tf.convert_to_tensor(m) for m in learner.mask_logits])
  out = []
  for i in range(len(tasks.support_images)):
    fast, grad_sum = list(theta), [tf.zeros_like(p) for p in theta]
    for _ in range(learner.inner_loop.num_steps):
      with tf.GradientTape() as tape:
        tape.watch(fast)
        loss = inner_loop.cross_entropy(tasks.support_labels[i], learner.logits(fast, tasks.support_images[i]))
      grads = tape.gradient(loss, fast)
      fast = [p - s * g if s is not None else p for p, s, g in zip(fast, sizes, grads)]
      grad_sum = [a + g for a, g in zip(grad_sum, grads)]
    with tf.GradientTape() as tape:
      tape.watch(fast)
      loss = inner_loop.cross_entropy(tasks.query_labels[i], learner.logits(fast, tasks.query_images[i]))
    out.append((tape.gradient(loss, fast), grad_sum))
  return theta, out


def _sgd(lr=1.0):
  return functools.partial(optimizers.sgd, learning_rate=lr, momentum=0.0, nesterov=False)


def test_fomaml_and_sparse_maml_meta_updates_match_the_hand_derivation(split):
  """theta <- theta - sum_tau g_out,tau;  m <- m + alpha * 0.5 * sum_tau g_out,tau (.) sum_k g_k,tau  (eq. 5, [R])."""
  learner = make('sparse_maml', theta_optimizer=_sgd(), mask_optimizer=_sgd())
  tasks, positions = split.episodes(seed=1, start=0, count=2)
  masks_before = [m.numpy() for m in learner.mask_logits]
  theta, per_task = _hand_meta_gradients(learner, tasks)
  learner.train_step(tasks, positions)
  for j, (before, after) in enumerate(zip(theta, learner.theta)):
    expected = before.numpy() - sum(g_out[j].numpy() for g_out, _ in per_task)
    np.testing.assert_allclose(after.numpy(), expected, rtol=1e-4, atol=1e-6)
  for j, (before, after) in enumerate(zip(masks_before, learner.mask_logits)):
    expected = before + STEP * 0.5 * sum(g_out[j].numpy() * g_sum[j].numpy() for g_out, g_sum in per_task)
    np.testing.assert_allclose(after.numpy(), expected, rtol=1e-4, atol=1e-7)


def test_mean_outer_loss_is_sum_over_batch_size_and_clamp_bounds_theta_steps(split):
  tasks, positions = split.episodes(seed=2, start=0, count=4)
  deltas = {}
  for outer in ('sum', 'mean'):
    learner = make('sparse_maml', theta_optimizer=_sgd(), mask_optimizer=_sgd(), outer_loss=outer)
    before = [v.numpy() for v in learner.theta]
    learner.train_step(tasks, positions)
    deltas[outer] = [v.numpy() - b for v, b in zip(learner.theta, before)]
  for s, m in zip(deltas['sum'], deltas['mean']):
    np.testing.assert_allclose(m, s / 4, rtol=1e-4, atol=1e-7)
  clamp = 1e-3
  learner = make('sparse_maml', theta_optimizer=_sgd(), mask_optimizer=_sgd(), clamp_outer_gradients=clamp)
  before = [v.numpy() for v in learner.theta]
  masks_before = [m.numpy() for m in learner.mask_logits]
  learner.train_step(tasks, positions)
  for s, v, b in zip(deltas['sum'], learner.theta, before):
    np.testing.assert_allclose(v.numpy() - b, np.clip(s, -clamp, clamp), rtol=1e-4, atol=1e-7)
  # Mask gradients are not clamped.
  assert max(np.abs(m.numpy() - b).max() for m, b in zip(learner.mask_logits, masks_before)) > clamp


def test_bn_out_of_inner_loop_anil_and_boil_adapt_the_right_tensors(split):
  tasks, _ = split.episodes(seed=3, start=0, count=1)
  for name, overrides, adapted in (
      ('sparse_relu_maml', dict(inner_loop=inner_loop.InnerLoop(2, adapt_bn=False)),
       lambda i: not i.is_bn),
      ('anil', {}, lambda i: i.is_head),
      ('boil', {}, lambda i: not i.is_head)):
    learner = make(name, **overrides)
    fast = learner.adapt(tasks.support_images[0], tasks.support_labels[0])
    for info, before, after in zip(learner.infos, learner.theta, fast):
      changed = not np.array_equal(before.numpy(), after.numpy())
      # Conv biases before BN have zero gradient, so they may stay put even when adapted.
      if info.role == 'bias' and info.layer_type == 'Conv2D':
        continue
      assert changed == adapted(info), (name, info.name)


def test_test_time_inner_steps(split):
  tasks, positions = split.episodes(seed=4, start=0, count=2)
  learner = make('fomaml', eval_inner_loop=inner_loop.InnerLoop(0))
  acc, _ = learner.eval_step(tasks, positions)
  theta = [tf.convert_to_tensor(v) for v in learner.theta]
  unadapted = [np.mean(np.argmax(learner.logits(theta, tasks.query_images[i]), -1) == tasks.query_labels[i])
               for i in range(2)]
  np.testing.assert_allclose(acc.numpy(), unadapted, atol=1e-6)
  assert make('fomaml').eval_inner_loop.num_steps == 2  # Default: the training K (the reference's behaviour).


def test_sparse_maml_plus_draws_fresh_masks_per_task_reproducibly(split):
  learner = make('sparse_maml_plus')
  a, b = learner.modulations(position=0), learner.modulations(position=1)
  kernel = 'conv2/kernel'
  assert not np.array_equal(a[kernel], b[kernel])
  np.testing.assert_array_equal(a[kernel], learner.modulations(position=0)[kernel])
  assert not np.array_equal(a[kernel], learner.modulations(position=0, split='eval')[kernel])
  np.testing.assert_array_equal(a['head/kernel'], b['head/kernel'])  # Deterministic masks outside conv kernels.
  assert 'conv1/bias' not in a  # Reference quirk: conv biases are unmasked.


def test_state_round_trip_continues_bit_exactly(split):
  tasks, positions = split.episodes(seed=5, start=0, count=2)
  more, more_positions = split.episodes(seed=5, start=2, count=2)
  first = make('sparse_maml')
  first.train_step(tasks, positions)
  second = make('sparse_maml', seed=7)  # Different init; restore must overwrite all of it.
  second.restore(first.state())
  for learner in (first, second):
    learner.train_step(more, more_positions)
  for a, b in zip(first.state().items(), second.state().items()):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
  with pytest.raises(ValueError, match='different configuration'):
    make('fomaml').restore(first.state())


def test_bad_options_are_clear_errors():
  with pytest.raises(ValueError, match='outer_loss'):
    make('fomaml', outer_loss='avg')
  with pytest.raises(ValueError, match='no parameter takes part'):
    FewShotLearner(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
                   modulation=M.FixedSubset('body'))
