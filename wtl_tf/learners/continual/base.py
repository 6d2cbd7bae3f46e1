"""What every continual learner shares beyond the learner core: evaluation, a reservoir memory, stream state.

A learner sees the stream one incoming batch at a time through `observe(x, y, task)`; images arrive as flattened
uint8 rows and are scaled to [0, 1] here. Per-parameter-group sparsity comes from the core: learners without a
modulation report 0.
"""
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from wtl_tf.learners import core
from wtl_tf.errors import ConfigError


def to_float(x) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1] (float input is passed through)."""
  x = np.asarray(x)
  return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


class Reservoir:
  """Reservoir-sampling memory (docs/ALGORITHMS.md 4.2): every sample seen so far is kept with equal probability.

  push: age += 1; append while not full, else draw p = randint(0, age) inclusive and overwrite slot p if p < capacity.
  sample(n): min(n, size) draws, each uniform over the memory (duplicates possible, as in La-MAML's per-draw shuffle).
  """

  def __init__(self, capacity: int, dim: int, rng: np.random.Generator):
    if capacity < 0:
      raise ConfigError(f'memory capacity must be >= 0, got {capacity}')
    self.capacity, self.rng = capacity, rng
    self.x = np.zeros((capacity, dim), np.float32)
    self.y = np.zeros((capacity,), np.int64)
    self.size, self.age = 0, 0

  def push(self, x, y):
    for xi, yi in zip(x, y):
      self.age += 1
      if self.size < self.capacity:
        slot = self.size
        self.size += 1
      else:
        slot = int(self.rng.integers(0, self.age + 1))
        if slot >= self.capacity:
          continue
      self.x[slot], self.y[slot] = xi, yi

  def sample(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
    k = min(n, self.size)
    idx = self.rng.integers(0, self.size, size=k) if k else np.zeros((0,), np.int64)
    return self.x[idx], self.y[idx]

  def state(self) -> Dict[str, np.ndarray]:
    return {'x': self.x[:self.size], 'y': self.y[:self.size], 'age': np.array(self.age)}

  def restore(self, state):
    self.size = len(state['y'])
    self.x[:self.size], self.y[:self.size] = state['x'], state['y']
    self.age = int(state['age'])


def padded_batch(x: np.ndarray, y: np.ndarray, size: int):
  """Pads a batch to a fixed size with zero-weight rows, so compiled steps trace once."""
  n = len(x)
  weights = np.zeros((size,), np.float32)
  weights[:n] = 1.0
  if n < size:
    x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((size - n,), y.dtype)])
  return x, y, weights


def weighted_cross_entropy(labels, logits, weights):
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
  return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


class ContinualLearner(core.LearnerCore):
  """Base class on the learner core: evaluation on a task's test set and the checkpoint state of the stream.

  Args:
    model: a built Keras model (e.g. wtl_tf.models.mlp.mlp()).
    modulation: S(m) of the learner's inner loop; None for learners without one (the baselines).
    seed: seeds the host-side randomness (shuffling, replay draws) and the mask initialisation.
    jit_compile: XLA for the compiled steps.
    name: the learner's name in logs and results.
  """

  name = 'continual'
  memory: Optional[Reservoir] = None  # Replay learners set one; it is part of their checkpoint state.

  def __init__(self, model, modulation=None, seed: int = 0, jit_compile: bool = True, name: Optional[str] = None):
    super().__init__(lambda: model, modulation, seed=seed, name=name)
    self.rng = np.random.default_rng(seed)
    self.jit_compile = jit_compile
    self._logits = tf.function(self._logits_fn, jit_compile=jit_compile, reduce_retracing=True)

  def _logits_fn(self, x):
    logits, _ = self.model.stateless_call(self.read(self.theta), self.non_trainable, x, training=False)
    return logits

  def accuracy(self, x, y, batch_size: int = 5000) -> float:
    correct = 0
    for start in range(0, len(x), batch_size):
      xb = to_float(x[start:start + batch_size])
      pred = np.argmax(self._logits(tf.constant(xb)).numpy(), axis=1)
      correct += int(np.sum(pred == y[start:start + batch_size]))
    return correct / max(len(x), 1)

  def observe(self, x: np.ndarray, y: np.ndarray, task: int, first_epoch: bool = True) -> Dict[str, float]:
    raise NotImplementedError

  def extra_state(self) -> Dict[str, np.ndarray]:
    """The learner's own stream state (the replay memory), beside the core's model state."""
    return {} if self.memory is None else {f'memory/{k}': v for k, v in self.memory.state().items()}

  def restore_extra(self, state: Dict[str, np.ndarray]):
    if self.memory is not None:
      self.memory.restore({k: state[f'memory/{k}'] for k in ('x', 'y', 'age')})

  def state(self) -> Dict[str, np.ndarray]:
    out = self.model_state()
    out.update(self.extra_state())
    return out

  def restore(self, state: Dict[str, np.ndarray]):
    self.restore_model(state)
    self.restore_extra(state)


def global_norm_clip(grads, clip: Optional[float]):
  if clip is None or clip <= 0:
    return list(grads)
  clipped, _ = tf.clip_by_global_norm(list(grads), clip)
  return clipped
