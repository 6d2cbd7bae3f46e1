"""Gradient modulations S(m) of the inner step phi <- phi - c * S(m) (.) grad L_in(phi) (docs/ALGORITHMS.md 1.2).

Each class fixes S, its (straight-through) gradient, c, the init of m and which tensors adapt. A learner calls
`init_mask_params(infos, seed)` (list of numpy m, opaque layout), then once per task `step_sizes(mask_params, infos,
noise_seed)` (parallel to the parameters: `c * S(m)` or None = not in the inner loop), and `sparsity(...)` for logs.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from wtl_tf.errors import ConfigError
from wtl_tf.params import ParamInfo

StepSizes = Tuple[Optional[tf.Tensor], ...]


@tf.custom_gradient
def binary_step_half_at_zero(m):
  """Reference mask 0.5 * (sign(m) + 1) (0.5 at m == 0); backward 0.5 * upstream (docs/ALGORITHMS.md gotcha 2)."""
  s = 0.5 * (tf.sign(m) + 1.0)

  def grad(upstream):
    return 0.5 * upstream

  return s, grad


@tf.custom_gradient
def binary_step(m):
  """Paper mask 1[m >= 0] with the identity straight-through gradient."""
  s = tf.cast(m >= 0, m.dtype)

  def grad(upstream):
    return upstream

  return s, grad


@tf.custom_gradient
def relu_straight_through(m):
  """relu(m) forward, identity backward: a zero learning rate still receives gradient and can recover."""

  def grad(upstream):
    return upstream

  return tf.nn.relu(m), grad


@gin.register
@dataclasses.dataclass(frozen=True)
class MaskInit:
  """Initial mask logits, first matching rule of docs/ALGORITHMS.md 1.5.

  Attributes:
    rule: `constant` (every entry = `value`), `meta_sgd_uniform` (U(0.005, 0.1)) or `default`.
    value: the constant for `rule='constant'` (the reference uses the step size).
    kaiming: for `rule='default'`, rank>1 tensors get He-uniform, bound sqrt(6 / fan_in).
    init_shift: for `rule='default'`, each tensor is re-centred to mean `init_shift` (0: ~50% sparse binary masks).
  """
  rule: str = 'default'
  value: float = 0.1
  kaiming: bool = True
  init_shift: float = 0.0

  def __post_init__(self):
    if self.rule not in ('constant', 'meta_sgd_uniform', 'default'):
      raise ConfigError(f'MaskInit.rule must be constant, meta_sgd_uniform or default, got {self.rule!r}.')

  def __call__(self, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    if self.rule == 'constant':
      return np.full(shape, self.value, dtype=np.float64)
    if self.rule == 'meta_sgd_uniform':
      return rng.uniform(0.005, 0.1, size=shape)
    if self.kaiming and len(shape) > 1:
      fan_in = int(np.prod(shape[:-1]))  # HWIO conv kernels and [in, out] dense kernels.
      bound = math.sqrt(6.0 / fan_in)
    else:
      bound = 0.5
    m = rng.uniform(-bound, bound, size=shape)
    return m - m.mean() + self.init_shift


class Modulation:
  """Base class: S = 1 on every parameter, c = `step_size`. Subclasses override `adapts`, `modulate` (S), `scale` (c)
  and the mask-parameter layout."""

  has_logits = False

  def __init__(self, step_size: float = 0.1, mask_init: Optional[MaskInit] = None):
    if not step_size > 0:
      raise ConfigError(f'step_size must be positive, got {step_size}.')
    self.step_size = float(step_size)
    self.mask_init = mask_init or self.default_init()

  def default_init(self) -> MaskInit:
    return MaskInit()

  @property
  def scale(self) -> float:
    """The constant c of the update; binary masks are scaled by the step size, learning rates are not."""
    return self.step_size

  def adapts(self, info: ParamInfo) -> bool:
    """Whether this tensor is updated in the inner loop at all."""
    del info
    return True

  def modulate(self, m: tf.Tensor) -> tf.Tensor:
    """S(m), with its (possibly straight-through) gradient."""
    raise NotImplementedError

  def masked(self, infos: Sequence[ParamInfo]) -> Tuple[bool, ...]:
    """Which parameters carry a learned modulation (and so count in sparsity statistics)."""
    return tuple(self.has_logits and self.adapts(i) for i in infos)

  def mask_names(self, infos: Sequence[ParamInfo]) -> List[str]:
    return [i.name for i, masked in zip(infos, self.masked(infos)) if masked]

  def init_mask_params(self, infos: Sequence[ParamInfo], seed: int) -> List[np.ndarray]:
    """Initial m, one array per masked parameter, in parameter order."""
    rng = np.random.default_rng(seed)
    return [self.mask_init(i.shape, rng) for i, masked in zip(infos, self.masked(infos)) if masked]

  def modulations(self, mask_params: Sequence[tf.Tensor], infos: Sequence[ParamInfo],
                  noise_seed: Optional[tf.Tensor] = None) -> Tuple[Optional[tf.Tensor], ...]:
    """S(m) per parameter (unscaled), `None` for parameters without a learned modulation."""
    del noise_seed
    it = iter(mask_params)
    return tuple(self.modulate(next(it)) if masked else None for masked in self.masked(infos))

  def step_sizes(self, mask_params: Sequence[tf.Tensor], infos: Sequence[ParamInfo],
                 noise_seed: Optional[tf.Tensor] = None, dtype=tf.float32) -> StepSizes:
    """c * S(m) per parameter; a scalar c where unmasked but adapted; `None` where frozen."""
    mods = self.modulations(mask_params, infos, noise_seed)
    sizes = []
    for info, mod in zip(infos, mods):
      if not self.adapts(info):
        sizes.append(None)
      elif mod is None:
        sizes.append(tf.constant(self.step_size, dtype))
      else:
        sizes.append(self.scale * mod)
    return tuple(sizes)

  def __repr__(self):
    return f'{type(self).__name__}(step_size={self.step_size}, mask_init={self.mask_init})'


@gin.register
class Identity(Modulation):
  """MAML / FOMAML: S = 1 on every parameter."""


@gin.register
class FixedSubset(Modulation):
  """ANIL (`subset='head'`) or BOIL (`subset='body'`, BN included): S = 1 on a subset, the rest only meta-learned.

  Whether BOIL adapts BN is open; wtl_tf says yes (docs/ALGORITHMS.md 1.6).
  """

  def __init__(self, subset: str = 'head', step_size: float = 0.1):
    if subset not in ('head', 'body'):
      raise ConfigError(f"FixedSubset.subset must be 'head' or 'body', got {subset!r}.")
    super().__init__(step_size)
    self.subset = subset

  def adapts(self, info):
    return info.is_head == (self.subset == 'head')


@gin.register
class BinaryMask(Modulation):
  """sparse-MAML: S(m) = step(m), straight-through, c = step_size. `convention`: 'reference' (default,
  0.5 * (sign(m) + 1), gradient 0.5) or 'paper' (1[m >= 0], gradient 1); docs/ALGORITHMS.md 1.2, gotcha 2."""

  has_logits = True

  def __init__(self, step_size: float = 0.1, mask_init: Optional[MaskInit] = None,
               convention: str = 'reference'):
    if convention not in ('reference', 'paper'):
      raise ConfigError(f"BinaryMask.convention must be 'reference' or 'paper', got {convention!r}.")
    self.convention = convention
    super().__init__(step_size, mask_init)

  def modulate(self, m):
    return binary_step_half_at_zero(m) if self.convention == 'reference' else binary_step(m)


@gin.register
class ScaledBinaryMask(BinaryMask):
  """sparse-La-MAML / sparse-C-MAML: alpha0 (= `step_size`) * 1[m >= 0], identity straight-through gradient.

  Paper convention and init +0.01 (0% sparse) are wtl_tf choices: docs/ALGORITHMS.md 4.3.
  """

  def __init__(self, step_size: float = 0.1, mask_init: Optional[MaskInit] = None,
               convention: str = 'paper'):
    super().__init__(step_size, mask_init, convention)

  def default_init(self):
    return MaskInit(rule='constant', value=0.01)


@gin.register
class ReluStraightThrough(Modulation):
  """sparse-ReLU-MAML: S(m) = relu(m) with identity backward; S is the learning rate itself (c = 1)."""

  has_logits = True

  def default_init(self):
    return MaskInit(rule='constant', value=self.step_size)

  @property
  def scale(self):
    return 1.0

  def modulate(self, m):
    return relu_straight_through(m)


@gin.register
class Relu(ReluStraightThrough):
  """La-MAML's rectified learning rates: relu(m) with its true gradient, so a zero rate never recovers."""

  def modulate(self, m):
    return tf.nn.relu(m)


