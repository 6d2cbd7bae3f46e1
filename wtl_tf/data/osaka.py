"""The OSAKA online stream and its Omniglot pre-training tasks (docs/ALGORITHMS.md 5.1, 5.2, gotchas 17 and 19).

A step is 5 images with replacement of each of the task's 10 classes (labels 0..9 in draw order, re-drawn at every
switch), class-major [50, 28, 28, 1]. Omniglot (convert with `--option split=osaka`) contributes every unrotated
class of every split, in [0, 1]; MNIST / Fashion-MNIST their 'train' classes cut to equal counts, as raw 0-255 floats
unless `scale_mnist`. Step t is a pure function of (seed, t), so `dataset(start=t)` resumes. All images (~120 MB
uint8) live in one CPU tf.Variable.
"""
import collections
from typing import List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from wtl_tf.data import episodes
from wtl_tf.data import records
from wtl_tf.errors import ConfigError

OMNIGLOT, MNIST, FASHION_MNIST = 0, 1, 2
MODE_NAMES = ('omniglot', 'mnist', 'fashion_mnist')
IMAGE_SHAPE = (28, 28, 1)
_TASK_TAG, _STEP_TAG, _SWITCH_TAG = 1, 2, 3


class OsakaStep(collections.namedtuple(
    'OsakaStep', ['images', 'labels', 'mode', 'class_ids', 'task_switch', 'task_index', 'step'])):
  """One step of the stream.

  images: [ways*shots, 28, 28, 1] float32 (class-major); labels: [ways*shots] int32 in 0..ways-1;
  mode: int32 (OMNIGLOT, MNIST, FASHION_MNIST); class_ids: [ways] int32, the class id in that mode's dataset spec
  that label j stands for; task_switch: bool (True at step 0 and at every switch); task_index: int32 (0, 1, ...);
  step: int64.
  """
  __slots__ = ()


def omniglot_classes(spec: records.DatasetSpec) -> List[int]:
  """Class ids of every unrotated Omniglot class, in class-id order (the OSAKA class order)."""
  return [c['id'] for c in spec.classes if c['counts'] and not (c.get('attrs') or {}).get('rotation')]


def _load_omniglot(spec, class_ids):
  """[uint8 images] per class, over the splits that hold it (one split for Omniglot), read in one pass."""
  items = [(split, c) for c in class_ids for split in sorted(spec.classes[c]['counts'])]
  images = episodes.load_classes(spec, items)
  ends = np.cumsum([spec.count(split, c) for split, c in items])
  per_item = np.split(images, ends[:-1])
  out = {}
  for (_, c), part in zip(items, per_item):
    out.setdefault(c, []).append(part)
  return [np.concatenate(out[c]) if len(out[c]) > 1 else out[c][0] for c in class_ids]


def _check_shape(spec):
  if tuple(spec.image_shape) != IMAGE_SHAPE:
    raise records.DataError(f'the OSAKA stream needs 28x28x1 images; {spec.name} at {spec.root} has '
                            f'{tuple(spec.image_shape)}')


class _ImageTable:
  """uint8 images of several groups of classes in one CPU variable, addressed by (group, class row, image)."""

  def __init__(self, groups: Sequence[Sequence[np.ndarray]]):
    if tf.distribute.has_strategy():
      raise RuntimeError('build the OSAKA data outside strategy.scope(): its images would become a distributed '
                         'variable')
    width = max(len(g) for g in groups)
    self.num_classes = np.array([len(g) for g in groups], np.int32)
    self.counts = np.zeros((len(groups), width), np.int32)
    self.offsets = np.zeros((len(groups), width), np.int64)
    parts, total = [], 0
    for g, group in enumerate(groups):
      for row, images in enumerate(group):
        self.counts[g, row], self.offsets[g, row] = len(images), total
        parts.append(images)
        total += len(images)
    with tf.init_scope(), tf.device('/cpu:0'):
      self.images = tf.Variable(np.concatenate(parts), trainable=False, name='osaka_images')
    self.width = width

  def sample_with_replacement(self, group, rows, num, key, first=0, pool=None):
    """uint8 [len(rows), num, ...]: per row, `num` images drawn uniformly with replacement from images
    [first, first + pool) of each class (pool=None: from `first` on)."""
    counts = tf.gather(tf.constant(self.counts)[group], rows)
    size = counts - first if pool is None else tf.fill(tf.shape(rows), pool)
    uniform = tf.random.stateless_uniform(tf.stack([tf.size(rows), num]), key, dtype=tf.float64)
    draws = tf.cast(uniform * tf.cast(size, tf.float64)[:, tf.newaxis], tf.int64)
    draws = tf.minimum(draws, tf.cast(size, tf.int64)[:, tf.newaxis] - 1) + first  # Guards u*n rounding up to n.
    index = tf.gather(tf.constant(self.offsets)[group], rows)[:, tf.newaxis] + draws
    return tf.gather(self.images, index)


