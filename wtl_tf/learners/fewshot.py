"""Few-shot meta-learners in one class: (FO)MAML, ANIL, BOIL, Meta-SGD, exp-MAML, sparse-MAML, -ReLU-MAML, -MAML+.

They differ only in the modulation S(m) (wtl_tf/modulation.py) and gin switches. Meta-training step and evaluation:
docs/ALGORITHMS.md 1.11, 1.10. Replicas sum their tasks' gradients, which are all-reduced and applied once
('mean' divides by the global B per replica). Within a replica tasks are an unrolled loop in waves of
`tasks_in_flight`: a wave's independent tasks run concurrently, the next waits for its gradients to bound memory
(docs/PERFORMANCE.md); results do not depend on either. sparse-MAML+'s per-task noise is a pure function of (seed,
split, episode position), so runs resume without RNG state.
"""
import dataclasses
from typing import Callable, Dict, Optional

import gin
import keras
import numpy as np
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf import modulation as modulation_lib
from wtl_tf import optimizers
from wtl_tf.learners import core
from wtl_tf.errors import ConfigError

OUTER_LOSSES = ('sum', 'mean')
# Salts that keep the per-task noise of different splits apart.
SPLIT_SALT = {'train': 0, 'val': 1, 'test': 2, 'eval': 3}
PIXELS_IN_FLIGHT = 2 ** 19  # See auto_tasks_in_flight.


def default_jit_compile() -> bool:
  """XLA on accelerators; plain graph mode on CPU, where XLA measured much slower (docs/PERFORMANCE.md)."""
  return bool(tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('TPU'))


def auto_tasks_in_flight(tasks) -> int:
  """As many concurrent tasks as hold about PIXELS_IN_FLIGHT input pixels (at least 1): small tasks (Omniglot) need
  company to keep the cores busy, big ones (miniImageNet) do not and then save activation memory one at a time."""
  per_task = (np.prod(tasks.support_images.shape[1:]) + np.prod(tasks.query_images.shape[1:]))
  return max(1, int(PIXELS_IN_FLIGHT // per_task))


def accuracy(labels, logits):
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                                tf.float32))


