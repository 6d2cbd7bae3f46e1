"""Table-5 baselines on the same stream and model (docs/ALGORITHMS.md 4.6).

  OnlineSGD           "Baseline": SGD on each incoming batch, no memory.
  ExperienceReplay    SGD on the incoming batch plus a reservoir replay batch, `glances` times.
  MER                 Meta-Experience Replay (Riemer et al. 2019): reservoir replay + Reptile, per incoming sample.
  GEM                 Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): a per-task memory; the new gradient is
                      projected with a quadratic program (quadprog) so it does not increase any past task's loss.
Hyper-parameters of the baselines are not in the paper (it quotes La-MAML's numbers); the defaults below follow the
original papers' MNIST settings as far as we know them and are marked unverified in the README.
"""
from typing import Dict

import gin
import numpy as np
import tensorflow as tf

from wtl_tf.learners.continual.base import (ContinualLearner, Reservoir, padded_batch, to_float,
                                            weighted_cross_entropy)
from wtl_tf.errors import ConfigError


class _SGDLearner(ContinualLearner):
  """Shared compiled pieces: weighted loss gradient and an SGD step."""

  def __init__(self, model, lr: float, seed: int, jit_compile: bool):
    super().__init__(model, seed=seed, jit_compile=jit_compile)
    if not lr > 0:
      raise ConfigError(f'{type(self).__name__}.lr must be positive, got {lr!r}')
    self.lr = lr
    self._sgd = tf.function(self._sgd_fn, jit_compile=jit_compile, reduce_retracing=True)
    self._grad = tf.function(self._grad_fn, jit_compile=jit_compile, reduce_retracing=True)

  def _loss(self, params, x, y, w):
    logits, _ = self.model.stateless_call(list(params), self.non_trainable, x, training=True)
    return weighted_cross_entropy(y, logits, w)

  def _grad_fn(self, x, y, w):
    theta = self.read(self.theta)
    with tf.GradientTape() as tape:
      tape.watch(theta)
      loss = self._loss(theta, x, y, w)
    return loss, tape.gradient(loss, theta)

  def _sgd_fn(self, x, y, w):
    loss, grads = self._grad_fn(x, y, w)
    for v, g in zip(self.theta, grads):
      v.assign_sub(self.lr * g)
    return loss


@gin.register
class ExperienceReplay(_SGDLearner):
  """SGD on (incoming batch ++ replay) for `glances` passes; memory written on the first pass."""

  name = 'er'

  def __init__(self, model, lr: float = 0.1, memories: int = 200, replay_size: int = 10, glances: int = 5,
               batch_size: int = 10, seed: int = 0, jit_compile: bool = True):
    super().__init__(model, lr, seed, jit_compile)
    if glances < 1:
      raise ConfigError(f'glances must be >= 1, got {glances}')
    self.glances, self.replay_size, self.batch_size = glances, replay_size, batch_size
    self.memory = Reservoir(memories, int(np.prod(model.input_shape[1:])), self.rng)

  def observe(self, x, y, task, first_epoch=True) -> Dict[str, float]:
    del task
    x, y = to_float(x), np.asarray(y, np.int64)
    losses = []
    for glance in range(self.glances):
      rx, ry = self.memory.sample(self.replay_size)
      bx, by, bw = padded_batch(np.concatenate([rx, x]), np.concatenate([ry, y]),
                                self.replay_size + self.batch_size)
      losses.append(self.check_finite(self._sgd(bx, by, bw), f'in glance {glance}'))
      if glance == 0 and first_epoch and self.memory.capacity:
        self.memory.push(x, y)
    return {'loss': float(np.mean(losses))}


@gin.register
class OnlineSGD(ExperienceReplay):
  """The "Baseline" row: plain SGD on each incoming batch, one pass, no memory."""
  name = 'baseline'

  def __init__(self, model, lr: float = 0.03, glances: int = 1, batch_size: int = 10, seed: int = 0,
               jit_compile: bool = True):
    super().__init__(model, lr=lr, memories=0, replay_size=0, glances=glances, batch_size=batch_size, seed=seed,
                     jit_compile=jit_compile)


@gin.register
class MER(_SGDLearner):
  """Meta-Experience Replay, one incoming sample at a time.

  For each sample: theta_A = theta; `steps` times: draw `replay_size` memories, append the sample, shuffle, take one
  SGD step per sample, then theta = theta_W + beta (theta - theta_W) (within-batch Reptile); push the sample to the
  reservoir; finally theta = theta_A + gamma (theta - theta_A) (across-batch Reptile).
  """

  name = 'mer'

  def __init__(self, model, lr: float = 0.03, beta: float = 0.03, gamma: float = 1.0, memories: int = 5120,
               replay_size: int = 10, steps: int = 5, seed: int = 0, jit_compile: bool = True):
    super().__init__(model, lr, seed, jit_compile)
    self.beta, self.gamma, self.replay_size, self.steps = beta, gamma, replay_size, steps
    self.memory = Reservoir(memories, int(np.prod(model.input_shape[1:])), self.rng)
    self._reptile_batch = tf.function(self._reptile_batch_fn, jit_compile=jit_compile)

  def _reptile_batch_fn(self, xs, ys, ws):
    """Sequential single-sample SGD over a padded batch, then the within-batch Reptile interpolation."""
    start = [tf.identity(v) for v in self.theta]
    one = tf.ones((1,), tf.float32)
    losses = []
    for i in range(self.replay_size + 1):
      loss, grads = self._grad_fn(xs[i:i + 1], ys[i:i + 1], one * ws[i])
      losses.append(loss * ws[i])
      for v, g in zip(self.theta, grads):
        v.assign_sub(self.lr * g)
    for v, s in zip(self.theta, start):
      v.assign(s + self.beta * (v - s))
    return tf.add_n(losses) / tf.maximum(tf.reduce_sum(ws), 1.0)

  def observe(self, x, y, task, first_epoch=True) -> Dict[str, float]:
    del task
    x, y = to_float(x), np.asarray(y, np.int64)
    losses = []
    for xi, yi in zip(x, y):
      anchor = [v.numpy() for v in self.theta]
      for _ in range(self.steps):
        rx, ry = self.memory.sample(self.replay_size)
        bx, by = np.concatenate([rx, xi[None]]), np.concatenate([ry, [yi]])
        order = self.rng.permutation(len(bx))
        px, py, pw = padded_batch(bx[order], by[order], self.replay_size + 1)
        losses.append(self.check_finite(self._reptile_batch(px, py, pw), 'in a Reptile batch'))
      if first_epoch:
        self.memory.push(xi[None], [yi])
      if self.gamma != 1.0:
        for v, a in zip(self.theta, anchor):
          v.assign(a + self.gamma * (v.numpy() - a))
    return {'loss': float(np.mean(losses))}


