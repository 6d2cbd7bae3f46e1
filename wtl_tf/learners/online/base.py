"""What the online (OSAKA) learners share: a Keras model as variables, the modulation core, MAML pre-training.

Parameters are split as in OSAKA's ConvNet (ALGORITHMS.md 2.4): conv and dense kernels and biases adapt in the inner
loop; BatchNorm's gamma/beta learn only in the outer loop (`InnerLoop(adapt_bn=False)`), so they get no modulation
parameters at all. The modulation S(m) sees only the inner-loop tensors:
  * C-MAML:               `PerTensorStepSize`: one learned, unconstrained scalar per tensor (init step_size);
  * sparse-C-MAML:        `ScaledBinaryMask`: alpha0 * 1[m >= 0] with a straight-through gradient;
  * sparse-ReLU-C-MAML:   `ReluStraightThrough`: relu(m), straight-through;
  * MAML / ANIL / fine-tuning pre-training: `Identity` / `FixedSubset('head')` (fixed step size, nothing learned).

Theta (every trainable tensor, BN included) and m are meta-learned by Adam. Without a `mask_optimizer`, one Adam
instance holds theta and m together, as OSAKA adds its step sizes to the meta-optimizer's parameters; with one, m has
its own optimizer (the sparse variants' gamma_m).

Pre-training (ALGORITHMS.md 5.2) is first- or second-order MAML on meta-batches of tasks; the objective is the
**mean** query loss over the tasks (OSAKA divides by the number of tasks, unlike the few-shot reference's sum).
All model calls go through `stateless_call(..., training=True)`: BatchNorm always normalises with batch statistics
(OSAKA's BN has `track_running_stats=False`), and the moving statistics are never read.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf import modulation as modulation_lib
from wtl_tf import optimizers
from wtl_tf import params as params_lib
from wtl_tf.models import layers


def accuracy(labels, logits):
  """Fraction of argmax predictions equal to the integer labels (float32 scalar)."""
  predictions = tf.argmax(logits, -1, output_type=tf.int32)
  return tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))


class OnlineLearner:
  """Base class: model, theta, the modulation's parameters m, Adam, MAML pre-training and checkpoint state.

  Args:
    model_fn: builds the backbone (e.g. OSAKA's ConvNet: `conv4(input_shape=(28, 28, 1), num_classes=10)`).
    modulation: S(m) over the inner-loop tensors; default `Identity(step_size=0.1)`.
    inner_loop: K, first/second order and whether BN adapts; default `InnerLoop(8, first_order=True,
      adapt_bn=False)`.
    optimizer: factory of the optimizer of theta (and of m without `mask_optimizer`); default Adam(1e-4, eps 1e-8).
    mask_optimizer: optional separate optimizer factory for m.
    seed: seeds m's initialisation (the model is seeded by model_fn).
    jit_compile: XLA for the compiled steps (off on CPU, where it was slower for these small convnets).
    tasks_in_flight: tasks of a meta-batch computed side by side (speed only; the result is the same).
    name: the learner's name in logs and results.
  """

  name = 'online'

  def __init__(self, model_fn: Callable[[], keras.Model], modulation: Optional[modulation_lib.Modulation] = None,
               inner_loop: Optional[inner_lib.InnerLoop] = None,
               optimizer: Callable[[], keras.optimizers.Optimizer] = optimizers.adam,
               mask_optimizer: Optional[Callable[[], keras.optimizers.Optimizer]] = None, seed: int = 0,
               jit_compile: bool = False, tasks_in_flight: int = 1, name: Optional[str] = None):
    check_positive_int('OnlineLearner', tasks_in_flight=tasks_in_flight)
    self.tasks_in_flight = tasks_in_flight
    if name:
      self.name = name
    self.modulation = modulation or modulation_lib.Identity(step_size=0.1)
    self.inner_loop = inner_loop or inner_lib.InnerLoop(num_steps=8, first_order=True, adapt_bn=False)
    self.seed = int(seed)
    self.jit_compile = bool(jit_compile)
    self.model = model_fn()
    if not self.inner_loop.first_order:
      layers.set_fused_batchnorm(self.model, False)  # Exact second derivatives (wtl_tf/models/layers.py).
      # Grappler's memory optimizer turns big gradient AddNs into temporary variables; with its dependency optimizer
      # on, a second-order step with the inner while loop fails on its second call (AlreadyExistsError on
      # '.../AddN_*/tmp_var', Conv4 with 64 channels, TF 2.21). Process-wide, so set only for second-order learners.
      tf.config.optimizer.set_experimental_options({'dependency_optimization': False})
    self.infos = params_lib.describe(self.model)
    self.theta = list(self.model.trainable_variables)
    self.non_trainable = list(self.model.non_trainable_variables)
    # The modulation only sees the tensors that may adapt in the inner loop (BN stays outer-loop only).
    self.inner = [i for i, info in enumerate(self.infos) if self.inner_loop.adapt_bn or not info.is_bn]
    self.inner_infos = tuple(self.infos[i] for i in self.inner)
    self.mask_names = self.modulation.mask_names(self.inner_infos)
    init = self.modulation.init_mask_params(self.inner_infos, self.seed)
    dtype = np.dtype(self.theta[0].dtype) if self.theta else np.float32  # Keras 3 dtypes are strings.
    self.masks = [tf.Variable(np.asarray(a, dtype), name=f'm_{i}') for i, a in enumerate(init)]
    if not any(s is not None for s in self.step_sizes(self.masks)) and self.inner_loop.num_steps:
      raise ValueError(f'{self.name}: no parameter takes part in the inner loop (modulation {self.modulation})')
    self.optimizer = optimizer()
    self.mask_optimizer = mask_optimizer() if (mask_optimizer and self.masks) else None
    self.optimizer.build(self.theta if self.mask_optimizer else self.theta + self.masks)
    if self.mask_optimizer:
      self.mask_optimizer.build(self.masks)
    self._pretrain_step = self._compile(self._pretrain_step_fn)
    self._evaluate_tasks = self._compile(self._evaluate_tasks_fn)

  def _compile(self, fn, input_signature=None):
    return tf.function(fn, input_signature=input_signature, jit_compile=self.jit_compile)

  # -- the modulation core -------------------------------------------------------------------------------
  def step_sizes(self, masks) -> tuple:
    """c * S(m) parallel to theta: a tensor for inner-loop tensors, None for outer-loop-only ones."""
    sizes = [None] * len(self.theta)
    for i, size in zip(self.inner, self.modulation.step_sizes(list(masks), self.inner_infos)):
      sizes[i] = size
    return tuple(sizes)

  def _read(self, variables) -> List[tf.Tensor]:
    return [tf.convert_to_tensor(v) for v in variables]

  def logits(self, params, x):
    return inner_lib.forward(self.model, params, self._read(self.non_trainable), x)

  def adapt(self, start, x, y, masks=None):
    """phi_K: K modulated first/second-order SGD steps on (x, y) from the parameters `start`."""
    sizes = self.step_sizes(self._read(self.masks) if masks is None else masks)
    return self.inner_loop.adapt(self.model, start, self._read(self.non_trainable), sizes, x, y)

  def task_loss(self, theta, masks, support_x, support_y, query_x, query_y):
    """(query loss, query accuracy) after adapting theta to the support set with step sizes c * S(m)."""
    fast = self.adapt(theta, support_x, support_y, masks)
    logits = self.logits(fast, query_x)
    return inner_lib.cross_entropy(query_y, logits), accuracy(query_y, logits)

  def mean_task_gradients(self, get_task: Callable, num_tasks):
    """Mean query loss, accuracy and gradients (theta then m) over tasks 0..num_tasks-1 (an int or a tensor).

    `get_task(i)` returns (support_x, support_y, query_x, query_y). A tf.while_loop takes `tasks_in_flight` tasks per
    iteration; they are independent, so the executor may run them side by side (slots past the last task are skipped
    with tf.cond). A varying number of tasks needs no retracing. On this 2-core CPU a 50-image task already keeps
    both cores busy (168 ms per task pair with 1 or 2 in flight), so the default is 1; more cores may profit.
    """
    n = len(self.theta)
    sources = self._read(self.theta) + self._read(self.masks)
    width = self.tasks_in_flight

    def one_task(i, sources):
      with tf.GradientTape() as tape:
        tape.watch(sources)
        loss, acc = self.task_loss(sources[:n], sources[n:], *get_task(i))
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

  def apply_gradients(self, grads):
    """One optimizer step on theta and m (gradients in theta-then-m order)."""
    n = len(self.theta)
    if self.mask_optimizer is None:
      self.optimizer.apply(list(grads), self.theta + self.masks)
    else:
      self.optimizer.apply(list(grads[:n]), self.theta)
      self.mask_optimizer.apply(list(grads[n:]), self.masks)

  # -- pre-training (ALGORITHMS.md 5.2) ------------------------------------------------------------------
  def _pretrain_step_fn(self, support_x, support_y, query_x, query_y):
    num_tasks = int(support_x.shape[0])  # Static: the meta-batch size.
    loss, acc, grads = self.mean_task_gradients(
        lambda i: (support_x[i], support_y[i], query_x[i], query_y[i]), num_tasks)
    self.apply_gradients(grads)
    return loss, acc

  def pretrain_step(self, episodes) -> Dict[str, float]:
    """One MAML meta-update on a meta-batch (episodes.Episode with a leading task axis); mean query loss/accuracy."""
    loss, acc = self._pretrain_step(episodes.support_images, episodes.support_labels, episodes.query_images,
                                    episodes.query_labels)
    return {'loss': float(loss), 'accuracy': float(acc)}

  def _evaluate_tasks_fn(self, support_x, support_y, query_x, query_y):
    theta, masks = self._read(self.theta), self._read(self.masks)
    # The meta-batch size is static here: an unrolled loop lets the executor run the tasks side by side.
    accuracies = [self.task_loss(theta, masks, support_x[i], support_y[i], query_x[i], query_y[i])[1]
                  for i in range(support_x.shape[0])]
    return tf.add_n(accuracies) / float(len(accuracies))

  def evaluate_tasks(self, episodes) -> float:
    """Mean query accuracy after adaptation over a meta-batch of validation tasks (no update)."""
    return float(self._evaluate_tasks(episodes.support_images, episodes.support_labels, episodes.query_images,
                                      episodes.query_labels))

  # -- the stream (subclasses) -----------------------------------------------------------------------------
  def observe(self, x, y) -> Dict[str, object]:
    """Sees one stream step: returns at least `accuracy` (measured before learning from it) and `loss`."""
    raise NotImplementedError

  # -- reporting ----------------------------------------------------------------------------------------------
  def modulations(self) -> Dict[str, np.ndarray]:
    """S(m) per masked group (unscaled), empty without learned modulation parameters."""
    mods = self.modulation.modulations(self._read(self.masks), self.inner_infos)
    return {i.name: s.numpy() for i, s in zip(self.inner_infos, mods) if s is not None}

  def mask_logits(self) -> Dict[str, np.ndarray]:
    return {n: m.numpy() for n, m in zip(self.mask_names, self.masks)}

  def sparsity(self) -> Dict[str, float]:
    """Fraction of exactly-zero S(m) per masked group plus size-weighted 'overall' (0 without a modulation)."""
    result = modulation_lib.group_sparsity(self.modulation, self._read(self.masks), self.inner_infos)
    return {k: float(v) for k, v in result.items()}

  def step_size_values(self) -> Dict[str, float]:
    """Mean c * S(m) per inner-loop tensor (the learned per-tensor step sizes for C-MAML)."""
    sizes = self.step_sizes(self._read(self.masks))
    return {info.name: float(tf.reduce_mean(s)) for info, s in zip(self.infos, sizes) if s is not None}

  # -- checkpoint state ------------------------------------------------------------------------------------
  def _model_vars(self):
    return [('theta', self.theta), ('non_trainable', self.non_trainable), ('mask', self.masks)]

  def _optimizer_vars(self):
    groups = [('opt', self.optimizer.variables)]
    if self.mask_optimizer is not None:
      groups.append(('mask_opt', self.mask_optimizer.variables))
    return groups

  def _state_vars(self, groups):
    return [(f'{prefix}/{i}', v) for prefix, variables in groups for i, v in enumerate(variables)]

  def model_state(self, with_optimizers: bool = True) -> Dict[str, np.ndarray]:
    """theta, BN statistics, m and (optionally) the optimizers' slots and step counters."""
    groups = self._model_vars() + (self._optimizer_vars() if with_optimizers else [])
    return {key: np.asarray(v.numpy()) for key, v in self._state_vars(groups)}

  def restore_model(self, state: Dict[str, np.ndarray], with_optimizers: bool = True):
    """Loads `model_state()`; a missing or mis-shaped entry means a checkpoint of another configuration."""
    groups = self._model_vars() + (self._optimizer_vars() if with_optimizers else [])
    for key, v in self._state_vars(groups):
      if key not in state:
        raise ValueError(f'checkpoint lacks {key}: it belongs to a different configuration')
      if tuple(state[key].shape) != tuple(v.shape):
        raise ValueError(f'checkpoint entry {key} has shape {state[key].shape}, the learner expects '
                         f'{tuple(v.shape)}: it belongs to a different configuration')
      v.assign(state[key])

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


def check_positive_int(owner: str, **values):
  for key, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'{owner}.{key} must be a positive int, got {value!r}')


def check_finite(owner: str, **values):
  for key, value in values.items():
    if value is not None and not math.isfinite(value):
      raise ValueError(f'{owner}.{key} must be finite, got {value!r}')


def as_batch(x, y, image_shape: Sequence[int], dtype=tf.float32):
  """Stream inputs as [n, *image_shape] tensors of `dtype` and int32 [n] labels."""
  x = tf.cast(tf.convert_to_tensor(x), dtype)
  if x.shape.rank == len(image_shape):
    x = x[..., tf.newaxis]
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(f'stream images must be [n, {", ".join(map(str, image_shape))}], got {tuple(x.shape)}')
  return x, tf.convert_to_tensor(y, tf.int32)
