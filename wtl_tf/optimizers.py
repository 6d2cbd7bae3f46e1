"""Outer-loop optimizers with PyTorch's defaults (docs/ALGORITHMS.md 1.8), as gin-registered factories.

Learners receive the factory, not an optimizer, and call it inside their `tf.distribute` strategy scope (Keras
optimizers bind to the strategy they are created under). Gin files pass scoped references without calling them:

    FewShotLearner.theta_optimizer = @theta/adam
    theta/adam.learning_rate = 1e-3

Adam's epsilon is PyTorch's 1e-8 (Keras' default is 1e-7, docs/ALGORITHMS.md gotcha 13). Keras adds epsilon to
sqrt(v_hat) after bias correction of both moments, PyTorch to sqrt(v)/sqrt(1 - beta2^t); the two agree once epsilon
is negligible.
SGD with momentum and Nesterov is the same recursion in both libraries.
"""
import gin
import keras
from wtl_tf.errors import ConfigError


@gin.register
def adam(learning_rate: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
         epsilon: float = 1e-8) -> keras.optimizers.Optimizer:
  if not learning_rate >= 0:
    raise ConfigError(f'adam.learning_rate must be >= 0, got {learning_rate}')
  return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@gin.register
def sgd(learning_rate: float = 1e-3, momentum: float = 0.9, nesterov: bool = True) -> keras.optimizers.Optimizer:
  if not learning_rate >= 0:
    raise ConfigError(f'sgd.learning_rate must be >= 0, got {learning_rate}')
  return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)