@gin.register
class Linear(ReluStraightThrough):
  """Meta-SGD: S(m) = m, the per-coordinate learning rate; init U(0.005, 0.1)."""

  def default_init(self):
    return MaskInit(rule='meta_sgd_uniform')

  def modulate(self, m):
    return tf.identity(m)


@gin.register
class Exp(ReluStraightThrough):
  """exp-MAML: S(m) = exp(m). Init log(step_size) (the paper's init is unverified; this starts at MAML)."""

  def default_init(self):
    return MaskInit(rule='constant', value=math.log(self.step_size))

  def modulate(self, m):
    return tf.exp(m)


@gin.register
class PerTensorStepSize(ReluStraightThrough):
  """OSAKA's per-tensor step sizes (docs/ALGORITHMS.md 5.2, 1.9): S(m) = m, one unconstrained scalar per tensor,
  c = 1, init `step_size`. Sparsity counts a tensor as all-zero only if its scalar is exactly 0."""

  def default_init(self):
    return MaskInit(rule='constant', value=self.step_size)

  def init_mask_params(self, infos, seed):
    rng = np.random.default_rng(seed)
    return [self.mask_init((), rng) for i, masked in zip(infos, self.masked(infos)) if masked]

  def modulate(self, m):
    return tf.identity(m)


