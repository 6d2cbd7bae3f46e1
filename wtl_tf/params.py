"""`describe(model)`: what each trainable tensor is (role, layer type, BN?, head?, depth), parallel to
`model.trainable_variables` and found by layer type and identity, never by name (docs/ALGORITHMS.md 1.6)."""

import dataclasses
from typing import Tuple

import keras


@dataclasses.dataclass(frozen=True)
class ParamInfo:
  """Static description of one trainable tensor.

  Attributes:
    name: unique, human-readable group name, e.g. `conv2d_1/kernel`; used for logs only.
    shape: the tensor's static shape.
    role: `kernel`, `bias`, `gamma`, `beta` or `other`.
    layer_type: class name of the owning layer, e.g. `Conv2D`.
    is_bn: whether the owning layer is a normalisation layer.
    is_head: whether the owning layer is the model's last parameterised layer (the classifier).
    depth: index of the owning layer among parameterised layers (0 = closest to the input).
  """
  name: str
  shape: Tuple[int, ...]
  role: str
  layer_type: str
  is_bn: bool
  is_head: bool
  depth: int

  @property
  def size(self) -> int:
    n = 1
    for d in self.shape:
      n *= int(d)
    return n

  @property
  def is_conv_kernel(self) -> bool:
    return self.role == 'kernel' and len(self.shape) == 4


_NORM_TYPES = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
               keras.layers.GroupNormalization)


def _leaf_layers(model: keras.Layer):
  """All layers without sublayers, in construction order."""
  # `_flatten_layers` is Keras' own recursive walk; it also reaches sublayers of custom layers.
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if not list(layer._flatten_layers(include_self=False, recursive=False)):  # pylint: disable=protected-access
      yield layer


def _role(layer, var) -> str:
  for role in ('kernel', 'bias', 'gamma', 'beta'):
    owned = getattr(layer, role, None)
    if owned is var:
      return role
  return 'other'


def describe(model: keras.Model) -> Tuple[ParamInfo, ...]:
  """Returns one `ParamInfo` per `model.trainable_variables` entry, in that order."""
  if not model.built:
    raise ValueError('describe(model) needs a built model: call it once on an input or build() it.')
  owner = {}
  param_layers = []
  for layer in _leaf_layers(model):
    if layer.trainable_weights:
      param_layers.append(layer)
      for var in layer.trainable_weights:
        owner[id(var)] = layer
  depth_of = {id(layer): i for i, layer in enumerate(param_layers)}
  head = param_layers[-1] if param_layers else None
  infos = []
  for var in model.trainable_variables:
    layer = owner.get(id(var))
    if layer is None:
      raise ValueError(f'Cannot find the layer that owns variable {var.path}.')
    role = _role(layer, var)
    infos.append(ParamInfo(
        name=f'{layer.name}/{role if role != "other" else var.name}',
        shape=tuple(int(d) for d in var.shape),
        role=role,
        layer_type=type(layer).__name__,
        is_bn=isinstance(layer, _NORM_TYPES),
        is_head=layer is head,
        depth=depth_of[id(layer)]))
  return tuple(infos)
