"""What the online (OSAKA) learners share: the modulation core, MAML pre-training, per-task meta-gradients.

Conv and dense tensors adapt; BN learns in the outer loop only, without m. S(m) is `PerTensorStepSize` (C-MAML),
`ScaledBinaryMask` (sparse-C-MAML), `ReluStraightThrough` (sparse-ReLU-C-MAML) or `Identity` / `FixedSubset('head')`
(MAML / ANIL / fine-tuning). Without a `mask_optimizer` one Adam holds theta and m (as OSAKA's holds its step sizes);
pre-training minimises the **mean** query loss over tasks. See docs/ALGORITHMS.md 2.4, 5.2, 5.5 and gotcha 1.
"""
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf import modulation as modulation_lib
from wtl_tf import optimizers
from wtl_tf.learners import core
from wtl_tf.errors import ConfigError, check_ints


def accuracy(labels, logits):
  """Fraction of argmax predictions equal to the integer labels (float32 scalar)."""
  predictions = tf.argmax(logits, -1, output_type=tf.int32)
  return tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))


class OnlineLearner(core.LearnerCore):
  """Base class on the learner core: MAML pre-training and the per-task gradients of the meta-updates.

  Args:
    model_fn: builds the backbone (e.g. OSAKA's ConvNet: `conv4(input_shape=(28, 28, 1), num_classes=10)`).
    modulation: S(m) over the inner-loop tensors; default `Identity(step_size=0.1)`.
    inner_loop: K, first/second order and whether BN adapts; default `InnerLoop(8, first_order=True,
      adapt_bn=False)`.
    optimizer: factory of the optimizer of theta (and of m without `mask_optimizer`); default Adam(1e-4, eps 1e-8).
    mask_optimizer: optional separate optimizer factory for m.
    seed: seeds m's initialisation and the modulation noise (the model is seeded by model_fn).
    jit_compile: XLA for the compiled steps (off by default: slower on CPU for these small convnets).
    tasks_in_flight: tasks of a meta-batch computed side by side (speed only; the result is the same).
    name: the learner's name in logs and results.
  """

  name = 'online'

  def __init__(self, model_fn: Callable[[], keras.Model], modulation: Optional[modulation_lib.Modulation] = None,
               inner_loop: Optional[inner_lib.InnerLoop] = None,
               optimizer: Callable[[], keras.optimizers.Optimizer] = optimizers.adam,
               mask_optimizer: Optional[Callable[[], keras.optimizers.Optimizer]] = None, seed: int = 0,
               jit_compile: bool = False, tasks_in_flight: int = 1, name: Optional[str] = None):
    check_ints('OnlineLearner', tasks_in_flight=tasks_in_flight)
    self.tasks_in_flight = tasks_in_flight
    self.inner_loop = inner_loop or inner_lib.InnerLoop(num_steps=8, first_order=True, adapt_bn=False)
    self.jit_compile = bool(jit_compile)
    super().__init__(model_fn, modulation or modulation_lib.Identity(step_size=0.1),
                     adapt_bn=self.inner_loop.adapt_bn, second_order=not self.inner_loop.first_order,
                     theta_optimizer=optimizer, mask_optimizer=mask_optimizer, seed=seed, name=name)
    self.check_adapts(self.inner_loop.num_steps)
    self._pretrain_step = self._compile(self._pretrain_step_fn)
    self._evaluate_tasks = self._compile(self._evaluate_tasks_fn)

  def _compile(self, fn, input_signature=None):
    return tf.function(fn, input_signature=input_signature, jit_compile=self.jit_compile)

  def logits(self, params, x):
    return inner_lib.forward(self.model, params, self.read(self.non_trainable), x)

  def adapt(self, start, x, y, masks=None, key=None):
    """phi_K: K modulated first/second-order SGD steps on (x, y) from the parameters `start`."""
    sizes = self.step_sizes(self.read(self.mask_logits) if masks is None else masks, key)
    return self.inner_loop.adapt(self.model, start, self.read(self.non_trainable), sizes, x, y)

  def task_loss(self, theta, masks, support_x, support_y, query_x, query_y, key=None):
    """(query loss, query accuracy) after adapting theta to the support set with step sizes c * S(m)."""
    fast = self.adapt(theta, support_x, support_y, masks, key)
    logits = self.logits(fast, query_x)
    return inner_lib.cross_entropy(query_y, logits), accuracy(query_y, logits)

  def mean_task_gradients(self, get_task: Callable, num_tasks):
    """Mean query loss, accuracy and gradients (theta then m) over tasks 0..num_tasks-1 (an int or a tensor).

    `get_task(i)` returns (support_x, support_y, query_x, query_y); each task gets a fresh noise key. A tensor count
    runs a tf.while_loop of `tasks_in_flight` side-by-side tasks (no retracing; default 1, docs/PERFORMANCE.md).
    """
    n = len(self.theta)
    sources = self.read(self.theta) + self.read(self.mask_logits)
    width = self.tasks_in_flight
    first = self.take_noise_positions(num_tasks)

    def one_task(i, sources):
      with tf.GradientTape() as tape:
        tape.watch(sources)
        key = self.noise_key(0, first + tf.cast(i, tf.int64))
        loss, acc = self.task_loss(sources[:n], sources[n:], *get_task(i), key=key)
      grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
      return [loss, acc] + grads

    def nothing(sources):
      return [tf.zeros([], sources[0].dtype), tf.constant(0.0)] + [tf.zeros_like(s) for s in sources]

    if isinstance(num_tasks, int):
      # A static count (pre-training meta-batches) is unrolled: the tasks may run side by side, and second-order
      # gradients avoid nesting the inner while loop in another one (TensorFlow's AddN rewrite fails there).
      totals = nothing(sources)
      for i in range(num_tasks):
        totals = [a + b for a, b in zip(totals, one_task(i, sources))]
      count = tf.cast(num_tasks, sources[0].dtype)
      return totals[0] / count, totals[1] / float(num_tasks), [g / count for g in totals[2:]]

    # theta and m travel as (unchanged) loop variables, so the tapes in the body watch the body's own tensors.
    def body(i, totals, sources):
      parts = [one_task(i, sources)]  # The loop condition guarantees task i exists.
      for j in range(1, width):
        parts.append(tf.cond(i + j < num_tasks, lambda j=j: one_task(i + j, sources), lambda: nothing(sources)))
      return i + width, [tf.add_n([t] + [p[k] for p in parts]) for k, t in enumerate(totals)], sources

    totals = nothing(sources)
    _, totals, _ = tf.while_loop(lambda i, *_: i < num_tasks, body, (tf.constant(0), totals, sources))
    count = tf.cast(num_tasks, sources[0].dtype)
    return totals[0] / count, totals[1] / tf.cast(count, tf.float32), [g / count for g in totals[2:]]

  def _pretrain_step_fn(self, support_x, support_y, query_x, query_y):
    """One MAML meta-update of OSAKA's pre-training (docs/ALGORITHMS.md 5.2)."""
    num_tasks = int(support_x.shape[0])  # Static: the meta-batch size.
    loss, acc, grads = self.mean_task_gradients(
        lambda i: (support_x[i], support_y[i], query_x[i], query_y[i]), num_tasks)
    self.apply_gradients(grads[:len(self.theta)], grads[len(self.theta):])
    return loss, acc

  def pretrain_step(self, episodes) -> Dict[str, float]:
    """One MAML meta-update on a meta-batch (episodes.Episode with a leading task axis); mean query loss/accuracy."""
    loss, acc = self._pretrain_step(episodes.support_images, episodes.support_labels, episodes.query_images,
                                    episodes.query_labels)
    return {'loss': self.check_finite(loss, 'in a pre-training meta-update'), 'accuracy': float(acc)}

  def _evaluate_tasks_fn(self, support_x, support_y, query_x, query_y):
    theta, masks = self.read(self.theta), self.read(self.mask_logits)
    count = support_x.shape[0]
    first = self.take_noise_positions(count)
    # The meta-batch size is static here: an unrolled loop lets the executor run the tasks side by side.
    accuracies = [self.task_loss(theta, masks, support_x[i], support_y[i], query_x[i], query_y[i],
                                 self.noise_key(0, first + i))[1] for i in range(count)]
    return tf.add_n(accuracies) / float(len(accuracies))

  def evaluate_tasks(self, episodes) -> float:
    """Mean query accuracy after adaptation over a meta-batch of validation tasks (no update)."""
    return float(self._evaluate_tasks(episodes.support_images, episodes.support_labels, episodes.query_images,
                                      episodes.query_labels))

  def observe(self, x, y) -> Dict[str, object]:
    """Sees one stream step: returns at least `accuracy` (measured before learning from it) and `loss`."""
    raise NotImplementedError

  def step_size_values(self) -> Dict[str, float]:
    """Mean c * S(m) per inner-loop tensor (the learned per-tensor step sizes for C-MAML)."""
    sizes = self.step_sizes(self.read(self.mask_logits), self.noise_key(0, 0))
    return {info.name: float(tf.reduce_mean(s)) for info, s in zip(self.infos, sizes) if s is not None}

  def state(self) -> Dict[str, np.ndarray]:
    """Everything a resumed stream needs (subclasses add their stream state)."""
    return self.model_state()

  def restore(self, state: Dict[str, np.ndarray]):
    self.restore_model(state)

  def stream_info(self) -> Dict[str, object]:
    """JSON-able host-side stream state (subclasses)."""
    return {}

  def restore_stream_info(self, info: Dict[str, object]):
    del info


def as_batch(x, y, image_shape: Sequence[int], dtype=tf.float32):
  """Stream inputs as [n, *image_shape] tensors of `dtype` and int32 [n] labels."""
  x = tf.cast(tf.convert_to_tensor(x), dtype)
  if x.shape.rank == len(image_shape):
    x = x[..., tf.newaxis]
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise ConfigError(f'stream images must be [n, {", ".join(map(str, image_shape))}], got {tuple(x.shape)}')
  return x, tf.convert_to_tensor(y, tf.int32)