def project_gradient(g: np.ndarray, memory_grads: np.ndarray, margin: float = 0.5, eps: float = 1e-3) -> np.ndarray:
  """GEM's projection: the g~ closest to g with g~ . g_k >= 0 for every past-task gradient g_k.

  Solved in the dual (GEM eq. 11): min_v 1/2 v^T (G G^T) v + (G g)^T v subject to v >= margin, then
  g~ = G^T v + g. `eps` regularises G G^T, which is singular when memory gradients are collinear.
  """
  import quadprog  # pylint: disable=g-import-not-at-top
  gram = memory_grads @ memory_grads.T
  gram = 0.5 * (gram + gram.T) + eps * np.eye(len(gram))
  # quadprog minimises 1/2 x^T P x - a^T x subject to C^T x >= b; here a = -(G g).
  linear = -(memory_grads @ g)
  constraints = np.eye(len(gram))
  v = quadprog.solve_qp(gram.astype(np.float64), linear.astype(np.float64), constraints,
                        np.full(len(gram), margin))[0]
  return memory_grads.T @ v + g


@gin.register
class GEM(_SGDLearner):
  """GEM with `memories_per_task` slots per task, filled with the task's most recent samples (a ring buffer)."""

  name = 'gem'

  def __init__(self, model, lr: float = 0.1, memories_per_task: int = 256, margin: float = 0.5,
               batch_size: int = 10, seed: int = 0, jit_compile: bool = True):
    super().__init__(model, lr, seed, jit_compile)
    self.memories_per_task, self.margin, self.batch_size = memories_per_task, margin, batch_size
    self.dim = int(np.prod(model.input_shape[1:]))
    self.task_memory: Dict[int, Dict[str, np.ndarray]] = {}
    self._apply = tf.function(self._apply_fn, jit_compile=jit_compile)

  def _flat(self, grads):
    return np.concatenate([g.numpy().ravel() for g in grads])

  def _apply_fn(self, flat_grad):
    offset = 0
    for v in self.theta:
      n = int(np.prod(v.shape))
      v.assign_sub(self.lr * tf.reshape(flat_grad[offset:offset + n], v.shape))
      offset += n

  def _remember(self, x, y, task):
    mem = self.task_memory.setdefault(task, {'x': np.zeros((self.memories_per_task, self.dim), np.float32),
                                             'y': np.zeros((self.memories_per_task,), np.int64),
                                             'n': 0, 'next': 0})
    for xi, yi in zip(x, y):
      mem['x'][mem['next']], mem['y'][mem['next']] = xi, yi
      mem['next'] = (mem['next'] + 1) % self.memories_per_task
      mem['n'] = min(mem['n'] + 1, self.memories_per_task)

  def observe(self, x, y, task, first_epoch=True) -> Dict[str, float]:
    x, y = to_float(x), np.asarray(y, np.int64)
    if first_epoch:
      self._remember(x, y, task)
    past = sorted(t for t in self.task_memory if t != task)
    bx, by, bw = padded_batch(x, y, self.batch_size)
    loss, grads = self._grad(bx, by, bw)
    g = self._flat(grads)
    if past:
      memory_grads = []
      for t in past:
        mem = self.task_memory[t]
        memory_grads.append(self._flat(self._grad(mem['x'][:mem['n']], mem['y'][:mem['n']],
                                                  np.ones(mem['n'], np.float32))[1]))
      memory_grads = np.stack(memory_grads)
      if np.any(memory_grads @ g < 0):
        g = project_gradient(g.astype(np.float64), memory_grads.astype(np.float64), self.margin)
    self._apply(tf.constant(g, tf.float32))
    return {'loss': self.check_finite(loss, 'on an incoming batch')}

  def extra_state(self):
    out = {}
    for t, mem in self.task_memory.items():
      out.update({f'gem/{t}/x': mem['x'], f'gem/{t}/y': mem['y'], f'gem/{t}/n': np.array(mem['n']),
                  f'gem/{t}/next': np.array(mem['next'])})
    return out

  def restore_extra(self, state):
    tasks = sorted({int(k.split('/')[1]) for k in state if k.startswith('gem/')})
    self.task_memory = {t: {'x': state[f'gem/{t}/x'], 'y': state[f'gem/{t}/y'], 'n': int(state[f'gem/{t}/n']),
                            'next': int(state[f'gem/{t}/next'])} for t in tasks}
