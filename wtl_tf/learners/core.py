"""The learner core that every learner of the three settings stands on.

A learner is a Keras model held as variables plus the modulation S(m) of its inner loop. This module owns, once for
all learners (few-shot, continual and online):

  * the model, its `ParamInfo`s, theta (trainable) and the non-trainable state (e.g. BatchNorm statistics);
  * the inner-loop set: the tensors that adapt, i.e. all of them unless normalisation layers are kept out
    (`adapt_bn=False`); the modulation then decides within that set (ANIL/BOIL's fixed subsets);
  * `mask_logits`: the meta-learned m, created only for tensors that actually adapt;
  * the step sizes c * S(m), parallel to theta (`None` = not adapted), for every modulation, including
    sparse-MAML+'s noisy masks, whose noise comes from a stateless key (`noise_key`);
  * the theta and mask optimizers (the masks share theta's when no mask optimizer is given);
  * one sparsity report and the S(m)/m values for histograms;
  * `model_state()` / `restore_model()`, checked on restore.

Learners add only what their setting needs: how tasks are formed, when the meta-update happens and any stream state.
"""
import math
from typing import Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from wtl_tf import modulation as modulation_lib
from wtl_tf import params as params_lib
from wtl_tf.errors import ConfigError, TrainingDiverged, WorkdirError
from wtl_tf.models import layers

OptimizerFactory = Callable[[], keras.optimizers.Optimizer]


class CheckpointMismatch(WorkdirError, ValueError):
  """A saved state that does not fit this learner: it was written under another configuration."""


def noise_key(seed, salt, position) -> tf.Tensor:
  """Stateless RNG key of one task's modulation noise: a pure function of (seed, salt, position).

  Only sparse-MAML+'s masks use it; a key per task makes runs reproducible and resumable without any RNG state.
  """
  return tf.stack([tf.cast(seed, tf.int64) * 16 + tf.cast(salt, tf.int64), tf.cast(position, tf.int64)])


