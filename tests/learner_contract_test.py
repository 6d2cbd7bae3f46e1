"""One contract for every learner of the three settings, each built from its own gin layer.

In the manner of an episodic-learner base test: a `Setting` knows how to build a learner from a gin row and how to
feed it one step of synthetic data; every learner then has to
  * build from its gin row,
  * change theta in one step,
  * move its mask logits in one step (where it has any),
  * restore its state exactly (a restored learner repeats the same step bit for bit),
  * trace each compiled function once over several steps,
  * raise TrainingDiverged on a NaN loss.
"""
import functools
import inspect
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from wtl_tf import main
from wtl_tf.data.episodes import Episode
from wtl_tf.errors import TrainingDiverged
from wtl_tf.experiments import online as online_exp
from wtl_tf.learners import core
from wtl_tf.models.mlp import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parsed(files, params=()):
  gin.clear_config()
  main.parse_config([os.path.join(ROOT, 'gin', f) for f in files], list(params))


def _built_from_row(row_file, params, build):
  """build(factory) with the learner factory a continual or online gin row binds, while its bindings hold."""
  try:
    _parsed([row_file], params)
    if row_file.startswith('continual/'):
      (ref,) = gin.query_parameter('run_continual.learners').values()
    else:
      ref = gin.query_parameter('run_online.learner')
    return build(ref.scoped_configurable_fn)
  finally:
    gin.clear_config()


def _mlp():
  return mlp(input_size=784, hidden_sizes=(16, 16), num_classes=10, seed=0)


def _convnet():
  return functools.partial(online_exp.osaka_convnet, seed=0, hidden_size=8)


class FewShot:
  """A learner layer of gin/fewshot/learners on the synthetic Conv4 row (28x28, 5-way 1-shot), K = 1."""

  rows = ['maml', 'fomaml', 'anil', 'boil', 'meta_sgd', 'exp_maml', 'sparse_maml', 'sparse_relu_maml',
          'sparse_maml_plus']

  @staticmethod
  def build(row, tmp_path):
    try:
      _parsed(['fewshot/sparse_maml_conv4_synthetic_5w1s.gin', f'fewshot/learners/{row}.gin'],
              ['run_fewshot.build_only = True', 'INNER_STEPS = 1', 'NoisyBinaryMask.hidden_size = 4',
               'NoisyBinaryMask.feature_size = 8'])
      return main.selected_experiment()(workdir=str(tmp_path))['learner']
    finally:
      gin.clear_config()

  @staticmethod
  def step(learner, i):
    rng = np.random.default_rng(i)
    ways = learner.model.output_shape[-1]
    shape = tuple(learner.model.input_shape[1:])
    labels = np.tile(np.arange(ways, dtype=np.int32), (2, 1))
    tasks = Episode(rng.normal(size=(2, ways) + shape).astype(np.float32), labels,
                    rng.normal(size=(2, ways) + shape).astype(np.float32), labels)
    return learner.train_step(tasks, np.arange(2 * i, 2 * i + 2))


class Continual:
  """A Table-5 learner layer (gin/continual/learners) on an MLP, one incoming batch of 10 per step."""

  rows = ['la_maml', 'sparse_la_maml', 'sparse_relu_la_maml', 'baseline', 'er', 'mer', 'gem']

  @staticmethod
  def build(row, tmp_path):
    del tmp_path
    def build(factory):
      kwargs = {'batch_size': 10} if 'batch_size' in inspect.signature(factory).parameters else {}
      return factory(_mlp(), seed=0, **kwargs)
    return _built_from_row(f'continual/rotations_{row}.gin', ['MER.steps = 1', 'MER.replay_size = 2'], build)

  @staticmethod
  def step(learner, i):
    rng = np.random.default_rng(i)
    return learner.observe(rng.integers(0, 256, (10, 784)).astype(np.uint8), rng.integers(0, 10, 10), task=i % 2)


