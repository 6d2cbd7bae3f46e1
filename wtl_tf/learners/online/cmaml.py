"""Continual-MAML with prolonged adaptation (OSAKA's `observe_accumulate`) and its sparse variants.

The procedure is docs/ALGORITHMS.md 5.3 and 5.5 (sparse variants); the modulation decides what m is
(wtl_tf/learners/online/base.py). `meta_learning=False, prolonged=False` gives OSAKA's `never_retrain` MAML / ANIL
baselines. Nothing retraces: the buffer lives in fixed-size variables (buffer_limit + 1 slots) and the meta-update
loops over a tensor count of task pairs. Per-phase wall time accumulates in `timings`.
"""
import math
import time
from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf.learners.online import base as online_base
from wtl_tf.learners.online.base import OnlineLearner
from wtl_tf.errors import ConfigError, check_ints

PHASES = ('evaluation', 'adaptation', 'detection', 'meta_update', 'buffer')


def boundary_detected(loss_before: float, loss_after: float, gamma: Optional[float]) -> bool:
  """OSAKA's loss-jump rule: on only for 0 < gamma < 100, then a boundary iff loss_after + gamma <= loss_before."""
  if gamma is None or not 0 < gamma < 100:
    return False
  return loss_after + gamma <= loss_before


def buffer_pairs(n: int):
  """(support index, query index) of the meta-batch built from a buffer of n >= 1 steps (a single step pairs with
  itself); the query half starts at h = ceil(n / 2), and with odd n the last support step goes unused."""
  n2 = max(n, 2)
  h = (n2 + 1) // 2
  return [(i, min(h + i, n - 1)) for i in range(n2 - h)]


def update_weight(loss: float, update_lambda: Optional[float]) -> float:
  """The update modulation w = 1 - exp(-lambda * L) (1 when off)."""
  return 1.0 if update_lambda is None else 1.0 - math.exp(-update_lambda * loss)