class LearnerCore:
  """Model, theta, mask logits, step sizes, optimizers, sparsity and checkpoint state.

  Args:
    model_fn: builds the backbone (a built Keras model); called inside `strategy.scope()`.
    modulation: S(m); default `Identity` (MAML) with step size 0.1.
    adapt_bn: whether normalisation layers' affine parameters take part in the inner loop (and get masks).
    second_order: the learner differentiates through inner gradients (switches to exactly differentiable BN).
    theta_optimizer: factory of theta's optimizer; None when the learner applies its own update rule.
    mask_optimizer: factory of the masks' optimizer; None = the theta optimizer also updates the masks.
    seed: seeds the mask initialisation and the modulation noise (the model is seeded by model_fn).
    strategy: a tf.distribute strategy under which the variables are created; default the current one.
    name: the learner's name in logs and results (default: the class's `name`).
  """

  name = 'learner'

  def __init__(self, model_fn: Callable[[], keras.Model], modulation: Optional[modulation_lib.Modulation] = None,
               adapt_bn: bool = True, second_order: bool = False,
               theta_optimizer: Optional[OptimizerFactory] = None,
               mask_optimizer: Optional[OptimizerFactory] = None, seed: int = 0,
               strategy: Optional[tf.distribute.Strategy] = None, name: Optional[str] = None):
    if name:
      self.name = name
    self.modulation = modulation or modulation_lib.Identity()
    self.seed = int(seed)
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self.model = model_fn()
      if second_order:
        _prepare_second_order(self.model)
      self.infos = params_lib.describe(self.model)
      self.theta = list(self.model.trainable_variables)
      self.non_trainable = list(self.model.non_trainable_variables)
      self.inner = tuple(i for i, info in enumerate(self.infos) if adapt_bn or not info.is_bn)
      self.inner_infos = tuple(self.infos[i] for i in self.inner)
      self.mask_names = self.modulation.mask_names(self.inner_infos)
      dtype = keras.backend.standardize_dtype(self.theta[0].dtype) if self.theta else 'float32'
      self.mask_logits = [keras.Variable(np.asarray(a, dtype), dtype=dtype, name=f'mask_logits_{i}')
                          for i, a in enumerate(self.modulation.init_mask_params(self.inner_infos, self.seed))]
      # Where the next fresh modulation noise comes from, for learners without episode positions (continual,
      # online); part of the checkpoint state, so a resumed run draws the same noise.
      self.noise_position = tf.Variable(0, dtype=tf.int64, trainable=False, name='noise_position')
      self.theta_optimizer = self.mask_optimizer = None
      if theta_optimizer is not None:
        self.theta_optimizer = theta_optimizer()
        if mask_optimizer is not None and self.mask_logits:
          self.mask_optimizer = mask_optimizer()
          self.mask_optimizer.build(self.mask_logits)
          self.theta_optimizer.build(self.theta)
        else:
          self.theta_optimizer.build(self.theta + self.mask_logits)

  def check_adapts(self, num_steps: int):
    """Refuses a configuration in which nothing would adapt in an inner loop of `num_steps` steps."""
    if num_steps and not any(s is not None for s in self.step_sizes(self.read(self.mask_logits),
                                                                        self.noise_key(0, 0))):
      raise ConfigError(f'{self.name}: no parameter takes part in the inner loop (modulation {self.modulation}, '
                       f'{len(self.inner)} of {len(self.theta)} tensors in the inner-loop set)')

  def check_finite(self, loss, where: str) -> float:
    """The loss as a float; a NaN or infinite loss raises TrainingDiverged (nothing has been saved yet)."""
    value = float(loss)
    if not math.isfinite(value):
      raise TrainingDiverged(f'{self.name}: the loss became {value} {where}. Lower the learning rates or step sizes.')
    return value

  @staticmethod
  def read(variables) -> List[tf.Tensor]:
    return [tf.convert_to_tensor(v) for v in variables]

  def noise_key(self, salt, position) -> tf.Tensor:
    return noise_key(self.seed, salt, position)

  def take_noise_positions(self, count) -> tf.Tensor:
    """The first of `count` fresh noise positions (salt 0); the counter moves on by `count`."""
    start = tf.convert_to_tensor(self.noise_position)
    with tf.control_dependencies([start]):
      self.noise_position.assign_add(tf.cast(count, tf.int64))
    return start

  def step_sizes(self, mask_logits, key: Optional[tf.Tensor] = None) -> Tuple[Optional[tf.Tensor], ...]:
    """c * S(m) parallel to theta: a tensor (or scalar) for adapted tensors, None for the others."""
    sizes = [None] * len(self.theta)
    for i, size in zip(self.inner, self.modulation.step_sizes(list(mask_logits), self.inner_infos, key)):
      sizes[i] = size
    return tuple(sizes)

  def _modulations(self, key):
    return self.modulation.modulations(self.read(self.mask_logits), self.inner_infos,
                                       self.noise_key(0, 0) if key is None else key)

  def modulations(self, key: Optional[tf.Tensor] = None) -> Dict[str, np.ndarray]:
    """S(m) per masked group (unscaled), as a task with noise `key` would use it; empty without masks."""
    return {i.name: s.numpy() for i, s in zip(self.inner_infos, self._modulations(key)) if s is not None}

  def named_mask_logits(self) -> Dict[str, np.ndarray]:
    return {n: m.numpy() for n, m in zip(self.mask_names, self.mask_logits)}

  def sparsity(self, key: Optional[tf.Tensor] = None) -> Dict[str, float]:
    """Fraction of exactly-zero S(m) per masked group and size-weighted 'overall' (0 without a modulation)."""
    named = {i.name: s for i, s in zip(self.inner_infos, self._modulations(key)) if s is not None}
    return {k: float(v) for k, v in modulation_lib.sparsity(named).items()}

  def group_names(self) -> List[str]:
    return [i.name for i in self.infos]

  def apply_gradients(self, theta_grads, mask_grads=()):
    """One optimizer step on theta and the mask logits."""
    if self.mask_optimizer is None:
      self.theta_optimizer.apply(list(theta_grads) + list(mask_grads), self.theta + self.mask_logits)
    else:
      self.theta_optimizer.apply(list(theta_grads), self.theta)
      self.mask_optimizer.apply(list(mask_grads), self.mask_logits)

  def _state_vars(self, with_optimizers: bool):
    groups = [('theta', self.theta), ('non_trainable', self.non_trainable), ('mask_logits', self.mask_logits),
              ('noise_position', [self.noise_position])]
    if with_optimizers:
      for prefix, opt in (('theta_opt', self.theta_optimizer), ('mask_opt', self.mask_optimizer)):
        if opt is not None:
          groups.append((prefix, opt.variables))
    return [(f'{prefix}/{i}', v) for prefix, variables in groups for i, v in enumerate(variables)]

  def model_state(self, with_optimizers: bool = True) -> Dict[str, np.ndarray]:
    """theta, non-trainable state, mask logits and (optionally) the optimizers' slots and step counters."""
    return {key: np.asarray(v.numpy()) for key, v in self._state_vars(with_optimizers)}

  def restore_model(self, state: Dict[str, np.ndarray], with_optimizers: Optional[bool] = None):
    """Loads `model_state()`; with_optimizers=None restores the optimizers exactly when `state` holds them.

    Raises:
      CheckpointMismatch: an entry is missing, unknown or mis-shaped (the state belongs to another configuration).
    """
    optimizer_prefixes = ('theta_opt/', 'mask_opt/')
    if with_optimizers is None:
      with_optimizers = any(k.startswith(optimizer_prefixes) for k in state)
    expected = self._state_vars(with_optimizers)
    known = {key for key, _ in expected}
    ours = [k for k in state if k.split('/')[0] in ('theta', 'non_trainable', 'mask_logits', 'noise_position',
                                                    'theta_opt', 'mask_opt')]
    unknown = sorted(k for k in ours if k not in known and (with_optimizers or not k.startswith(optimizer_prefixes)))
    if unknown:
      raise CheckpointMismatch(f'{self.name}: the saved state holds {unknown[:3]} that this learner does not have: '
                               f'it belongs to a different configuration')
    for key, v in expected:
      if key not in state:
        raise CheckpointMismatch(f'{self.name}: the saved state lacks {key}: it belongs to a different configuration')
      if tuple(state[key].shape) != tuple(v.shape):
        raise CheckpointMismatch(f'{self.name}: saved entry {key} has shape {tuple(state[key].shape)}, the learner '
                                 f'expects {tuple(v.shape)}: it belongs to a different configuration')
    for key, v in expected:
      v.assign(state[key])


def _prepare_second_order(model):
  layers.set_fused_batchnorm(model, False)  # Exact second derivatives (wtl_tf/models/layers.py).
  # Grappler's memory optimizer turns big gradient AddNs into temporary variables; with its dependency optimizer on,
  # a second-order step with the inner while loop fails on its second call (AlreadyExistsError on
  # '.../AddN_*/tmp_var', Conv4 with 64 channels, TF 2.21). Process-wide, so set only for second-order learners.
  tf.config.optimizer.set_experimental_options({'dependency_optimization': False})