def _fold(seed, *data):
  key = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
  for d in data:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
  return key


@gin.register
class OsakaStream:
  """The OSAKA stream over prepared Omniglot, MNIST and Fashion-MNIST specs (see the module docstring)."""

  def __init__(self, omniglot: records.DatasetSpec, mnist: records.DatasetSpec, fashion_mnist: records.DatasetSpec,
               seed: int, p: float = 0.98, num_steps: int = 10000, mode_probs: Sequence[float] = (0.5, 0.25, 0.25),
               ways: int = 10, shots: int = 5, scale_mnist: bool = False, mnist_split: str = 'train'):
    if not 0.0 <= p <= 1.0:
      raise ConfigError(f'p must be a probability, got {p}')
    if len(mode_probs) != 3 or abs(sum(mode_probs) - 1.0) > 1e-6 or min(mode_probs) < 0:
      raise ConfigError(f'mode_probs must be 3 probabilities summing to 1, got {mode_probs}')
    for spec in (omniglot, mnist, fashion_mnist):
      _check_shape(spec)
    self.seed, self.p, self.num_steps, self.ways, self.shots = int(seed), float(p), int(num_steps), ways, shots
    self.mode_probs, self.scale_mnist = tuple(float(x) for x in mode_probs), scale_mnist
    omniglot_ids = omniglot_classes(omniglot)
    groups = [_load_omniglot(omniglot, omniglot_ids)]
    self.class_ids = [np.array(omniglot_ids, np.int32)]
    self.images_per_class = []
    for spec in (mnist, fashion_mnist):
      ids = spec.class_ids(mnist_split)
      images = np.split(episodes.load_classes(spec, [(mnist_split, c) for c in ids]),
                        np.cumsum([spec.count(mnist_split, c) for c in ids])[:-1])
      smallest = min(len(x) for x in images)
      groups.append([x[:smallest] for x in images])  # Equal per-class counts: the first `smallest` of each class.
      self.class_ids.append(np.array(ids, np.int32))
      self.images_per_class.append(smallest)
    for name, spec, ids in zip(MODE_NAMES, (omniglot, mnist, fashion_mnist), self.class_ids):
      if len(ids) < ways:
        raise records.DataError(f'{name} ({spec.root}) has {len(ids)} classes; the stream draws {ways} per task')
    self._table = _ImageTable(groups)
    self._class_ids_t = tf.constant(np.stack([np.pad(c, (0, self._table.width - len(c))) for c in self.class_ids]))
    self._cumulative = tf.constant(np.cumsum(self.mode_probs)[:-1], tf.float64)
    switch = tf.random.stateless_uniform([self.num_steps], _fold(self.seed, _SWITCH_TAG), dtype=tf.float64)
    switch = (switch.numpy() < 1.0 - self.p)
    switch[:1] = True
    self.task_switch = switch
    self.task_index = (np.cumsum(switch) - 1).astype(np.int32)
    self._task_switch_t, self._task_index_t = tf.constant(self.task_switch), tf.constant(self.task_index)

  def _task(self, task_index):
    """(mode int32, class rows int32 [ways]) of task `task_index`."""
    mode_key, class_key = tf.unstack(tf.random.experimental.stateless_split(
        _fold(self.seed, _TASK_TAG, task_index), 2))
    u = tf.random.stateless_uniform([], mode_key, dtype=tf.float64)
    mode = tf.reduce_sum(tf.cast(u >= self._cumulative, tf.int32))
    rows = episodes.random_sample(class_key, tf.gather(self._table.num_classes, mode)[tf.newaxis], self.ways,
                                  self._table.width)[0]
    return mode, rows

  def task_modes(self) -> np.ndarray:
    """Mode of every task of the stream, int32 [num_tasks] (cheap: no images)."""
    num_tasks = int(self.task_index[-1]) + 1 if self.num_steps else 0
    ds = (tf.data.Dataset.range(num_tasks)
          .map(tf.autograph.experimental.do_not_convert(lambda j: self._task(j)[0])).batch(max(num_tasks, 1)))
    return ds.get_single_element().numpy() if num_tasks else np.zeros([0], np.int32)

  def _step(self, step):
    task_index = tf.gather(self._task_index_t, step)
    mode, rows = self._task(task_index)
    pixels = self._table.sample_with_replacement(mode, rows, self.shots, _fold(self.seed, _STEP_TAG, step))
    pixels = tf.cast(tf.reshape(pixels, (self.ways * self.shots,) + IMAGE_SHAPE), tf.float32)
    scaled = tf.logical_or(tf.equal(mode, OMNIGLOT), self.scale_mnist)
    pixels = pixels * tf.where(scaled, 1.0 / 255.0, 1.0)
    return OsakaStep(
        images=pixels,
        labels=tf.repeat(tf.range(self.ways, dtype=tf.int32), self.shots),
        mode=mode,
        class_ids=tf.gather(self._class_ids_t[mode], rows),
        task_switch=tf.gather(self._task_switch_t, step),
        task_index=task_index,
        step=step)

  def dataset(self, start: int = 0, num_steps: Optional[int] = None, num_parallel_calls=tf.data.AUTOTUNE,
              prefetch=tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Steps start .. num_steps-1 of the stream (or `num_steps` of them) as OsakaStep elements."""
    stop = self.num_steps if num_steps is None else min(self.num_steps, start + num_steps)
    step_fn = tf.autograph.experimental.do_not_convert(self._step)
    ds = tf.data.Dataset.range(start, stop).map(step_fn, num_parallel_calls=num_parallel_calls,
                                                 deterministic=True)
    return ds.prefetch(prefetch) if prefetch else ds


@gin.register
def pretrain_dataset(omniglot: records.DatasetSpec, seed: int, class_range: Tuple[int, int] = (0, 900),
                     ways: int = 10, shots: int = 5, queries: int = 15, support_pool: Tuple[int, int] = (0, 10),
                     query_pool: Tuple[int, int] = (10, 20), start: int = 0, num_episodes: Optional[int] = None,
                     meta_batch_size: Optional[int] = None, num_parallel_calls=tf.data.AUTOTUNE,
                     prefetch=tf.data.AUTOTUNE) -> tf.data.Dataset:
  """OSAKA's Omniglot pre-training (or, with class_range=(900, 1000), validation) tasks as episodes.Episode.

  Distinct classes, images with replacement from the two pools (docs/ALGORITHMS.md 5.2), in [0, 1]; episode i is a
  pure function of (seed, i).
  """
  _check_shape(omniglot)
  ids = omniglot_classes(omniglot)
  lo, hi = class_range
  if not 0 <= lo < hi <= len(ids) or hi - lo < ways:
    raise records.DataError(f'class range {class_range} does not fit the {len(ids)} Omniglot classes of '
                            f'{omniglot.root} with {ways} ways')
  ids = ids[lo:hi]
  need = max(support_pool[1], query_pool[1])
  for c in ids:
    total = sum(omniglot.classes[c]['counts'].values())
    if total < need:
      raise records.DataError(f'Omniglot class {c} ({omniglot.classes[c]["name"]!r}) has {total} images in '
                              f'{omniglot.root}; the pre-training pools need {need}')
  table = _ImageTable([_load_omniglot(omniglot, ids)])

  @tf.autograph.experimental.do_not_convert
  def make(i):
    class_key, support_key, query_key = tf.unstack(tf.random.experimental.stateless_split(
        episodes.episode_key(seed, i), 3))
    rows = episodes.random_sample(class_key, [len(ids)], ways, len(ids))[0]
    support = table.sample_with_replacement(0, rows, shots, support_key, support_pool[0],
                                            support_pool[1] - support_pool[0])
    query = table.sample_with_replacement(0, rows, queries, query_key, query_pool[0], query_pool[1] - query_pool[0])
    labels = tf.range(ways, dtype=tf.int32)
    return episodes.Episode(
        support_images=tf.cast(tf.reshape(support, (ways * shots,) + IMAGE_SHAPE), tf.float32) / 255.0,
        support_labels=tf.repeat(labels, shots),
        query_images=tf.cast(tf.reshape(query, (ways * queries,) + IMAGE_SHAPE), tf.float32) / 255.0,
        query_labels=tf.repeat(labels, queries))

  stop = start + num_episodes if num_episodes is not None else np.iinfo(np.int64).max
  ds = tf.data.Dataset.range(start, stop).map(make, num_parallel_calls=num_parallel_calls, deterministic=True)
  if meta_batch_size:
    ds = ds.batch(meta_batch_size, drop_remainder=True)
  return ds.prefetch(prefetch) if prefetch else ds