class Online:
  """A Table-6 learner layer (gin/online/learners, p = 0.98): one pre-training meta-update per step, and the stream."""

  rows = ['c_maml', 'sparse_c_maml', 'sparse_relu_c_maml', 'maml', 'anil', 'fine_tuning', 'online_adam']

  @staticmethod
  def build(row, tmp_path):
    del tmp_path
    return _built_from_row(f'online/p098_{row}.gin', ['InnerLoop.num_steps = 1'],
                           lambda factory: factory(model_fn=_convnet(), seed=0))

  @staticmethod
  def step(learner, i):
    rng = np.random.default_rng(i)
    labels = np.tile(np.arange(10, dtype=np.int32), (2, 1))
    images = lambda: rng.uniform(0, 1, (2, 10, 28, 28, 1)).astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
    out = learner.pretrain_step(Episode(images(), labels, images(), labels))
    learner.observe(rng.uniform(0, 1, (50, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 50))
    return out


# The online baselines (MAML's second-order pre-training is the slowest row) run with -m slow; the C-MAML family and
# every few-shot and continual learner run by default.
SLOW = {(Online, row) for row in ('maml', 'anil', 'fine_tuning', 'online_adam')}
CASES = [pytest.param((setting, row), marks=[pytest.mark.slow] if (setting, row) in SLOW else [])
         for setting in (FewShot, Continual, Online) for row in setting.rows]
IDS = [f'{case.values[0][0].__name__.lower()}-{case.values[0][1]}' for case in CASES]


@pytest.fixture(name='built', params=CASES, ids=IDS)
def _built(request, tmp_path):
  setting, row = request.param
  return setting, setting.build(row, tmp_path)


def _values(variables):
  return [np.array(v.numpy()) for v in variables]


def _compiled(learner):
  return {name: fn for name, fn in vars(learner).items() if hasattr(fn, 'experimental_get_tracing_count')}


def test_learner_contract(built):
  setting, learner = built
  assert isinstance(learner, core.LearnerCore)
  theta0, masks0 = _values(learner.theta), _values(learner.mask_logits)
  state0 = {k: np.array(v) for k, v in learner.state().items()}
  # Host-side state that the experiments checkpoint beside the learner's arrays.
  info0 = learner.stream_info() if hasattr(learner, 'stream_info') else None
  rng0 = learner.rng.bit_generator.state if hasattr(learner, 'rng') else None
  setting.step(learner, 0)
  theta1, masks1 = _values(learner.theta), _values(learner.mask_logits)
  assert any(not np.array_equal(a, b) for a, b in zip(theta0, theta1)), 'theta did not change in one step'
  if learner.mask_logits:
    assert any(not np.array_equal(a, b) for a, b in zip(masks0, masks1)), 'the mask logits did not move'
  assert set(learner.sparsity()) == set(learner.modulations()) | {'overall'}

  # Restored to its initial state, the learner repeats the first step exactly.
  learner.restore(state0)
  for v, a in zip(learner.theta + learner.mask_logits, theta0 + masks0):
    np.testing.assert_array_equal(v.numpy(), a)
  if info0 is not None:
    learner.restore_stream_info(info0)
  if rng0 is not None:
    learner.rng.bit_generator.state = rng0
  setting.step(learner, 0)
  for v, a in zip(learner.theta + learner.mask_logits, theta1 + masks1):
    np.testing.assert_array_equal(v.numpy(), a)

  for i in range(1, 3):
    setting.step(learner, i)
  counts = {name: fn.experimental_get_tracing_count() for name, fn in _compiled(learner).items()}
  assert counts and all(c <= 1 for c in counts.values()), counts

  learner.theta[-1].assign(tf.fill(learner.theta[-1].shape, np.nan))  # The head: no ReLU or pooling can drop it.
  with pytest.raises(TrainingDiverged):
    for i in range(3, 5):  # An online learner scores a step with the weights adapted on the previous one.
      setting.step(learner, i)


def test_adapt_bn_false_leaves_batchnorm_without_masks(tmp_path):
  try:
    _parsed(['fewshot/sparse_maml_resnet12_miniimagenet_5w1s.gin'], ['run_fewshot.build_only = True'])
    learner = main.selected_experiment()(workdir=str(tmp_path))['learner']
  finally:
    gin.clear_config()
  assert not learner.inner_loop.adapt_bn
  bn = {i.name for i in learner.infos if i.is_bn}
  assert bn and not bn & set(learner.mask_names)
  assert len(learner.mask_logits) == sum(not i.is_bn for i in learner.infos)
  assert not bn & set(learner.sparsity())
  sizes = learner.step_sizes(learner.read(learner.mask_logits))
  assert all((s is None) == i.is_bn for i, s in zip(learner.infos, sizes))


@pytest.mark.parametrize('setting,row', [(Continual, 'sparse_la_maml'), (Online, 'sparse_c_maml')])
def test_noisy_binary_mask_runs_in_continual_and_online_learners(setting, row, tmp_path):
  del tmp_path
  from wtl_tf import modulation  # pylint: disable=g-import-not-at-top
  noisy = modulation.NoisyBinaryMask(step_size=0.1, feature_size=8, hidden_size=4)
  if setting is Continual:
    learner = _built_from_row(f'continual/rotations_{row}.gin', [],
                              lambda factory: factory(_mlp(), modulation=noisy, seed=0, batch_size=10))
  else:
    learner = _built_from_row(f'online/p098_{row}.gin', ['InnerLoop.num_steps = 1'],
                              lambda factory: factory(model_fn=_convnet(), modulation=noisy, seed=0))
  first = _values(learner.mask_logits)
  setting.step(learner, 0)
  setting.step(learner, 1)
  assert any(not np.array_equal(a, b.numpy()) for a, b in zip(first, learner.mask_logits))
  assert int(learner.noise_position.numpy()) > 1  # Fresh noise for every task / glance.
  assert 0.0 <= learner.sparsity()['overall'] <= 1.0
