"""Few-shot meta-learners on the one modulation core (ALGORITHMS.md 1.2-1.11).

One class covers MAML (second order), FOMAML, ANIL, BOIL, Meta-SGD, exp-MAML, sparse-MAML, sparse-ReLU-MAML and
sparse-MAML+: they differ only in the modulation S(m) (wtl_tf/modulation.py) and a few switches, which gin sets.
One meta-training step (1.11) on a meta-batch of B tasks:

    for each task tau:  s = c * S(m) (fresh noise per task for sparse-MAML+)
                        phi_K = K modulated SGD steps on the support set        (wtl_tf/inner_loop.py)
                        L_tau = CE(f(query_x; phi_K), query_y)
    L = sum_tau L_tau   ('sum', the reference) or mean_tau L_tau ('mean')
    g_theta = dL/dtheta (clipped elementwise to [-c, c] with `clamp_outer_gradients`);  g_m = dL/dm
    theta <- opt_theta(theta, g_theta);  m <- opt_m(m, g_m)       (two optimizers, two learning rates)

Distribution: the tasks of a meta-batch are split across the replicas of a `tf.distribute` strategy. Each replica
returns the gradients of its tasks' part of L; they are summed across replicas (all-reduce) and the optimizers apply
them once in cross-replica context, so the step equals the single-device step up to float summation order. With
'mean' the per-replica objective is already divided by the global B.

Within a replica the B/R tasks are an unrolled Python loop in one graph, in waves of `tasks_in_flight`. The tasks
of a wave are independent, so TensorFlow's executor runs their small ops concurrently: the CPU-friendly way to batch
them (28x28 tasks: 1.6x the tasks/s of a sequential tf.while_loop over tasks in a probe here). A wave starts once the
previous wave's gradients exist, which bounds the activations alive at once for big tasks (84x84: one task at a
time, 1.35 instead of 2.0 GB peak at the same speed). Gradients are summed over waves, so results do not depend on it.

Evaluation (1.10): the same function with `eval_inner_loop` (by default the training K, alpha and masks), batch
statistics everywhere, one task at a time for BN purposes (a batch of tasks is only a batch of independent tasks).

Tasks carry their global episode position; sparse-MAML+'s noise for a task is a pure function of (seed, split,
position), so runs are reproducible and resumable without any RNG state.
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import gin
import keras
import numpy as np
import tensorflow as tf

from wtl_tf import inner_loop as inner_lib
from wtl_tf import modulation as modulation_lib
from wtl_tf import optimizers
from wtl_tf import params as params_lib
from wtl_tf.models import layers

OUTER_LOSSES = ('sum', 'mean')
# Salts that keep the per-task noise of different splits apart.
SPLIT_SALT = {'train': 0, 'val': 1, 'test': 2, 'eval': 3}
PIXELS_IN_FLIGHT = 2 ** 19  # See auto_tasks_in_flight.


def default_jit_compile() -> bool:
  """XLA on accelerators (unmeasured here); plain graph mode on CPU, where XLA was ~10x slower for these steps
  (tools/benchmark.py fewshot --jit=off,on: config c 3.0 vs 29 tasks/s; config b did not finish 8 steps in 170 s)."""
  return bool(tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('TPU'))


def auto_tasks_in_flight(tasks) -> int:
  """As many concurrent tasks as hold about PIXELS_IN_FLIGHT input pixels (at least 1).

  Small tasks (Omniglot: 8 of 5-way 1-shot) keep both cores busy when run side by side; big ones (miniImageNet:
  1 task) already do, and running them one after the other halves the activation memory alive at once.
  """
  per_task = (np.prod(tasks.support_images.shape[1:]) + np.prod(tasks.query_images.shape[1:]))
  return max(1, int(PIXELS_IN_FLIGHT // per_task))


def accuracy(labels, logits):
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                                tf.float32))


@gin.register
class FewShotLearner:
  """A MAML-family meta-learner.

  Args:
    model_fn: builds the backbone (a Keras model), called with no arguments inside the strategy scope.
    modulation: S(m); default `Identity` (MAML/FOMAML) with step size 0.1.
    inner_loop: training inner loop (K, first/second order, BN in or out of the inner loop).
    eval_inner_loop: the evaluation inner loop; default the training one (the reference's test-time K is the
      training K). Evaluation never needs second-order graphs, so it always runs first order (same values).
    theta_optimizer: optimizer factory for theta (see wtl_tf/optimizers.py); default Adam(1e-3, eps 1e-8).
    mask_optimizer: optimizer factory for m; default Adam(0.0075). Unused by modulations without parameters.
    clamp_outer_gradients: clip theta gradients (not mask gradients) elementwise to [-c, c]; None = off.
    outer_loss: 'sum' over the tasks of the meta-batch (the reference) or 'mean'.
    strategy: a tf.distribute strategy; default the current one.
    seed: seeds the mask initialisation and the per-task noise of sparse-MAML+ (the model is seeded by model_fn).
    jit_compile: compile each replica's step with XLA; None = `default_jit_compile()`.
    tasks_in_flight: how many of a replica's tasks may run concurrently (None = `auto_tasks_in_flight`); later
      waves start once the previous wave's gradients exist, which bounds peak memory. Speed/memory only: the
      result is the same.
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
      raise ValueError(f'FewShotLearner.outer_loss must be one of {OUTER_LOSSES}, got {outer_loss!r}')
    if clamp_outer_gradients is not None and not clamp_outer_gradients > 0:
      raise ValueError(f'FewShotLearner.clamp_outer_gradients must be positive or None, got {clamp_outer_gradients}')
    self.name = name
    self.modulation = modulation or modulation_lib.Identity()
    self.inner_loop = inner_loop or inner_lib.InnerLoop()
    eval_loop = eval_inner_loop or self.inner_loop
    self.eval_inner_loop = dataclasses.replace(eval_loop, first_order=True)
    self.clamp = clamp_outer_gradients
    self.outer_loss = outer_loss
    self.seed = int(seed)
    if tasks_in_flight is not None and tasks_in_flight < 1:
      raise ValueError(f'FewShotLearner.tasks_in_flight must be positive or None, got {tasks_in_flight}')
    self.tasks_in_flight = tasks_in_flight
    self.jit_compile = default_jit_compile() if jit_compile is None else bool(jit_compile)
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self.model = model_fn()
      if not self.inner_loop.first_order:
        layers.set_fused_batchnorm(self.model, False)  # Exact second derivatives (wtl_tf/models/layers.py).
      self.infos = params_lib.describe(self.model)
      self.theta = list(self.model.trainable_variables)
      self.non_trainable = list(self.model.non_trainable_variables)
      self.mask_names = self.modulation.mask_names(self.infos)
      init = self.modulation.init_mask_params(self.infos, self.seed)
      self.masks = [keras.Variable(np.asarray(a, np.float32), name=f'mask_{i}') for i, a in enumerate(init)]
      self.theta_optimizer = theta_optimizer()
      self.theta_optimizer.build(self.theta)
      self.mask_optimizer = None
      if self.masks:
        self.mask_optimizer = (mask_optimizer or (lambda: optimizers.adam(learning_rate=0.0075)))()
        self.mask_optimizer.build(self.masks)
    adapted = self.inner_loop.select(self.modulation.step_sizes(
        [tf.convert_to_tensor(m) for m in self.masks], self.infos, _noise_key(0, 0, 0)), self.infos)
    if not any(s is not None for s in adapted) and self.inner_loop.num_steps:
      raise ValueError(f'{name}: no parameter takes part in the inner loop (modulation {self.modulation}, '
                       f'adapt_bn={self.inner_loop.adapt_bn})')
    replica_train = self._replica_train
    replica_eval = self._replica_eval
    if self.jit_compile:
      replica_train = tf.function(replica_train, jit_compile=True)
      replica_eval = tf.function(replica_eval, jit_compile=True)
    self._replica_train_fn, self._replica_eval_fn = replica_train, replica_eval
    self._train_step = tf.function(self._train_step_fn)
    self._eval_step = tf.function(self._eval_step_fn)
    self._global_batch = None

  # -- per-task pieces -------------------------------------------------------------------------------
  @property
  def num_replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def _read(self):
    return ([tf.convert_to_tensor(v) for v in self.theta], [tf.convert_to_tensor(v) for v in self.non_trainable],
            [tf.convert_to_tensor(v) for v in self.masks])

  def _step_sizes(self, masks, noise_key, loop):
    return loop.select(self.modulation.step_sizes(masks, self.infos, noise_key), self.infos)

  def _task(self, theta, non_trainable, masks, loop, support_x, support_y, query_x, noise_key):
    """Logits of the query set after adapting to the support set."""
    sizes = self._step_sizes(masks, noise_key, loop)
    fast = loop.adapt(self.model, theta, non_trainable, sizes, support_x, support_y)
    return inner_lib.forward(self.model, fast, non_trainable, query_x)

  # -- meta-training -----------------------------------------------------------------------------------
  def _replica_train(self, tasks, positions):
    theta, non_trainable, masks = self._read()
    count = tasks.support_images.shape[0]
    wave = min(self.tasks_in_flight or auto_tasks_in_flight(tasks), count)
    grads, loss_sum, acc_sum, previous = None, 0.0, 0.0, []
    for start in range(0, count, wave):
      # Tasks of a wave are independent, so the executor runs them concurrently; the next wave waits for this one's
      # gradients, which bounds the activations alive at once (module docstring).
      with tf.control_dependencies(previous), tf.GradientTape() as tape:
        tape.watch(theta)
        tape.watch(masks)
        losses, accuracies = [], []
        for i in range(start, min(start + wave, count)):
          logits = self._task(theta, non_trainable, masks, self.inner_loop, tasks.support_images[i],
                              tasks.support_labels[i], tasks.query_images[i],
                              _noise_key(self.seed, SPLIT_SALT['train'], positions[i]))
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
      shapes = [v.shape for v in self.theta + self.masks] + [(), ()]
      parts = tf.split(flat, [int(np.prod(s)) for s in shapes])
      values = [tf.reshape(p, s) for p, s in zip(parts, shapes)]
    n = len(self.theta)
    g_theta, g_masks, loss_sum, acc_sum = values[:n], values[n:-2], values[-2], values[-1]
    if self.clamp is not None:
      g_theta = [tf.clip_by_value(g, -self.clamp, self.clamp) for g in g_theta]
    self.theta_optimizer.apply(g_theta, self.theta)
    if self.masks:
      self.mask_optimizer.apply(g_masks, self.masks)
    batch = float(self._global_batch)
    return {'loss': loss_sum / batch, 'accuracy': acc_sum / batch}

  def train_step(self, tasks, positions) -> Dict[str, tf.Tensor]:
    """One meta-update on a meta-batch; returns the mean query loss and accuracy over its tasks (before the update).

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
    return self._train_step(tasks, positions)

  def set_global_batch(self, global_batch: int):
    """Fixes the meta-batch size B (static: the step compiles once)."""
    if global_batch % self.num_replicas:
      raise ValueError(f'meta-batch size {global_batch} is not a multiple of the {self.num_replicas} replicas')
    if self._global_batch not in (None, global_batch):
      raise ValueError(f'meta-batch size is fixed at {self._global_batch}, got {global_batch}')
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

  # -- evaluation ----------------------------------------------------------------------------------
  def _replica_eval(self, tasks, positions, salt):
    theta, non_trainable, masks = self._read()
    accuracies, losses = [], []
    for i in range(tasks.support_images.shape[0]):
      logits = self._task(theta, non_trainable, masks, self.eval_inner_loop, tasks.support_images[i],
                          tasks.support_labels[i], tasks.query_images[i], _noise_key(self.seed, salt, positions[i]))
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

  # -- inspection (eager; for tests, logs and sparsity) ------------------------------------------------
  def adapt(self, support_images, support_labels, position: int = 0, split: str = 'train', loop=None):
    """phi_K for one task (tuple parallel to theta), with the learner's masks."""
    theta, non_trainable, masks = self._read()
    loop = loop or self.inner_loop
    sizes = self._step_sizes(masks, _noise_key(self.seed, SPLIT_SALT[split], position), loop)
    return loop.adapt(self.model, theta, non_trainable, sizes, tf.convert_to_tensor(support_images),
                      tf.convert_to_tensor(support_labels))

  def logits(self, params, images):
    return inner_lib.forward(self.model, params, [tf.convert_to_tensor(v) for v in self.non_trainable],
                             tf.convert_to_tensor(images))

  def modulations(self, position: int = 0, split: str = 'train') -> Dict[str, np.ndarray]:
    """S(m) per masked parameter group (unscaled), as a task at `position` would use it."""
    mods = self.modulation.modulations([tf.convert_to_tensor(m) for m in self.masks], self.infos,
                                       _noise_key(self.seed, SPLIT_SALT[split], position))
    return {i.name: s.numpy() for i, s in zip(self.infos, mods) if s is not None}

  def mask_logits(self) -> Dict[str, np.ndarray]:
    return {n: m.numpy() for n, m in zip(self.mask_names, self.masks)}

  def sparsity(self, position: int = 0, split: str = 'train') -> Dict[str, float]:
    """Fraction of exactly-zero S(m) per masked group and size-weighted 'overall' (0 without a modulation)."""
    result = modulation_lib.group_sparsity(self.modulation, [tf.convert_to_tensor(m) for m in self.masks],
                                           self.infos, _noise_key(self.seed, SPLIT_SALT[split], position))
    return {k: float(v) for k, v in result.items()}

  def group_names(self) -> List[str]:
    return [i.name for i in self.infos]

  # -- checkpoint state ----------------------------------------------------------------------------
  def _state_vars(self, with_optimizers=True):
    groups = [('theta', self.theta), ('non_trainable', self.non_trainable), ('mask', self.masks)]
    if with_optimizers:
      groups.append(('theta_opt', self.theta_optimizer.variables))
      if self.mask_optimizer is not None:
        groups.append(('mask_opt', self.mask_optimizer.variables))
    return [(f'{prefix}/{i}', v) for prefix, variables in groups for i, v in enumerate(variables)]

  def state(self, with_optimizers: bool = True) -> Dict[str, np.ndarray]:
    """Everything a resumed run needs (theta, BN statistics, masks, optimizer slots and step counters)."""
    return {key: np.asarray(v.numpy()) for key, v in self._state_vars(with_optimizers)}

  def restore(self, state: Dict[str, np.ndarray]):
    """Loads `state()`; optimizer entries are optional (a 'best' checkpoint holds only the model and masks)."""
    expected = self._state_vars(with_optimizers=True)
    unknown = sorted(set(state) - {key for key, _ in expected})
    if unknown:
      raise ValueError(f'checkpoint holds {unknown[:3]}... that this learner does not have: it belongs to a different '
                       f'configuration')
    for key, v in expected:
      if key in state:
        value = state[key]
        if tuple(value.shape) != tuple(v.shape):
          raise ValueError(f'checkpoint entry {key} has shape {value.shape}, the learner expects {tuple(v.shape)}: '
                           f'the checkpoint belongs to a different configuration')
        v.assign(value)
      elif not key.startswith(('theta_opt/', 'mask_opt/')):
        raise ValueError(f'checkpoint lacks {key}: it belongs to a different configuration')


def _noise_key(seed, salt, position):
  """Stateless RNG key of one task's sparse-MAML+ noise: a pure function of (seed, split, episode position)."""
  return tf.stack([tf.cast(seed, tf.int64) * 16 + tf.cast(salt, tf.int64), tf.cast(position, tf.int64)])
