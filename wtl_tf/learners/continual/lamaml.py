"""La-MAML and its modulated relatives (ALGORITHMS.md 4.2, 4.3), on the shared modulation core.

One incoming batch (x_1..x_b) is seen `glances` times. Each glance:

    B = replay(M, r) ++ (x, y)                    (built before this batch enters memory)
    phi_0 = theta; for i = 1..b:  g_i = stop_grad(grad CE(f(x_i; phi_{i-1}), y_i));  phi_i = phi_{i-1} - S(m) * g_i
    L = mean_i CE(f(B; phi_i))                    (the meta-loss after EVERY inner step)
    G_theta, G_m = grad(L); each clipped to global norm `clip` separately
    m <- m - lr_m * G_m                           (SGD on the modulation first)
    theta <- theta - S(m_new) * G_theta           (or lr_theta * G_theta with sync_update)

`S(m)` is the modulation's `step_sizes` (c * S(m)):
  * La-MAML:             `Relu(step_size=alpha_init)`: relu(alpha) with its true gradient, so dead rates stay dead;
  * sparse-La-MAML:      `ScaledBinaryMask(step_size=alpha0)`: alpha0 * 1[m >= 0], straight-through gradient, so
                          frozen coordinates can unfreeze;
  * sparse-ReLU-La-MAML: `ReluStraightThrough`: relu(m) with the identity straight-through gradient.
Because every g_i is a constant, phi_i = theta - S(m) (.) sum_{j<=i} g_j exactly; the inner gradients are computed
with the outer tape paused and only the b meta-loss forward passes are recorded. This gives the same gradients as
La-MAML's autograd (identity for theta, -sum_j g_j (.) S'(m) for m) without keeping the inner loop for backprop.
"""
from typing import Dict, Optional

import gin
import numpy as np
import tensorflow as tf

from wtl_tf import modulation as modulation_lib
from wtl_tf.learners.continual.base import (ContinualLearner, Reservoir, global_norm_clip, padded_batch, to_float,
                                            weighted_cross_entropy)


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
    super().__init__(model, seed=seed, jit_compile=jit_compile)
    for key, value in (('glances', glances), ('batch_size', batch_size)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'LaMAML.{key} must be a positive int, got {value!r}')
    for key, value in (('lr_m', lr_m), ('lr_theta', lr_theta)):
      if not value >= 0:
        raise ValueError(f'LaMAML.{key} must be >= 0, got {value!r}')
    if replay_size < 0 or memories < 0:
      raise ValueError(f'LaMAML.replay_size and memories must be >= 0, got {replay_size}, {memories}')
    self.modulation = modulation or modulation_lib.Relu(step_size=0.15)
    if name:
      self.name = name
    self.glances, self.replay_size, self.batch_size = glances, replay_size, batch_size
    self.lr_m, self.clip, self.sync_update, self.lr_theta = lr_m, clip, sync_update, lr_theta
    self.memory = Reservoir(memories, int(np.prod(model.input_shape[1:])), self.rng)
    masked = self.modulation.masked(self.infos)
    self.masked_names = [i.name for i, is_masked in zip(self.infos, masked) if is_masked]
    self.mask_vars = [tf.Variable(m.astype(np.float32), name=f'm/{n}') for m, n in
                      zip(self.modulation.init_mask_params(self.infos, seed), self.masked_names)]
    self._glance = tf.function(self._glance_fn, jit_compile=jit_compile)
    self._steps = 0

  # -- the compiled glance ----------------------------------------------------------------------
  def _loss(self, params, x, y, w):
    logits, _ = self.model.stateless_call(list(params), self.non_trainable, x, training=True)
    return weighted_cross_entropy(y, logits, w)

  def _glance_fn(self, x, y, xw, bx, by, bw):
    theta = [tf.convert_to_tensor(v) for v in self.theta]
    with tf.GradientTape() as tape:
      tape.watch(theta)
      sizes = self.modulation.step_sizes(self.mask_vars, self.infos)
      grad_sum = [tf.zeros_like(p) for p in theta]
      fast = theta
      losses = []
      for i in range(self.batch_size):
        with tape.stop_recording():
          with tf.GradientTape() as inner:
            inner.watch(fast)
            inner_loss = self._loss(fast, x[i:i + 1], y[i:i + 1], xw[i:i + 1])
          grads = inner.gradient(inner_loss, fast)
          grad_sum = [acc + g for acc, g in zip(grad_sum, grads)]
        fast = [p - s * tf.stop_gradient(acc) if s is not None else p
                for p, s, acc in zip(theta, sizes, grad_sum)]
        losses.append(xw[i] * self._loss(fast, bx, by, bw))  # Padding steps (weight 0) do not count.
      meta_loss = tf.add_n(losses) / tf.reduce_sum(xw)
    grads = tape.gradient(meta_loss, theta + list(self.mask_vars))
    g_theta = global_norm_clip(grads[:len(theta)], self.clip)
    g_m = global_norm_clip(grads[len(theta):], self.clip)
    for m, g in zip(self.mask_vars, g_m):
      m.assign_sub(self.lr_m * g)
    new_sizes = self.modulation.step_sizes(self.mask_vars, self.infos)
    for v, s, g in zip(self.theta, new_sizes, g_theta):
      if self.sync_update:
        v.assign_sub(self.lr_theta * g)
      elif s is not None:
        v.assign_sub(s * g)
    return meta_loss

  # -- the stream ---------------------------------------------------------------------------------
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
      losses.append(float(self._glance(px, py, pw, bx, by, bw)))
      if glance == 0 and first_epoch:
        self.memory.push(xs, ys)
      self._steps += 1
    return {'loss': float(np.mean(losses))}

  # -- reporting and state ------------------------------------------------------------------------
  def modulations(self):
    mods = self.modulation.modulations(self.mask_vars, self.infos)
    return {i.name: s.numpy() for i, s in zip(self.infos, mods) if s is not None}

  def mask_logits(self):
    return {n: v.numpy() for n, v in zip(self.masked_names, self.mask_vars)}

  def extra_state(self):
    out = {f'm/{i}': v.numpy() for i, v in enumerate(self.mask_vars)}
    out.update({f'memory/{k}': v for k, v in self.memory.state().items()})
    return out

  def restore_extra(self, state):
    for i, v in enumerate(self.mask_vars):
      v.assign(state[f'm/{i}'])
    self.memory.restore({k: state[f'memory/{k}'] for k in ('x', 'y', 'age')})