@gin.register
class FewShotLearner(core.LearnerCore):
  """A MAML-family meta-learner on the learner core (wtl_tf/learners/core.py).

  Args:
    model_fn: builds the backbone (a Keras model), called with no arguments inside the strategy scope.
    modulation: S(m); default `Identity` (MAML/FOMAML) with step size 0.1.
    inner_loop: training inner loop (K, first/second order, BN in or out of the inner loop).
    eval_inner_loop: the evaluation inner loop; default the training one; always run first order (same values).
    theta_optimizer: optimizer factory for theta (see wtl_tf/optimizers.py); default Adam(1e-3, eps 1e-8).
    mask_optimizer: optimizer factory for m; default Adam(0.0075). Unused by modulations without parameters.
    clamp_outer_gradients: clip theta gradients (not mask gradients) elementwise to [-c, c]; None = off.
    outer_loss: 'sum' over the tasks of the meta-batch (the reference) or 'mean'.
    strategy: a tf.distribute strategy; default the current one.
    seed: seeds the mask initialisation and the per-task noise of sparse-MAML+ (the model is seeded by model_fn).
    jit_compile: compile each replica's step with XLA; None = `default_jit_compile()`.
    tasks_in_flight: a replica's tasks per concurrent wave (None = `auto_tasks_in_flight`); speed/memory only.
    name: the learner's name in logs and results.
  """

  def __init__(self, model_fn: Callable[[], keras.Model],
               modulation: Optional[modulation_lib.Modulation] = None,
               inner_loop: Optional[inner_lib.InnerLoop] = None,
               eval_inner_loop: Optional[inner_lib.InnerLoop] = None,
               theta_optimizer: Callable[[], keras.optimizers.Optimizer] = optimizers.adam,
               mask_optimizer: Optional[Callable[[], keras.optimizers.Optimizer]] = None,
               clamp_outer_gradients: Optional[float] = None, outer_loss: str = 'sum',
               strategy: Optional[tf.distribute.Strategy] = None, seed: int = 0,
               jit_compile: Optional[bool] = None, tasks_in_flight: Optional[int] = None, name: str = 'maml'):
    if outer_loss not in OUTER_LOSSES:
      raise ConfigError(f'FewShotLearner.outer_loss must be one of {OUTER_LOSSES}, got {outer_loss!r}')
    if clamp_outer_gradients is not None and not clamp_outer_gradients > 0:
      raise ConfigError(f'FewShotLearner.clamp_outer_gradients must be positive or None, got {clamp_outer_gradients}')
    if tasks_in_flight is not None and tasks_in_flight < 1:
      raise ConfigError(f'FewShotLearner.tasks_in_flight must be positive or None, got {tasks_in_flight}')
    self.inner_loop = inner_loop or inner_lib.InnerLoop()
    eval_loop = eval_inner_loop or self.inner_loop
    self.eval_inner_loop = dataclasses.replace(eval_loop, first_order=True, adapt_bn=self.inner_loop.adapt_bn)
    self.clamp = clamp_outer_gradients
    self.outer_loss = outer_loss
    self.tasks_in_flight = tasks_in_flight
    self.jit_compile = default_jit_compile() if jit_compile is None else bool(jit_compile)
    super().__init__(model_fn, modulation, adapt_bn=self.inner_loop.adapt_bn,
                     second_order=not self.inner_loop.first_order, theta_optimizer=theta_optimizer,
                     mask_optimizer=mask_optimizer or (lambda: optimizers.adam(learning_rate=0.0075)), seed=seed,
                     strategy=strategy, name=name)
    self.check_adapts(self.inner_loop.num_steps)
    replica_train = self._replica_train
    replica_eval = self._replica_eval
    if self.jit_compile:
      replica_train = tf.function(replica_train, jit_compile=True)
      replica_eval = tf.function(replica_eval, jit_compile=True)
    self._replica_train_fn, self._replica_eval_fn = replica_train, replica_eval
    self._train_step = tf.function(self._train_step_fn)
    self._eval_step = tf.function(self._eval_step_fn)
    self._global_batch = None

  @property
  def num_replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def _read(self):
    return self.read(self.theta), self.read(self.non_trainable), self.read(self.mask_logits)

  def _task(self, theta, non_trainable, masks, loop, support_x, support_y, query_x, noise_key):
    """Logits of the query set after adapting to the support set."""
    sizes = self.step_sizes(masks, noise_key)
    fast = loop.adapt(self.model, theta, non_trainable, sizes, support_x, support_y)
    return inner_lib.forward(self.model, fast, non_trainable, query_x)

  def _replica_train(self, tasks, positions):
    theta, non_trainable, masks = self._read()
    count = tasks.support_images.shape[0]
    wave = min(self.tasks_in_flight or auto_tasks_in_flight(tasks), count)
    grads, loss_sum, acc_sum, previous = None, 0.0, 0.0, []
    for start in range(0, count, wave):
      # A wave's tasks run concurrently; the next wave waits for these gradients (bounds memory, module docstring).
      with tf.control_dependencies(previous), tf.GradientTape() as tape:
        tape.watch(theta)
        tape.watch(masks)
        losses, accuracies = [], []
        for i in range(start, min(start + wave, count)):
          logits = self._task(theta, non_trainable, masks, self.inner_loop, tasks.support_images[i],
                              tasks.support_labels[i], tasks.query_images[i],
                              self.noise_key(SPLIT_SALT['train'], positions[i]))
          losses.append(inner_lib.cross_entropy(tasks.query_labels[i], logits))
          accuracies.append(accuracy(tasks.query_labels[i], logits))
        wave_loss = tf.add_n(losses)
        objective = wave_loss if self.outer_loss == 'sum' else wave_loss / float(self._global_batch)
      wave_grads = tape.gradient(objective, theta + masks, unconnected_gradients=tf.UnconnectedGradients.ZERO)
      grads = wave_grads if grads is None else [a + b for a, b in zip(grads, wave_grads)]
      loss_sum, acc_sum = loss_sum + wave_loss, acc_sum + tf.add_n(accuracies)
      previous = wave_grads
    values = list(grads) + [loss_sum, acc_sum]
    if self.num_replicas == 1:
      return values
    # One flat vector per replica: a single all-reduce (and MultiWorker's reduce does not take nested lists).
    return tf.concat([tf.reshape(v, [-1]) for v in values], 0)

  def _train_step_fn(self, tasks, positions):
    per_replica = self.strategy.run(self._replica_train_fn, args=(tasks, positions))
    if self.num_replicas == 1:
      values = per_replica
    else:
      flat = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      shapes = [v.shape for v in self.theta + self.mask_logits] + [(), ()]
      parts = tf.split(flat, [int(np.prod(s)) for s in shapes])
      values = [tf.reshape(p, s) for p, s in zip(parts, shapes)]
    n = len(self.theta)
    g_theta, g_masks, loss_sum, acc_sum = values[:n], values[n:-2], values[-2], values[-1]
    if self.clamp is not None:
      g_theta = [tf.clip_by_value(g, -self.clamp, self.clamp) for g in g_theta]
    self.apply_gradients(g_theta, g_masks)
    batch = float(self._global_batch)
    return {'loss': loss_sum / batch, 'accuracy': acc_sum / batch}

  def train_step(self, tasks, positions) -> Dict[str, tf.Tensor]:
    """One meta-update on a meta-batch; returns the mean query loss and accuracy over its tasks (before the update).

    Raises TrainingDiverged when that loss is NaN or infinite.

    Args:
      tasks: Episode-like (support_images [B, ways*shots, H, W, C], support_labels [B, ways*shots], query_images
        [B, ways*queries, H, W, C], query_labels [B, ways*queries]); per-replica values from a distributed dataset,
        or plain arrays (then split across replicas here).
      positions: int64 [B], the tasks' global episode positions (they seed sparse-MAML+'s noise).
    """
    if self._global_batch is None and not isinstance(positions, tf.distribute.DistributedValues):
      self.set_global_batch(len(positions))
    tasks, positions = self._distribute(tasks, positions)
    if self._global_batch is None:
      raise ValueError('call set_global_batch(B) before feeding distributed meta-batches')
    out = self._train_step(tasks, positions)
    self.check_finite(out['loss'], 'in a meta-training step')
    return out

  def set_global_batch(self, global_batch: int):
    """Fixes the meta-batch size B (static: the step compiles once)."""
    if global_batch % self.num_replicas:
      raise ConfigError(f'meta-batch size {global_batch} is not a multiple of the {self.num_replicas} replicas')
    if self._global_batch not in (None, global_batch):
      raise ConfigError(f'meta-batch size is fixed at {self._global_batch}, got {global_batch}')
    self._global_batch = int(global_batch)

  def _distribute(self, tasks, positions):
    """Plain [B, ...] arrays -> per-replica slices (replica r gets tasks r*B/R .. (r+1)*B/R - 1)."""
    if isinstance(positions, tf.distribute.DistributedValues):
      return tasks, positions
    positions = tf.convert_to_tensor(positions, tf.int64)
    tasks = type(tasks)(*(tf.convert_to_tensor(x) for x in tasks))
    n = int(positions.shape[0])
    if self.num_replicas == 1:
      return tasks, positions
    if n % self.num_replicas:
      raise ValueError(f'a batch of {n} tasks does not split over {self.num_replicas} replicas')
    per = n // self.num_replicas

    def part(ctx):
      r = ctx.replica_id_in_sync_group
      return type(tasks)(*(x[r * per:(r + 1) * per] for x in tasks)), positions[r * per:(r + 1) * per]
    return self.strategy.experimental_distribute_values_from_function(part)

  def _replica_eval(self, tasks, positions, salt):
    theta, non_trainable, masks = self._read()
    accuracies, losses = [], []
    for i in range(tasks.support_images.shape[0]):
      logits = self._task(theta, non_trainable, masks, self.eval_inner_loop, tasks.support_images[i],
                          tasks.support_labels[i], tasks.query_images[i], self.noise_key(salt, positions[i]))
      accuracies.append(accuracy(tasks.query_labels[i], logits))
      losses.append(inner_lib.cross_entropy(tasks.query_labels[i], logits))
    return tf.stack(accuracies), tf.stack(losses)

  def _eval_step_fn(self, tasks, positions, salt):
    accuracies, losses = self.strategy.run(self._replica_eval_fn, args=(tasks, positions, salt))
    if self.num_replicas == 1:
      return accuracies, losses
    return self.strategy.gather(accuracies, axis=0), self.strategy.gather(losses, axis=0)

  def eval_step(self, tasks, positions, split: str = 'eval'):
    """Per-task query accuracy and loss [B] after adaptation with `eval_inner_loop` (no update)."""
    tasks, positions = self._distribute(tasks, positions)
    return self._eval_step(tasks, positions, tf.constant(SPLIT_SALT[split], tf.int64))

  def adapt(self, support_images, support_labels, position: int = 0, split: str = 'train', loop=None):
    """phi_K for one task (tuple parallel to theta), with the learner's masks."""
    theta, non_trainable, masks = self._read()
    loop = loop or self.inner_loop
    sizes = self.step_sizes(masks, self.noise_key(SPLIT_SALT[split], position))
    return loop.adapt(self.model, theta, non_trainable, sizes, tf.convert_to_tensor(support_images),
                      tf.convert_to_tensor(support_labels))

  def logits(self, params, images):
    return inner_lib.forward(self.model, params, self.read(self.non_trainable), tf.convert_to_tensor(images))

  def modulations(self, position: int = 0, split: str = 'train') -> Dict[str, np.ndarray]:
    """S(m) per masked group (unscaled), as the task at `position` of `split` would use it."""
    return super().modulations(self.noise_key(SPLIT_SALT[split], position))

  def sparsity(self, position: int = 0, split: str = 'train') -> Dict[str, float]:
    """The core's sparsity report for the masks of the task at `position` of `split`."""
    return super().sparsity(self.noise_key(SPLIT_SALT[split], position))

  def state(self, with_optimizers: bool = True) -> Dict[str, np.ndarray]:
    """Everything a resumed run needs (theta, BN statistics, masks, optimizer slots and step counters)."""
    return self.model_state(with_optimizers)

  def restore(self, state: Dict[str, np.ndarray]):
    """Loads `state()`; optimizer entries are optional (a 'best' checkpoint holds only the model and masks)."""
    self.restore_model(state)
