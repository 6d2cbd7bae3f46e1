"""Functional K-step adaptation phi_{k+1} = phi_k - step_size (.) grad L_in(phi_k) over any Keras 3 model.

`step_sizes` (c * S(m) from a `Modulation`, once per task) is parallel to the trainable variables; None = frozen.
The model is only called via `stateless_call(..., training=True)` (batch-statistics BN); nothing is assigned. First
order returns `theta - s * stop_gradient(sum_k g_k)` after a loop run without gradients: same value and outer
gradients, no loop intermediates kept. Second order nests tapes in the loop. `trajectory` is the first-order variant
with one batch per step that returns every phi_k (La-MAML). See docs/ALGORITHMS.md 1.3, 1.4, 1.10, 4.2.
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import gin
import keras
import tensorflow as tf
from wtl_tf.errors import ConfigError


Params = Tuple[tf.Tensor, ...]

BN_MODES = ('transductive',)


def cross_entropy(labels, logits):
  """Mean softmax cross-entropy over the batch, from integer labels."""
  return tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits))


@gin.register
@dataclasses.dataclass(frozen=True)
class InnerLoop:
  """Inner-loop options.

  Attributes:
    num_steps: K, a static Python int.
    first_order: stop the gradient on the inner gradients only (theta and masks stay in the graph).
    adapt_bn: whether normalisation-layer affine parameters adapt (and are masked) in the inner loop; the learner
      core reads it when it decides which tensors get mask logits (wtl_tf/learners/core.py).
    bn_mode: `transductive`: batch statistics of the support set while adapting, of the query set
      when evaluating (the reference behaviour). Running statistics are never used.
    unroll: write the K steps out instead of a tf.while_loop (same results, K times the graph). On in the online gin
      files, where it is faster (docs/PERFORMANCE.md); few-shot graphs already unroll tasks, so off elsewhere.
  """
  num_steps: int = 5
  first_order: bool = True
  adapt_bn: bool = True
  bn_mode: str = 'transductive'
  unroll: bool = False

  def __post_init__(self):
    if not isinstance(self.num_steps, int) or self.num_steps < 0:
      raise ConfigError(f'InnerLoop.num_steps must be a non-negative int, got {self.num_steps!r}.')
    if self.bn_mode not in BN_MODES:
      raise ConfigError(f'InnerLoop.bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}.')

  def adapt(self, model, theta, non_trainable, step_sizes, support_x, support_y,
            loss_fn: Callable = cross_entropy) -> Params:
    return adapt(model, theta, non_trainable, step_sizes, support_x, support_y, self.num_steps,
                 first_order=self.first_order, loss_fn=loss_fn, unroll=self.unroll)


def forward(model: keras.Model, params: Sequence[tf.Tensor], non_trainable: Sequence[tf.Tensor], x):
  """Logits of `model` at `params` (batch statistics for BN; updated BN statistics are discarded)."""
  logits, _ = model.stateless_call(list(params), list(non_trainable), x, training=True)
  return logits


def adapt(model: keras.Model, theta: Sequence[tf.Tensor], non_trainable: Sequence[tf.Tensor],
          step_sizes: Sequence[Optional[tf.Tensor]], support_x, support_y, num_steps: int,
          first_order: bool = True, loss_fn: Callable = cross_entropy, unroll: bool = False) -> Params:
  """Runs `num_steps` modulated SGD steps on the support set and returns phi_K.

  Args:
    model: a built Keras 3 model; only `stateless_call` is used.
    theta: tensors in `model.trainable_variables` order.
    non_trainable: tensors in `model.non_trainable_variables` order (e.g. BN moving statistics).
    step_sizes: parallel to theta; `c * S(m)` broadcastable to the parameter, or None (frozen).
    support_x: [n_support, ...] inputs.  support_y: [n_support] integer labels.
    num_steps: K, a static Python int.
    first_order: if True, inner gradients are constants for the outer gradient.
    unroll: K copies of the step in the graph instead of a tf.while_loop (see `InnerLoop.unroll`).
  Returns:
    phi_K as a tuple parallel to theta (frozen entries are theta itself).
  """
  theta, active, sizes = _active(theta, step_sizes)
  if num_steps == 0 or not active:
    return theta

  def repeat(body, state):
    if unroll:
      for _ in range(num_steps):
        state = body(*state)
      return state
    return tf.while_loop(lambda k, *_: k < num_steps, body, state, maximum_iterations=num_steps)

  def support_grads(fast_active, base):
    return _gradients(model, non_trainable, loss_fn, base, active, fast_active, support_x, support_y)

  if first_order:
    base = tuple(tf.stop_gradient(p) for p in theta)
    const_sizes = [tf.stop_gradient(s) for s in sizes]

    def body(k, fast_active, grad_sum):
      grads = support_grads(fast_active, base)
      fast_active = [p - s * g for p, s, g in zip(fast_active, const_sizes, grads)]
      grad_sum = [a + g for a, g in zip(grad_sum, grads)]
      return k + 1, fast_active, grad_sum

    init = ([base[i] for i in active], [tf.zeros_like(theta[i]) for i in active])
    _, _, grad_sum = repeat(body, (tf.constant(0), *init))
    adapted = [theta[i] - s * tf.stop_gradient(g) for i, s, g in zip(active, sizes, grad_sum)]
  else:
    def body(k, fast_active):
      grads = support_grads(fast_active, theta)
      return k + 1, [p - s * g for p, s, g in zip(fast_active, sizes, grads)]

    _, adapted = repeat(body, (tf.constant(0), [theta[i] for i in active]))
  return _merge(theta, active, adapted)


def _active(theta, step_sizes):
  """theta as tensors, the indices of the tensors that adapt (step size not None) and their step sizes."""
  theta = tuple(tf.convert_to_tensor(p) for p in theta)
  if len(step_sizes) != len(theta):
    raise ValueError(f'{len(step_sizes)} step sizes for {len(theta)} parameters.')
  active = [i for i, s in enumerate(step_sizes) if s is not None]
  return theta, active, [tf.cast(step_sizes[i], theta[i].dtype) for i in active]


def _merge(theta, active, adapted) -> Params:
  fast = list(theta)
  for i, p in zip(active, adapted):
    fast[i] = p
  return tuple(fast)


def _gradients(model, non_trainable, loss_fn, base, active, point, x, labels):
  """Gradients w.r.t. `point` of the loss at `base` with its active tensors replaced by `point`."""
  with tf.GradientTape() as tape:
    tape.watch(point)
    loss = loss_fn(labels, forward(model, _merge(base, active, point), non_trainable, x))
  return tape.gradient(loss, point, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def trajectory(model: keras.Model, theta: Sequence[tf.Tensor], non_trainable: Sequence[tf.Tensor],
               step_sizes: Sequence[Optional[tf.Tensor]], batches_x, batches_y,
               loss_fn: Callable = cross_entropy) -> Tuple[Params, ...]:
  """First-order modulated SGD, one batch per step; returns phi_k = theta - s * stop_gradient(sum_{j<=k} g_j), k=1..K.

  Args:
    model, theta, non_trainable, step_sizes: as for `adapt`.
    batches_x: [K, n, ...] inputs; step k uses batches_x[k].
    batches_y: the matching labels, [K, n], or any nest of [K, ...] tensors that `loss_fn(labels, logits)`
      understands (e.g. (labels, sample weights)); step k uses every leaf's entry k.
  Returns:
    K tuples parallel to theta. K is static (the leading dimension of batches_x); the steps are unrolled.
  """
  theta, active, sizes = _active(theta, step_sizes)
  const_sizes = [tf.stop_gradient(s) for s in sizes]
  base = [tf.stop_gradient(theta[i]) for i in active]
  grad_sum = None
  path = []
  for k in range(int(batches_x.shape[0])):
    # phi_k's value with every input constant: the gradient of step k is taken there.
    point = base if grad_sum is None else [p - s * g for p, s, g in zip(base, const_sizes, grad_sum)]
    labels = tf.nest.map_structure(lambda t, k=k: t[k], batches_y)
    grads = _gradients(model, non_trainable, loss_fn, theta, active, point, batches_x[k], labels)
    grad_sum = grads if grad_sum is None else [a + g for a, g in zip(grad_sum, grads)]
    path.append(_merge(theta, active, [theta[i] - s * tf.stop_gradient(g)
                                       for i, s, g in zip(active, sizes, grad_sum)]))
  return tuple(path)
