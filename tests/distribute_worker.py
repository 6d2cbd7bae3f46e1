"""Runs two meta-training steps under a strategy and saves the outcome (run as a subprocess by distribute_test.py).

  python -m tests.distribute_worker MODE OUT.npz      MODE: single | mirrored | multi_worker (TF_CONFIG set)

The scenario is the same in every mode: sparse-MAML+ (per-task noise by episode position, masks, SGD on both), the
'mean' outer loss (divided by the global meta-batch), 4 tasks per meta-batch, a tiny Conv4.
"""
import functools
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from wtl_tf import distribute  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf import inner_loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf import modulation  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf.data.fewshot import SyntheticData  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf.learners.fewshot import FewShotLearner  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf.models.conv4 import conv4  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = 4


def main(mode, out):
  if mode == 'single':
    strategy = tf.distribute.get_strategy()
  elif mode == 'mirrored':
    strategy = distribute.make_strategy('mirrored', logical_cpus=2)
  else:
    strategy = distribute.make_strategy('multi_worker')
  learner = FewShotLearner(
      functools.partial(conv4, (16, 16, 1), 5, hidden_size=8),
      modulation=modulation.NoisyBinaryMask(step_size=0.3, feature_size=16), inner_loop=inner_loop.InnerLoop(2),
      theta_optimizer=functools.partial(optimizers.sgd, 0.05), mask_optimizer=functools.partial(optimizers.sgd, 0.5),
      outer_loss='mean', strategy=strategy, seed=3)
  learner.set_global_batch(BATCH)
  split = SyntheticData((16, 16, 1)).split('train', 5, 2, 5)
  # The distributed input pipeline: step 3 holds episodes 12..15, replica r gets 12 + 2r, 13 + 2r.
  tasks, positions = next(iter(distribute.train_batches(strategy, split, seed=0, global_batch=BATCH, start_step=3)))
  local_positions = np.stack([p.numpy() for p in strategy.experimental_local_results(positions)])
  losses = [float(learner.train_step(tasks, positions)['loss'])]
  # Plain arrays are split across replicas by the learner.
  more, more_positions = split.episodes(seed=0, start=16, count=BATCH)
  losses.append(float(learner.train_step(more, more_positions)['loss']))
  accuracies, _ = learner.eval_step(more, more_positions)
  if distribute.is_chief(strategy) or mode != 'multi_worker':
    np.savez(out, losses=np.array(losses), accuracies=accuracies.numpy(), local_positions=local_positions,
             replicas=strategy.num_replicas_in_sync, **learner.state())
  elif out:
    np.savez(out, local_positions=local_positions)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
