"""Functional, compiled K-step adaptation over any Keras 3 model (ALGORITHMS.md 1.2, 1.3, 1.11).

    phi_0 = theta;  phi_{k+1} = phi_k - step_size (.) grad L_in(phi_k)

`step_sizes` comes from a `Modulation` (c * S(m), computed once per task) and is a tuple parallel
to the model's trainable variables; `None` entries are not adapted.

The model is only ever called through `model.stateless_call`, with `training=True`: BatchNorm
normalises with the statistics of the batch it sees (transductive, as in the reference), and the
moving statistics it would update are discarded. Nothing is assigned to a variable here.

First order (the reference default): the inner gradients g_k are constants, so
phi_K = theta - s (.) sum_k g_k exactly. We run the K steps entirely under stop-gradient and
return `theta - s * stop_gradient(sum_k g_k)`: the same value, the same gradients for theta
(identity) and for the masks (-sum_k g_k), and no tape or loop intermediates kept for backprop.
Second order keeps every g_k in the graph (nested tapes inside the while loop).
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import gin
import keras
import tensorflow as tf

from wtl_tf.params import ParamInfo

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
    adapt_bn: whether normalisation-layer affine parameters adapt (and are masked) in the inner loop.
    bn_mode: `transductive`: batch statistics of the support set while adapting, of the query set
      when evaluating (the reference behaviour). Running statistics are never used.
    unroll: write the K steps out in the graph instead of a tf.while_loop: the same values and gradients (tested
      in float64), a graph K times larger to trace. On this project's 2-core CPU an 8-step first-order adaptation of
      OSAKA's ConvNet took 118 ms unrolled against 175 ms as a while loop (TF 2.21, oneDNN); the same unrolled steps
      nested in an outer while loop (the meta-update's loop over tasks) kept their speed. The online gin files
      switch it on; elsewhere it is off until measured (few-shot graphs unroll tasks already, so tracing grows).
  """
  num_steps: int = 5
  first_order: bool = True
  adapt_bn: bool = True
  bn_mode: str = 'transductive'
  unroll: bool = False

  def __post_init__(self):
    if not isinstance(self.num_steps, int) or self.num_steps < 0:
      raise ValueError(f'InnerLoop.num_steps must be a non-negative int, got {self.num_steps!r}.')
    if self.bn_mode not in BN_MODES:
      raise ValueError(f'InnerLoop.bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}.')

  def select(self, step_sizes, infos: Sequence[ParamInfo]):
    """Drops normalisation parameters from the inner loop when `adapt_bn` is off."""
    if self.adapt_bn:
      return tuple(step_sizes)
    return tuple(None if info.is_bn else s for s, info in zip(step_sizes, infos))

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
  theta = tuple(tf.convert_to_tensor(p) for p in theta)
  if len(step_sizes) != len(theta):
    raise ValueError(f'{len(step_sizes)} step sizes for {len(theta)} parameters.')
  active = [i for i, s in enumerate(step_sizes) if s is not None]
  if num_steps == 0 or not active:
    return theta
  sizes = [tf.cast(step_sizes[i], theta[i].dtype) for i in active]

  def repeat(body, state):
    if unroll:
      for _ in range(num_steps):
        state = body(*state)
      return state
    return tf.while_loop(lambda k, *_: k < num_steps, body, state, maximum_iterations=num_steps)

  def support_grads(fast_active, base):
    with tf.GradientTape() as tape:
      tape.watch(fast_active)
      params = list(base)
      for i, p in zip(active, fast_active):
        params[i] = p
      loss = loss_fn(support_y, forward(model, params, non_trainable, support_x))
    return tape.gradient(loss, fast_active, unconnected_gradients=tf.UnconnectedGradients.ZERO)

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
  fast = list(theta)
  for i, p in zip(active, adapted):
    fast[i] = p
  return tuple(fast)