@gin.register
class ContinualMAML(OnlineLearner):
  """C-MAML (prolonged adaptation, boundary detection, buffered meta-updates) on the modulation core.

  Args (beyond OnlineLearner's):
    gamma: task-boundary threshold on the loss jump; detection is on only for 0 < gamma < 100 (OSAKA's rule).
    update_lambda: lambda of the update modulation w = 1 - exp(-lambda * L); None = w = 1.
    buffer_limit: the meta-update happens when more than this many steps are buffered (OSAKA: 2 * 50).
    prolonged: adapt from the previous phi unless the previous step was a detected boundary (False: from theta).
    meta_learning: meta-update theta and m on the stream (False: OSAKA's never_retrain MAML/ANIL baselines).
    images_per_step, image_shape, dtype: static shape and type of a step's images (the buffer is allocated once).
  """

  name = 'c_maml'

  def __init__(self, model_fn, modulation=None, inner_loop=None, optimizer=None, mask_optimizer=None,
               gamma: Optional[float] = 2.5, update_lambda: Optional[float] = 0.25, buffer_limit: int = 100,
               prolonged: bool = True, meta_learning: bool = True, images_per_step: int = 50,
               image_shape: Sequence[int] = (28, 28, 1), dtype: str = 'float32', seed: int = 0,
               jit_compile: bool = False, tasks_in_flight: int = 1, name: Optional[str] = None):
    check_ints('ContinualMAML', buffer_limit=buffer_limit, images_per_step=images_per_step)
    for key, value in (('gamma', gamma), ('update_lambda', update_lambda)):
      if value is not None and not math.isfinite(value):
        raise ConfigError(f'ContinualMAML.{key} must be finite, got {value!r}')
    if update_lambda is not None and update_lambda < 0:
      raise ConfigError(f'ContinualMAML.update_lambda must be >= 0 or None, got {update_lambda}')
    kwargs = {'optimizer': optimizer} if optimizer else {}
    super().__init__(model_fn, modulation, inner_loop, mask_optimizer=mask_optimizer, seed=seed,
                     jit_compile=jit_compile, tasks_in_flight=tasks_in_flight, name=name, **kwargs)
    self.gamma, self.update_lambda, self.buffer_limit = gamma, update_lambda, buffer_limit
    self.prolonged, self.meta_learning = bool(prolonged), bool(meta_learning)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.dtype = tf.as_dtype(dtype)
    self.fast = [tf.Variable(tf.zeros_like(v), trainable=False, name=f'phi_{i}') for i, v in enumerate(self.theta)]
    slots = buffer_limit + 1
    self.buffer_x = tf.Variable(tf.zeros((slots, images_per_step) + self.image_shape, self.dtype), trainable=False,
                                name='buffer_x')
    self.buffer_y = tf.Variable(tf.zeros((slots, images_per_step), tf.int32), trainable=False, name='buffer_y')
    self.buffered = 0
    self.started = False
    self.last_tbd = False
    self.timings = {p: 0.0 for p in PHASES}
    self.counts = {p: 0 for p in PHASES}
    # Fixed signatures: one trace each, whatever the task, the buffer length or the Python types passed in.
    images = tf.TensorSpec((None,) + self.image_shape, self.dtype)
    labels = tf.TensorSpec((None,), tf.int32)
    step = (tf.TensorSpec((images_per_step,) + self.image_shape, self.dtype),
            tf.TensorSpec((images_per_step,), tf.int32))
    scalar = tf.TensorSpec((), tf.int32)
    self._loss_acc = self._compile(self._loss_acc_fn, (images, labels))
    self._adapt = self._compile(self._adapt_fn, (images, labels, tf.TensorSpec((), tf.bool)))
    self._meta_update = self._compile(self._meta_update_fn, (scalar,))
    self._push = self._compile(self._push_fn, step + (scalar,))

  def _loss_acc_fn(self, x, y):
    logits = self.logits(self.read(self.fast), x)
    return inner_lib.cross_entropy(y, logits), online_base.accuracy(y, logits)

  def _adapt_fn(self, x, y, from_theta):
    start = [tf.where(from_theta, t, p) for t, p in zip(self.read(self.theta), self.read(self.fast))]
    fast = self.adapt(start, x, y, key=self.noise_key(0, self.take_noise_positions(1)))
    for v, p in zip(self.fast, fast):
      v.assign(p)
    return tf.reduce_sum(fast[-1])  # Something to wait for.

  def _meta_update_fn(self, n):
    n2 = tf.maximum(n, 2)
    h = (n2 + 1) // 2

    def task(i):
      query = tf.minimum(h + i, n - 1)
      return (tf.gather(self.buffer_x, i), tf.gather(self.buffer_y, i), tf.gather(self.buffer_x, query),
              tf.gather(self.buffer_y, query))

    loss, _, grads = self.mean_task_gradients(task, n2 - h)
    weight = tf.ones_like(loss) if self.update_lambda is None else 1.0 - tf.exp(-self.update_lambda * loss)
    grads = [weight * g for g in grads]
    self.apply_gradients(grads[:len(self.theta)], grads[len(self.theta):])
    return loss, weight

  def _push_fn(self, x, y, slot):
    self.buffer_x[slot].assign(x)
    self.buffer_y[slot].assign(y)
    return slot

  def _timed(self, phase, fn, *args):
    start = time.perf_counter()
    out = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    self.timings[phase] += time.perf_counter() - start
    self.counts[phase] += 1
    return out

  def observe(self, x, y) -> Dict[str, object]:
    """One stream step; returns accuracy (before adapting; 0 at the very first step), loss, tbd and meta-update."""
    x, y = online_base.as_batch(x, y, self.image_shape, self.dtype)
    if not self.started:  # OSAKA: the first step only adapts (and buffers); its score is 0.
      self._timed('adaptation', self._adapt, x, y, tf.constant(True))
      if self.meta_learning:
        self._timed('buffer', self._push, x, y, tf.constant(0))
        self.buffered = 1
      self.started, self.last_tbd = True, False
      return {'accuracy': 0.0, 'loss': None, 'tbd': False, 'meta_update': False}
    loss_before, acc = self._timed('evaluation', self._loss_acc, x, y)
    from_theta = self.last_tbd or not self.prolonged
    self._timed('adaptation', self._adapt, x, y, tf.constant(from_theta))
    out = {'accuracy': float(acc), 'loss': self.check_finite(loss_before, 'on a stream step'), 'tbd': False,
           'meta_update': False}
    if not self.meta_learning:
      return out
    tbd = False
    if self.gamma is not None and 0 < self.gamma < 100:
      loss_after, _ = self._timed('detection', self._loss_acc, x, y)
      tbd = boundary_detected(float(loss_before), float(loss_after), self.gamma)
      out['loss_after'] = float(loss_after)
    if (tbd and self.buffered) or self.buffered > self.buffer_limit:
      meta_loss, weight = self._timed('meta_update', self._meta_update, tf.constant(self.buffered))
      out.update(meta_update=True, meta_loss=self.check_finite(meta_loss, 'in a meta-update'),
                 update_weight=float(weight), meta_tasks=len(buffer_pairs(self.buffered)))
      self.buffered = 0
    else:
      self._timed('buffer', self._push, x, y, tf.constant(self.buffered))
      self.buffered += 1
    self.last_tbd = tbd
    out['tbd'] = tbd
    return out

  def state(self):
    out = self.model_state()
    out.update({f'phi/{i}': v.numpy() for i, v in enumerate(self.fast)})
    out['buffer/x'] = self.buffer_x[:self.buffered].numpy()
    out['buffer/y'] = self.buffer_y[:self.buffered].numpy()
    return out

  def restore(self, state):
    self.restore_model(state)
    for i, v in enumerate(self.fast):
      v.assign(state[f'phi/{i}'])
    n = len(state['buffer/y'])
    if n:
      self.buffer_x[:n].assign(state['buffer/x'])
      self.buffer_y[:n].assign(state['buffer/y'])

  def stream_info(self):
    return {'buffered': self.buffered, 'started': self.started, 'last_tbd': self.last_tbd,
            'timings': dict(self.timings), 'counts': dict(self.counts)}

  def restore_stream_info(self, info):
    self.buffered, self.started, self.last_tbd = int(info['buffered']), bool(info['started']), bool(info['last_tbd'])
    self.timings.update(info.get('timings', {}))
    self.counts.update(info.get('counts', {}))

