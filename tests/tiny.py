"""A tiny float64 softmax-regression task with hand-derived numpy gradients, for exact-math tests."""
import keras
import numpy as np
import tensorflow as tf

from wtl_tf import params

D, C, N = 5, 3, 9


def softmax_model():
  model = keras.Sequential([keras.Input((D,), dtype='float64'), keras.layers.Dense(C, dtype='float64')])
  return model, params.describe(model)


def task(seed=0):
  rng = np.random.default_rng(seed)
  xs, xq = rng.normal(size=(N, D)), rng.normal(size=(N, D))
  ys, yq = rng.integers(0, C, size=N), rng.integers(0, C, size=N)
  theta = [rng.normal(size=(D, C)) * 0.5, rng.normal(size=(C,)) * 0.5]
  return theta, (xs, ys), (xq, yq)


def np_loss_and_grad(theta, x, y):
  """Mean cross-entropy of softmax(x W + b) and its gradient, by hand."""
  w, b = theta
  z = x @ w + b
  z = z - z.max(axis=1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  onehot = np.eye(C)[y]
  loss = -np.mean(np.log(p[np.arange(len(y)), y]))
  dz = (p - onehot) / len(y)
  return loss, [x.T @ dz, dz.sum(axis=0)]


def np_inner_loop(theta, support, steps, num_steps):
  """phi_K and the list of support gradients g_0..g_{K-1} (steps = c * S(m) per tensor)."""
  phi = [t.copy() for t in theta]
  grads = []
  for _ in range(num_steps):
    _, g = np_loss_and_grad(phi, *support)
    grads.append(g)
    phi = [p - s * gi for p, s, gi in zip(phi, steps, g)]
  return phi, grads


def to_tf(arrays):
  return [tf.constant(a) for a in arrays]
