"""OSAKA's online-learning baselines without an inner loop on the stream (Table 6: online Adam, fine-tuning).

    step 0: score 0, no update (as OSAKA, whose first step only sets up the fast weights)
    step t: acc_t = Acc(theta, D_t) (reported, before learning); one optimizer step on CE(f(x_t; theta), y_t)

Online Adam starts from a random theta; fine-tuning from the MAML pre-trained theta (the experiment pre-trains it with
this learner's modulation and inner loop). The optimizer is the meta-optimizer, with its pre-training state and
learning rate, as in OSAKA (`no_cl_meta_learning`: the inner loop returns theta unchanged and the outer update runs
on every step). MAML and ANIL (`never_retrain`) are `ContinualMAML(meta_learning=False, prolonged=False)`.
"""
import time
from typing import Dict

import gin
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf.learners.online import base as online_base
from wtl_tf.learners.online.base import OnlineLearner


@gin.register
class OnlineAdam(OnlineLearner):
  """Online Adam (random init) / fine-tuning (pre-trained init): predict, then one optimizer step per stream step."""

  name = 'online_adam'

  def __init__(self, model_fn, modulation=None, inner_loop=None, optimizer=None, image_shape=(28, 28, 1),
               seed: int = 0, jit_compile: bool = False, tasks_in_flight: int = 1, name=None):
    kwargs = {'optimizer': optimizer} if optimizer else {}
    super().__init__(model_fn, modulation, inner_loop, seed=seed, jit_compile=jit_compile,
                     tasks_in_flight=tasks_in_flight, name=name, **kwargs)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.started = False
    self.timings = {'evaluation_and_update': 0.0}
    self.counts = {'evaluation_and_update': 0}
    self._train_step = self._compile(self._train_step_fn)

  def _train_step_fn(self, x, y):
    theta = self.read(self.theta)
    with tf.GradientTape() as tape:
      tape.watch(theta)
      logits = self.logits(theta, x)
      loss = inner_lib.cross_entropy(y, logits)
    grads = tape.gradient(loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    self.theta_optimizer.apply(grads, self.theta)
    return loss, online_base.accuracy(y, logits)  # The logits are theta's before this update.

  def observe(self, x, y) -> Dict[str, object]:
    x, y = online_base.as_batch(x, y, self.image_shape)
    if not self.started:
      self.started = True
      return {'accuracy': 0.0, 'loss': None, 'tbd': False, 'meta_update': False}
    start = time.perf_counter()
    loss, acc = self._train_step(x, y)
    out = {'accuracy': float(acc), 'loss': self.check_finite(loss, 'on a stream step'), 'tbd': False,
           'meta_update': False}
    self.timings['evaluation_and_update'] += time.perf_counter() - start
    self.counts['evaluation_and_update'] += 1
    return out

  def stream_info(self):
    return {'started': self.started, 'timings': dict(self.timings), 'counts': dict(self.counts)}

  def restore_stream_info(self, info):
    self.started = bool(info['started'])
    self.timings.update(info.get('timings', {}))
    self.counts.update(info.get('counts', {}))