@gin.register
class NoisyBinaryMask(BinaryMask):
  """sparse-MAML+ (docs/ALGORITHMS.md 1.7, gotcha 9): conv-kernel masks step(W (z (.) sigma + mu) + b + init_shift),
  z ~ N(0, I_d) drawn anew per task; other masked tensors keep plain logits; conv biases are unmasked.

  `feature_size` is d (1600); `hidden_size` factors W = W2 @ W1 (a cheaper option, not the reference).
  Mask-parameter layout: [mu, sigma, W (or W1, W2), b, then one logit tensor per other masked param].
  """

  def __init__(self, step_size: float = 0.1, mask_init: Optional[MaskInit] = None,
               feature_size: int = 1600, hidden_size: Optional[int] = None, init_shift: float = 0.0,
               convention: str = 'reference'):
    super().__init__(step_size, mask_init, convention)
    self.feature_size = int(feature_size)
    self.hidden_size = hidden_size
    self.init_shift = float(init_shift)

  def _generated(self, info):
    return info.is_conv_kernel

  def adapts(self, info):
    return True

  def masked(self, infos):
    return tuple(not (i.role == 'bias' and i.layer_type.startswith('Conv')) for i in infos)

  def _n_generated(self, infos):
    return sum(i.size for i in infos if self._generated(i))

  def init_mask_params(self, infos, seed):
    rng = np.random.default_rng(seed)
    d, n = self.feature_size, self._n_generated(infos)
    params = [np.zeros([d]), np.ones([d])]  # mu, sigma
    if self.hidden_size:
      h = int(self.hidden_size)
      params += [rng.uniform(-1, 1, size=[d, h]) / math.sqrt(d),
                 rng.uniform(-1, 1, size=[h, n]) / math.sqrt(h)]
    else:
      params.append(rng.uniform(-1, 1, size=[d, n]) / math.sqrt(d))  # PyTorch Linear init
    params.append(rng.uniform(-1, 1, size=[n]) / math.sqrt(d))
    for info, masked in zip(infos, self.masked(infos)):
      if masked and not self._generated(info):
        params.append(self.mask_init(info.shape, rng))
    return params

  def mask_names(self, infos):
    gen = ['generator/mu', 'generator/sigma']
    gen += ['generator/W1', 'generator/W2'] if self.hidden_size else ['generator/W']
    gen.append('generator/b')
    return gen + [i.name for i, m in zip(infos, self.masked(infos)) if m and not self._generated(i)]

  def modulations(self, mask_params, infos, noise_seed=None):
    if noise_seed is None:
      raise ValueError('NoisyBinaryMask needs a per-task noise_seed (new noise for every task).')
    mu, sigma = mask_params[0], mask_params[1]
    n_gen = 2 if self.hidden_size else 1
    weights, bias = mask_params[2:2 + n_gen], mask_params[2 + n_gen]
    rest = iter(mask_params[3 + n_gen:])
    z = tf.random.stateless_normal(tf.shape(mu), seed=noise_seed, dtype=mu.dtype)
    x = (z * sigma + mu)[tf.newaxis, :]
    for w in weights:
      x = tf.matmul(x, w)
    a = x[0] + bias + self.init_shift
    out, offset = [], 0
    for info, masked in zip(infos, self.masked(infos)):
      if not masked:
        out.append(None)
      elif self._generated(info):
        out.append(self.modulate(tf.reshape(a[offset:offset + info.size], info.shape)))
        offset += info.size
      else:
        out.append(self.modulate(next(rest)))
    return tuple(out)


def sparsity(modulations: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Fraction of exactly-zero entries of each S(m), plus `overall`, weighted by size.

  Args:
    modulations: group name -> S(m) (any shape). Pass only masked groups.
  Returns:
    group name -> float scalar tensor in [0, 1], and `overall`. Empty input gives overall 0.
  """
  result, zeros, total = {}, 0, 0
  for name, s in modulations.items():
    s = tf.convert_to_tensor(s)
    n = tf.size(s, out_type=tf.int64)
    nz = tf.math.count_nonzero(s, dtype=tf.int64)
    result[name] = tf.cast(n - nz, tf.float64) / tf.cast(n, tf.float64)  # One rounding: exactly zeros / size.
    zeros += n - nz
    total += n
  if not modulations:
    result['overall'] = tf.constant(0.0, tf.float64)
  else:
    result['overall'] = tf.cast(zeros, tf.float64) / tf.cast(total, tf.float64)
  return result


def group_sparsity(modulation: Modulation, mask_params, infos, noise_seed=None) -> Dict[str, tf.Tensor]:
  """Per-group and overall sparsity of the masks a task would use."""
  mods = modulation.modulations(mask_params, infos, noise_seed)
  return sparsity({i.name: s for i, s in zip(infos, mods) if s is not None})
