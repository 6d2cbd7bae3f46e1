"""La-MAML (`Relu`), sparse-La-MAML (`ScaledBinaryMask`) and sparse-ReLU-La-MAML (`ReluStraightThrough`).

Each of a batch's `glances` is docs/ALGORITHMS.md 4.2 and 4.3 (sparse variants), gotchas 14 and 15: one sample per
inner step via the first-order `trajectory` (wtl_tf/inner_loop.py), the meta-loss averaged over every phi_i on
replay ++ batch, both gradients clipped separately, m updated by SGD before theta.
"""
from typing import Dict, Optional

import gin
import numpy as np
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf import modulation as modulation_lib
from wtl_tf.learners.continual.base import (ContinualLearner, Reservoir, global_norm_clip, padded_batch, to_float,
                                            weighted_cross_entropy)
from wtl_tf.errors import ConfigError, check_ints


@gin.register
class LaMAML(ContinualLearner):
  """La-MAML family learner.

  Args:
    model: a built Keras model (e.g. wtl_tf.models.mlp.mlp()).
    modulation: S(m); default La-MAML's rectified learning rates initialised at 0.15.
    glances: passes over each incoming batch (5 for rotations/permutations, 10 for many permutations).
    memories: reservoir capacity.
    replay_size: replay samples drawn per glance (added to the current batch for the meta-loss).
    lr_m: SGD rate of the modulation parameters (La-MAML's `opt_lr`).
    clip: global-norm clip applied separately to the theta and the modulation gradients.
    sync_update: theta takes a plain SGD step with `lr_theta` instead of S(m) (La-MAML's "Sync" variant).
    batch_size: incoming batch size b (inner steps per glance); fixed so the step compiles once.
  """

  name = 'la_maml'

  def __init__(self, model, modulation: Optional[modulation_lib.Modulation] = None, glances: int = 5,
               memories: int = 200, replay_size: int = 10, lr_m: float = 0.3, clip: float = 2.0,
               sync_update: bool = False, lr_theta: float = 0.1, batch_size: int = 10, seed: int = 0,
               jit_compile: bool = True, name: Optional[str] = None):
    super().__init__(model, modulation or modulation_lib.Relu(step_size=0.15), seed=seed, jit_compile=jit_compile,
                     name=name)
    check_ints('LaMAML', glances=glances, batch_size=batch_size)
    for key, value in (('lr_m', lr_m), ('lr_theta', lr_theta)):
      if not value >= 0:
        raise ConfigError(f'LaMAML.{key} must be >= 0, got {value!r}')
    if replay_size < 0 or memories < 0:
      raise ConfigError(f'LaMAML.replay_size and memories must be >= 0, got {replay_size}, {memories}')
    self.glances, self.replay_size, self.batch_size = glances, replay_size, batch_size
    self.lr_m, self.clip, self.sync_update, self.lr_theta = lr_m, clip, sync_update, lr_theta
    self.memory = Reservoir(memories, int(np.prod(model.input_shape[1:])), self.rng)
    self._glance = tf.function(self._glance_fn, jit_compile=jit_compile)

  def _loss(self, params, x, y, w):
    logits, _ = self.model.stateless_call(list(params), self.non_trainable, x, training=True)
    return weighted_cross_entropy(y, logits, w)

  def _glance_fn(self, x, y, xw, bx, by, bw):
    theta, masks = self.read(self.theta), self.read(self.mask_logits)
    key = self.noise_key(0, self.take_noise_positions(1))
    with tf.GradientTape() as tape:
      tape.watch(theta + masks)
      sizes = self.step_sizes(masks, key)
      # Inner step i sees sample i alone; padding samples (weight 0) give a zero gradient.
      path = inner_lib.trajectory(self.model, theta, self.non_trainable, sizes, x[:, tf.newaxis],
                                  (y[:, tf.newaxis], xw[:, tf.newaxis]),
                                  loss_fn=lambda yw, logits: weighted_cross_entropy(yw[0], logits, yw[1]))
      # The meta-loss after every inner step; padding steps (weight 0) do not count.
      losses = [xw[i] * self._loss(fast, bx, by, bw) for i, fast in enumerate(path)]
      meta_loss = tf.add_n(losses) / tf.reduce_sum(xw)
    grads = tape.gradient(meta_loss, theta + masks, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    g_theta = global_norm_clip(grads[:len(theta)], self.clip)
    g_m = global_norm_clip(grads[len(theta):], self.clip)
    for m, g in zip(self.mask_logits, g_m):
      m.assign_sub(self.lr_m * g)
    new_sizes = self.step_sizes(self.read(self.mask_logits), key)
    for v, s, g in zip(self.theta, new_sizes, g_theta):
      if self.sync_update:
        v.assign_sub(self.lr_theta * g)
      elif s is not None:
        v.assign_sub(s * g)
    return meta_loss

  def observe(self, x, y, task, first_epoch=True) -> Dict[str, float]:
    del task
    x, y = to_float(x), np.asarray(y, np.int64)
    n = len(x)
    if not 0 < n <= self.batch_size:
      raise ValueError(f'{self.name}: incoming batches must hold 1..{self.batch_size} samples, got {n}')
    losses = []
    for glance in range(self.glances):
      order = self.rng.permutation(n)
      xs, ys = x[order], y[order]
      rx, ry = self.memory.sample(self.replay_size)
      bx, by, bw = padded_batch(np.concatenate([rx, xs]), np.concatenate([ry, ys]),
                                self.replay_size + self.batch_size)
      # A short last batch is padded with weight-0 samples: they take no inner step and add no loss.
      px, py, pw = padded_batch(xs, ys, self.batch_size)
      losses.append(self.check_finite(self._glance(px, py, pw, bx, by, bw), f'in glance {glance}'))
      if glance == 0 and first_epoch:
        self.memory.push(xs, ys)
    return {'loss': float(np.mean(losses))}
