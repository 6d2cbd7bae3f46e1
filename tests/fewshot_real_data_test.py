"""Every few-shot learner learns on real Omniglot (5-way 1-shot), from the raw npz files through the pipeline.

A short schedule with a small Conv4: each learner must lift the post-adaptation accuracy on fixed test-split
episodes (classes never trained on) well above both chance and its own untrained value. Skips without real data.
"""
import functools
import os

import numpy as np
import pytest

from tests.fewshot_learners_test import LEARNERS
from wtl_tf import inner_loop
from wtl_tf import modulation as M
from wtl_tf import optimizers
from wtl_tf.data.fewshot import FewShotData
from wtl_tf.learners.fewshot import FewShotLearner
from wtl_tf.models.conv4 import conv4

WAYS, SHOTS, QUERIES = 5, 1, 5
META_BATCH, STEPS, EVAL_EPISODES, EVAL_CHUNK = 4, 150, 48, 8


@pytest.fixture(scope='module')
def omniglot(data_root, tmp_path_factory):
  raw = os.path.join(data_root, 'omniglot')
  if not os.path.isdir(raw):
    pytest.skip(f'{raw} is missing')
  data = FewShotData('omniglot', records_dir=str(tmp_path_factory.mktemp('omniglot_records')), raw_dir=raw)
  train = data.split('train', WAYS, SHOTS, QUERIES).batch_at(seed=0, first=0, size=META_BATCH * STEPS)
  test = data.split('test', WAYS, SHOTS, QUERIES).batch_at(seed=123, first=0, size=EVAL_EPISODES)
  (tasks, positions), = train.as_numpy_iterator()
  batches = [(type(tasks)(*(x[i:i + META_BATCH] for x in tasks)), positions[i:i + META_BATCH])
             for i in range(0, META_BATCH * STEPS, META_BATCH)]
  (test_tasks, test_positions), = test.as_numpy_iterator()
  return batches, test_tasks, test_positions


def make(name):
  kwargs = dict(modulation=M.Identity(step_size=0.4), inner_loop=inner_loop.InnerLoop(1),
                theta_optimizer=functools.partial(optimizers.adam, 3e-3))
  kwargs.update({k: v for k, v in LEARNERS[name].items() if k != 'theta_optimizer'})
  if name == 'maml':
    kwargs['inner_loop'] = inner_loop.InnerLoop(1, first_order=False)
  return FewShotLearner(functools.partial(conv4, (28, 28, 1), num_classes=WAYS, hidden_size=16), name=name, **kwargs)


def mean_accuracy(learner, tasks, positions):
  # Chunks: the eval step unrolls its tasks, so a small static chunk keeps the one trace short.
  return float(np.mean([learner.eval_step(type(tasks)(*(x[i:i + EVAL_CHUNK] for x in tasks)),
                                          positions[i:i + EVAL_CHUNK])[0]
                        for i in range(0, len(positions), EVAL_CHUNK)]))


# sparse-MAML runs by default; the other learners with -m slow (about 15-50 s each; the synthetic learner tests
# check every learner by default).
@pytest.mark.parametrize('name', [pytest.param(n, marks=[] if n == 'sparse_maml'
                                               else [pytest.mark.slow]) for n in sorted(LEARNERS)])
def test_every_learner_learns_real_omniglot(name, omniglot):
  batches, tasks, positions = omniglot
  learner = make(name)
  before = mean_accuracy(learner, tasks, positions)
  for batch, batch_positions in batches:
    assert np.isfinite(float(learner.train_step(batch, batch_positions)['loss']))
  after = mean_accuracy(learner, tasks, positions)
  print(f'{name}: {before:.3f} -> {after:.3f}')
  assert after > 0.35 and after > before + 0.12, (before, after)  # Chance: 0.2.
